"""Runs a process's long-lived tasks and restarts the one that crashes.

Before, a background task that raised (the in-process worker of `tragwerk up`, say)
ended silently: asyncio keeps a task's exception until someone asks for it, nobody
asked, and readiness stayed 200 while jobs stopped. Under the supervisor a crash is

- logged with its traceback (event "task crashed"),
- counted (`tragwerk_task_crashes_total{task}`) and shown (`tragwerk_task_up{task}`,
  the task's line in /health/ready),
- restarted after a capped exponential backoff with jitter, so that several
  processes hit by the same outage do not come back in step,
- and, when it keeps crashing (`crash_loop_crashes` within `crash_loop_window`
  seconds), reported as a crash loop (`tragwerk_task_crash_looping{task}` 1, the
  TragwerkTaskCrashLooping alert, /health/live 503 so that the process supervisor
  replaces the whole process). Restarts go on meanwhile at the capped interval.

A task runs until it is cancelled (restart="always": returning is a crash too, as the
loop it runs was not meant to end) or until it succeeds once (restart="on-failure":
a retried one-shot job such as reloading the rate-limit tiers).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = structlog.get_logger("tragwerk.supervisor")

Restart = Literal["always", "on-failure"]


@dataclass(frozen=True)
class Backoff:
    """Restart delays: initial * 2^n, capped, times a jitter factor in [0.5, 1.5)."""

    initial: float = 0.5
    cap: float = 30.0
    # A task that ran this long without crashing starts its backoff afresh.
    stable_after: float = 60.0
    crash_loop_crashes: int = 5
    crash_loop_window: float = 300.0

    def delay(self, crashes_in_a_row: int, rnd: random.Random) -> float:
        base = min(self.cap, self.initial * 2.0 ** max(0, crashes_in_a_row - 1))
        return float(base * (0.5 + rnd.random()))


class TaskEndedError(RuntimeError):
    """A task that should run until cancelled returned."""


@dataclass
class TaskState:
    name: str
    run: Callable[[], Awaitable[None]]
    restart: Restart
    # Checks the task's own health while it runs ('ok' or why not); None: running is ok.
    probe: Callable[[], Awaitable[str]] | None = None
    status: Literal["starting", "running", "restarting", "done", "stopped"] = "starting"
    crashes: int = 0
    in_a_row: int = 0
    last_error: str | None = None
    next_try_at: float | None = None
    recent: deque[float] = field(default_factory=deque)  # monotonic times of recent crashes
    crash_looping: bool = False
    task: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self.status in ("running", "done")


class Supervisor:
    """The process's long-lived tasks, restarted when they crash; see the module doc."""

    def __init__(
        self,
        backoff: Backoff | None = None,
        *,
        rnd: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backoff = backoff or Backoff()
        self._random = rnd or random.Random()  # noqa: S311 - jitter, not secrecy
        self._clock = clock
        self.tasks: dict[str, TaskState] = {}
        self._stopping = False

    def start(
        self,
        name: str,
        run: Callable[[], Awaitable[None]],
        *,
        restart: Restart = "always",
        probe: Callable[[], Awaitable[str]] | None = None,
    ) -> TaskState:
        """Run `run()` now as task `name`, restarting it as its policy says.

        A name runs once at a time: starting a name whose task still runs (a retried
        one-shot asked for again) leaves the running one alone.
        """
        current = self.tasks.get(name)
        if current is not None and current.task is not None and not current.task.done():
            return current
        state = TaskState(name, run, restart, probe)
        if current is not None:  # keep the history of a name that ran before
            state.crashes, state.recent = current.crashes, current.recent
        self.tasks[name] = state
        state.task = asyncio.get_running_loop().create_task(
            self._supervise(state), name=f"tragwerk-{name}"
        )
        return state

    async def stop(self) -> None:
        """Cancel every task and wait for them to end."""
        self._stopping = True
        running = [s.task for s in self.tasks.values() if s.task is not None]
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(BaseException):
                await task
        for state in self.tasks.values():
            if state.status != "done":
                state.status = "stopped"

    async def _supervise(self, state: TaskState) -> None:
        while not self._stopping:
            state.status = "running"
            started = self._clock()
            try:
                await state.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the point: any crash is logged, retried
                error: BaseException = exc
            else:
                if state.restart == "on-failure":
                    state.status = "done"
                    state.in_a_row = 0
                    return
                error = TaskEndedError(f"task {state.name} returned")
            now = self._clock()
            if now - started >= self.backoff.stable_after:
                state.in_a_row = 0
            self._crashed(state, error, now)
            delay = self.backoff.delay(state.in_a_row, self._random)
            state.status = "restarting"
            state.next_try_at = now + delay
            log.error(
                "task crashed",
                task=state.name,
                error=repr(error),
                crashes=state.crashes,
                restart_in=round(delay, 2),
                crash_looping=state.crash_looping,
                exc_info=error,
            )
            await asyncio.sleep(delay)
            state.next_try_at = None
            log.info("task restarting", task=state.name, crashes=state.crashes)

    def _crashed(self, state: TaskState, error: BaseException, now: float) -> None:
        state.crashes += 1
        state.in_a_row += 1
        state.last_error = f"{type(error).__name__}: {error}"[:300]
        state.recent.append(now)
        while state.recent and now - state.recent[0] > self.backoff.crash_loop_window:
            state.recent.popleft()
        looping = len(state.recent) >= self.backoff.crash_loop_crashes
        if looping and not state.crash_looping:
            log.critical(
                "task is crash-looping",
                task=state.name,
                crashes=len(state.recent),
                within_seconds=self.backoff.crash_loop_window,
            )
        state.crash_looping = looping

    def refresh(self) -> None:
        """Forget crashes that left the crash-loop window (called when read)."""
        now = self._clock()
        for state in self.tasks.values():
            while state.recent and now - state.recent[0] > self.backoff.crash_loop_window:
                state.recent.popleft()
            state.crash_looping = len(state.recent) >= self.backoff.crash_loop_crashes

    @property
    def crash_looping(self) -> list[str]:
        self.refresh()
        return [name for name, state in self.tasks.items() if state.crash_looping]

    async def describe(self, name: str) -> str:
        """One task's line in /health/ready: 'ok' or what is wrong with it."""
        state = self.tasks.get(name)
        if state is None:
            return "not started"
        if state.status == "running":
            if state.probe is not None:
                return await state.probe()
            return "ok"
        if state.status == "done":
            return "ok"
        if state.status == "restarting":
            wait = max(0.0, (state.next_try_at or self._clock()) - self._clock())
            looping = "crash-looping; " if state.crash_looping else ""
            return (
                f"restarting ({looping}crash {state.crashes}, next try in {wait:.1f} s): "
                f"{state.last_error}"
            )
        return state.status


class SupervisorCollector(Collector):
    """tragwerk_task_up, tragwerk_task_crashes_total, tragwerk_task_crash_looping."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterable[Metric]:
        self._supervisor.refresh()
        states = sorted(self._supervisor.tasks.values(), key=lambda s: s.name)
        up = GaugeMetricFamily(
            "tragwerk_task_up",
            "1 while a supervised task runs (or has done its one-shot work), 0 while it waits"
            " to be restarted",
            labels=["task"],
        )
        crashes = CounterMetricFamily(
            "tragwerk_task_crashes",
            "Crashes of a supervised task (each is followed by a restart)",
            labels=["task"],
        )
        looping = GaugeMetricFamily(
            "tragwerk_task_crash_looping",
            "1 while a supervised task crashed at least crash_loop_crashes times within"
            " crash_loop_window seconds",
            labels=["task"],
        )
        for state in states:
            up.add_metric([state.name], 1.0 if state.up else 0.0)
            crashes.add_metric([state.name], float(state.crashes))
            looping.add_metric([state.name], 1.0 if state.crash_looping else 0.0)
        yield up
        yield crashes
        yield looping

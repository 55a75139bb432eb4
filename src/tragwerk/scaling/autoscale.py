"""`tragwerk worker --autoscale MIN:MAX`: between MIN and MAX worker processes on this
host, following how late each priority class of the queue is.

Every TRAGWERK_AUTOSCALE_INTERVAL_SECONDS this process reads, in one query, each
class's oldest due job (tragwerk.store.queries.jobs.JobStore.lag) and decides
(tragwerk.domain.queue_scaling.decide): one more `tragwerk worker` process when a
class waited past its budget (TRAGWERK_QUEUE_BUDGETS), one fewer after the queue has
had nothing due for TRAGWERK_AUTOSCALE_COOLDOWN_SECONDS. Each decision is logged
with its reason and counted (tragwerk_autoscale_decisions_total).

The worker processes are ordinary `tragwerk worker` processes (each with its own
health port, the next free one above this process's). Each runs under the
supervisor (tragwerk.monitoring.supervisor): one that exits without being asked is
started again after a backoff, and a crash loop shows as tragwerk_task_crash_looping
{task="worker-N"} and a critical log line. A retired process gets SIGTERM and
finishes its jobs (TRAGWERK_WORKER_GRACE_SECONDS). SIGTERM or Ctrl-C to this process
stops every worker process the same way, then this one: exit status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tragwerk.domain.queue_scaling import CLASSES, ScaleRange, decide
from tragwerk.monitoring.health_port import HealthServer
from tragwerk.monitoring.metrics import CONTENT_TYPE
from tragwerk.monitoring.supervisor import Backoff, Supervisor, SupervisorCollector
from tragwerk.settings import Settings
from tragwerk.store.database import create_engine
from tragwerk.store.queries.jobs import JobStore

log = structlog.get_logger("tragwerk.autoscale")


class WorkerExitedError(RuntimeError):
    """A worker process ended without being asked to."""


@dataclass
class _Slot:
    name: str
    proc: asyncio.subprocess.Process | None = None
    retiring: bool = False


class AutoscaleMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.processes = Gauge(
            "tragwerk_autoscale_processes",
            "Worker processes the autoscaler runs now (started or being restarted)",
            registry=self.registry,
        )
        self.bounds = Gauge(
            "tragwerk_autoscale_bound",
            "The autoscaler's MIN and MAX worker processes",
            ["bound"],
            registry=self.registry,
        )
        self.decisions = Counter(
            "tragwerk_autoscale_decisions",
            "Autoscaler decisions by action (up, down, hold) and the class that was late"
            " (none when no class was)",
            ["action", "class"],
            registry=self.registry,
        )
        self.oldest = Gauge(
            "tragwerk_jobs_oldest_queued_seconds",
            "Per priority class, how long its oldest job that may run now has waited (0: none due)",
            ["class"],
            registry=self.registry,
        )
        self.due = Gauge(
            "tragwerk_jobs_due",
            "Per priority class, queued jobs that may run now",
            ["class"],
            registry=self.registry,
        )
        self.budget = Gauge(
            "tragwerk_queue_budget_seconds",
            "Per priority class, how long its oldest due job may wait (TRAGWERK_QUEUE_BUDGETS)",
            ["class"],
            registry=self.registry,
        )


class Autoscaler:
    def __init__(
        self,
        settings: Settings,
        database_url: str,
        scale: ScaleRange,
        command: list[str],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.scale = scale
        self.command = command
        self.engine = create_engine(database_url, pool_size=1, max_overflow=0)
        self.jobs = JobStore(self.engine)
        self.supervisor = Supervisor(
            Backoff(
                initial=settings.restart_initial_seconds,
                cap=settings.restart_cap_seconds,
                crash_loop_crashes=settings.crash_loop_crashes,
                crash_loop_window=settings.crash_loop_seconds,
            )
        )
        self.metrics = AutoscaleMetrics()
        self.metrics.registry.register(SupervisorCollector(self.supervisor))
        self.metrics.bounds.labels("min").set(scale.minimum)
        self.metrics.bounds.labels("max").set(scale.maximum)
        for name, seconds in settings.queue_budgets.items():
            self.metrics.budget.labels(name).set(seconds)
        self._clock = clock
        self._slots: dict[str, _Slot] = {}
        self._numbers = itertools.count(1)
        self._last_change = float("-inf")
        self._idle_since = clock()
        self._at_max_logged = False
        self.queue_state = "not read yet"

    @property
    def processes(self) -> int:
        return len(self._slots)

    async def step(self) -> str:
        """Read the queue, decide, act; the action taken."""
        now = self._clock()
        try:
            lag = await self.jobs.lag()
        except Exception as exc:  # noqa: BLE001 - the workers go on; so do we
            self.queue_state = f"failing: {exc!r}"[:200]
            log.warning("autoscale: cannot read the queue", error=repr(exc))
            if self.processes < self.scale.minimum:
                self._add(f"{self.processes} running, fewer than the minimum")
            return "hold"
        self.queue_state = "ok"
        for name in CLASSES:
            count, oldest = lag.get(name, (0, 0.0))
            self.metrics.due.labels(name).set(count)
            self.metrics.oldest.labels(name).set(oldest)
        if lag:
            self._idle_since = now
        lags = {name: oldest for name, (_count, oldest) in lag.items()}
        decision = decide(
            lag=lags,
            budgets=self.settings.queue_budgets,
            processes=self.processes,
            scale=self.scale,
            idle_for=now - self._idle_since,
            since_last_change=now - self._last_change,
            cooldown=self.settings.autoscale_cooldown_seconds,
        )
        budgets = self.settings.queue_budgets
        late = max(
            (n for n in lags if lags[n] > budgets[n]),
            key=lambda n: lags[n] / budgets[n],
            default=None,
        )
        self.metrics.decisions.labels(decision.action, late or "none").inc()
        if decision.action == "up":
            self._add(decision.reason)
        elif decision.action == "down":
            self._retire(decision.reason)
        elif late is not None and not self._at_max_logged:
            log.warning("autoscale: at the maximum", reason=decision.reason)
            self._at_max_logged = True
        if late is None:
            self._at_max_logged = False
        return decision.action

    def _add(self, reason: str) -> None:
        name = f"worker-{next(self._numbers)}"
        slot = _Slot(name)
        self._slots[name] = slot
        self._last_change = self._clock()
        self.metrics.processes.set(self.processes)
        log.info("autoscale: one more worker process", reason=reason, processes=self.processes)
        self.supervisor.start(name, lambda: self._run(slot), restart="on-failure")

    def _retire(self, reason: str) -> None:
        candidates = [s for s in self._slots.values() if not s.retiring]
        if not candidates:
            return
        slot = candidates[-1]  # the newest: the oldest keep their warm connections
        slot.retiring = True
        self._last_change = self._clock()
        log.info(
            "autoscale: one worker process fewer",
            reason=reason,
            processes=self.processes - 1,
            retiring=slot.name,
        )
        if slot.proc is not None and slot.proc.returncode is None:
            slot.proc.send_signal(signal.SIGTERM)

    async def _run(self, slot: _Slot) -> None:
        """One worker process, from start to exit; raises if it ended unasked."""
        if slot.retiring:  # retired while waiting to be restarted
            self._forget(slot)
            return
        proc = await asyncio.create_subprocess_exec(*self.command)
        slot.proc = proc
        log.info("worker process started", task=slot.name, pid=proc.pid)
        try:
            code = await proc.wait()
        except asyncio.CancelledError:
            await self._stop(proc)
            self._forget(slot)
            raise
        if slot.retiring:
            log.info("worker process retired", task=slot.name, pid=proc.pid, status=code)
            self._forget(slot)
            return
        raise WorkerExitedError(f"worker process {proc.pid} exited with status {code}")

    def _forget(self, slot: _Slot) -> None:
        self._slots.pop(slot.name, None)
        self.metrics.processes.set(self.processes)

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM, the worker's grace and 10 s more to finish its jobs, then SIGKILL."""
        if proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.settings.worker_grace_seconds + 10)
        except TimeoutError:
            log.warning("worker process did not stop in time; killing it", pid=proc.pid)
            proc.kill()
            await proc.wait()

    async def close(self) -> None:
        await self.supervisor.stop()
        await self.engine.dispose()


def worker_command(concurrency: int, batch: int | None) -> list[str]:
    """The `tragwerk worker` each process runs: this Python, this package."""
    command = [sys.executable, "-m", "tragwerk.cli", "worker", "--concurrency", str(concurrency)]
    if batch:
        command += ["--batch", str(batch)]
    return command


def _app(scaler: Autoscaler) -> Starlette:
    async def live(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_request: Request) -> Response:
        checks = {"queue": scaler.queue_state, "processes": str(scaler.processes)}
        ok = scaler.queue_state == "ok" and scaler.processes >= scaler.scale.minimum
        return JSONResponse(
            {"status": "ok" if ok else "failing", "checks": checks}, 200 if ok else 503
        )

    async def metrics(_request: Request) -> Response:
        return Response(generate_latest(scaler.metrics.registry), media_type=CONTENT_TYPE)

    return Starlette(
        routes=[
            Route("/health/live", live),
            Route("/health/ready", ready),
            Route("/metrics", metrics),
        ]
    )


async def serve_autoscaled(
    settings: Settings, database_url: str, scale: ScaleRange, concurrency: int
) -> int:
    """Run the autoscaler until SIGTERM or Ctrl-C; 0 then."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    scaler = Autoscaler(
        settings, database_url, scale, worker_command(concurrency, settings.worker_batch)
    )
    health: HealthServer | None = None
    log.info(
        "autoscaler started",
        minimum=scale.minimum,
        maximum=scale.maximum,
        budgets=dict(settings.queue_budgets),
        pid=os.getpid(),
    )
    try:
        if settings.worker_port is not None:
            # Bound first: the worker processes take the next free ports above it.
            health = HealthServer(_app(scaler), settings.host, settings.worker_port)
            log.info("autoscaler health and metrics", url=f"http://{health.address}/metrics")
            health.start()
        while not stop.is_set():
            await scaler.step()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.autoscale_interval_seconds)
        log.info("autoscaler stopping its worker processes", processes=scaler.processes)
    finally:
        await scaler.close()
        if health is not None:
            await health.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("autoscaler stopped")
    return 0

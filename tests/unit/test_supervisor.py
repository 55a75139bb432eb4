"""The supervisor of long-lived tasks: restarts, backoff, crash loops, one-shot retries."""

from __future__ import annotations

import asyncio
import random

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs

from tragwerk.monitoring.supervisor import Backoff, Supervisor, SupervisorCollector

FAST = Backoff(initial=0.01, cap=0.04, stable_after=60.0, crash_loop_crashes=3)


async def until(condition: object, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def test_backoff_doubles_is_capped_and_jittered() -> None:
    backoff = Backoff(initial=1.0, cap=8.0)
    rnd = random.Random(1)
    for crashes, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        delays = [backoff.delay(crashes, rnd) for _ in range(200)]
        assert all(0.5 * base <= d < 1.5 * base for d in delays)
        assert max(delays) - min(delays) > 0.5 * base  # spread, so processes fall out of step


async def test_a_crashed_task_is_logged_with_its_traceback_counted_and_restarted() -> None:
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise ValueError(f"boom {runs}")
        await asyncio.Event().wait()  # then it runs until cancelled

    supervisor = Supervisor(FAST)
    with capture_logs() as logs:
        state = supervisor.start("feed", flaky)
        await until(lambda: runs == 3 and state.status == "running")
        await supervisor.stop()
    crashes = [entry for entry in logs if entry["event"] == "task crashed"]
    assert [entry["error"] for entry in crashes] == ["ValueError('boom 1')", "ValueError('boom 2')"]
    assert all(isinstance(entry["exc_info"], ValueError) for entry in crashes)
    assert state.crashes == 2
    assert state.last_error == "ValueError: boom 2"
    assert state.status == "stopped"


async def test_a_task_that_returns_counts_as_a_crash() -> None:
    runs = 0

    async def ends() -> None:
        nonlocal runs
        runs += 1

    supervisor = Supervisor(FAST)
    state = supervisor.start("sla_monitor", ends)
    await until(lambda: runs >= 2)
    await supervisor.stop()
    assert state.crashes >= 1
    assert state.last_error is not None
    assert "returned" in state.last_error


async def test_readiness_line_and_metrics_while_restarting() -> None:
    supervisor = Supervisor(Backoff(initial=30.0, cap=30.0))

    async def broken() -> None:
        raise ConnectionError("database gone")

    registry = CollectorRegistry()
    registry.register(SupervisorCollector(supervisor))
    supervisor.start("worker", broken)
    await until(lambda: supervisor.tasks["worker"].status == "restarting")
    line = await supervisor.describe("worker")
    assert line.startswith("restarting (crash 1, next try in ")
    assert line.endswith("ConnectionError: database gone")
    text = generate_latest(registry).decode()
    assert 'tragwerk_task_up{task="worker"} 0.0' in text
    assert 'tragwerk_task_crashes_total{task="worker"} 1.0' in text
    assert 'tragwerk_task_crash_looping{task="worker"} 0.0' in text
    await supervisor.stop()


async def test_a_running_task_answers_with_its_probe() -> None:
    supervisor = Supervisor(FAST)

    async def probe() -> str:
        return "failing: TimeoutError"

    supervisor.start("worker", asyncio.Event().wait, probe=probe)
    await asyncio.sleep(0)
    assert await supervisor.describe("worker") == "failing: TimeoutError"
    assert await supervisor.describe("other") == "not started"
    await supervisor.stop()


async def test_crash_loop_is_reported_and_forgotten_when_the_window_passes() -> None:
    now = [0.0]
    supervisor = Supervisor(
        Backoff(initial=0.001, cap=0.001, crash_loop_crashes=3, crash_loop_window=100.0),
        clock=lambda: now[0],
    )
    runs = 0
    gate = asyncio.Event()

    async def crashes_three_times() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError("again")
        await gate.wait()

    with capture_logs() as logs:
        state = supervisor.start("worker", crashes_three_times)
        await until(lambda: runs == 4)
    assert state.crash_looping
    assert supervisor.crash_looping == ["worker"]
    assert any(e["event"] == "task is crash-looping" and e["log_level"] == "critical" for e in logs)
    assert "crash-looping" not in await supervisor.describe("worker")  # it runs again now
    now[0] = 101.0  # the crashes leave the window
    assert supervisor.crash_looping == []
    await supervisor.stop()


async def test_backoff_starts_afresh_after_a_stable_run() -> None:
    now = [0.0]
    supervisor = Supervisor(
        Backoff(initial=0.001, cap=1.0, stable_after=10.0), clock=lambda: now[0]
    )
    release = asyncio.Event()
    runs = 0

    async def crashes_after_release() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("first")
        await release.wait()
        release.clear()
        raise RuntimeError("later")

    state = supervisor.start("feed", crashes_after_release)
    await until(lambda: runs == 2)
    assert state.in_a_row == 1
    now[0] = 50.0  # the second run lasted 50 s
    release.set()
    await until(lambda: state.crashes == 2)
    assert state.in_a_row == 1  # not 2: the stable run reset the backoff
    await supervisor.stop()


async def test_a_one_shot_is_retried_until_it_succeeds_and_not_started_twice() -> None:
    supervisor = Supervisor(FAST)
    attempts = 0
    entered = asyncio.Event()
    go_on = asyncio.Event()

    async def reload() -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise OSError("database restarting")
        entered.set()
        await go_on.wait()

    state = supervisor.start("limit_sync", reload, restart="on-failure")
    await entered.wait()
    assert supervisor.start("limit_sync", reload, restart="on-failure") is state  # still running
    go_on.set()
    await until(lambda: state.status == "done")
    assert attempts == 3
    assert state.crashes == 2
    assert await supervisor.describe("limit_sync") == "ok"
    again = supervisor.start("limit_sync", reload, restart="on-failure")
    await until(lambda: again.status == "done")
    assert attempts == 4
    assert again.crashes == 2  # the name's history is kept
    await supervisor.stop()


@pytest.mark.parametrize("restart", ["always", "on-failure"])
async def test_stop_cancels_running_and_waiting_tasks(restart: str) -> None:
    supervisor = Supervisor(Backoff(initial=60.0, cap=60.0))
    cancelled = asyncio.Event()

    async def runs() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    async def waits() -> None:
        raise RuntimeError("crashes, then waits 30-90 s to restart")

    supervisor.start("a", runs, restart=restart)  # type: ignore[arg-type]
    supervisor.start("b", waits, restart=restart)  # type: ignore[arg-type]
    await until(lambda: supervisor.tasks["b"].status == "restarting")
    await asyncio.wait_for(supervisor.stop(), 2.0)
    assert cancelled.is_set()
    assert {s.status for s in supervisor.tasks.values()} == {"stopped"}

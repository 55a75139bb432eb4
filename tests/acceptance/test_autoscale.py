"""`tragwerk worker --autoscale MIN:MAX` as a real process with real worker processes.

A backlog of webhook deliveries to a slow receiver (each answer takes 0.4 s) makes the
normal class wait past its (test-sized) budget: the autoscaler grows to MAX; once every
delivery is made, the idle queue shrinks it back to MIN after the cool-down; SIGTERM
stops it and every worker process, exit status 0. Budgets, check interval and
cool-down are shortened through their settings; the logic is the shipped one.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.acceptance.test_worker_processes import api_on, worker_env
from tests.conftest import GENEROUS, create_database, make_api
from tests.private_postgres import private_postgres
from tests.processes import served_database, start, until
from tests.receivers import WebhookReceiver
from tests.services import free_port, require_program
from tragwerk.domain.cases import SlaPolicy
from tragwerk.settings import Settings

SECRET = "autoscale-secret-0123456789"
CASES = 40


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    with served_database(tmp_path, "tragwerk_autoscale") as url:
        yield url


async def _backlog(database: str, hook: str) -> set[int]:
    """A webhook subscription to `hook` and CASES new cases: the ids of the cases."""
    api, app = await api_on(database)
    async with app.router.lifespan_context(app):
        await api.subscribe(hook, SECRET)
        location = await api.location()
        return {(await api.case(location))["id"] for _ in range(CASES)}


def _autoscaler(env: dict[str, str], log: Path, scale: str) -> subprocess.Popen[bytes]:
    """`tragwerk worker --autoscale SCALE --concurrency 2`, its output to `log`."""
    command = [sys.executable, "-m", "tragwerk.cli", "worker", "--autoscale", scale]
    with log.open("ab") as out:
        return subprocess.Popen(
            [*command, "--concurrency", "2"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _metric(port: int, name: str) -> float | None:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            continue
    return found


def test_workers_follow_the_queue_up_to_max_and_back_to_min(database: str, tmp_path: Path) -> None:
    port = free_port()
    env = worker_env(
        database,
        None,
        TRAGWERK_WORKER_PORT=str(port),
        TRAGWERK_QUEUE_BUDGETS="sla=1,high=1,normal=1,bulk=1",
        TRAGWERK_AUTOSCALE_INTERVAL_SECONDS="0.5",
        TRAGWERK_AUTOSCALE_COOLDOWN_SECONDS="2",
        TRAGWERK_LOG_LEVEL="info",
    )
    log = tmp_path / "autoscale.log"
    with WebhookReceiver(answer=lambda _n: (200, {}, 0.4)) as receiver:
        created = asyncio.run(_backlog(database, receiver.url()))
        scaler = _autoscaler(env, log, "1:3")
        try:
            # 40 deliveries of 0.4 s, two at a time per process: about 8 s for one
            # process, so the normal class waits past its 1 s budget until MAX runs.
            until(
                lambda: _metric(port, "tragwerk_autoscale_processes") == 3,
                within=60,
                what="three worker processes",
            )
            assert len(_children(scaler.pid)) == 3
            until(
                lambda: created <= {json.loads(r.body)["case"]["id"] for r in receiver.received},
                within=120,
                what="every case's webhook delivered",
            )
            # Nothing due any more: one process retires per cool-down, down to MIN.
            until(
                lambda: _metric(port, "tragwerk_autoscale_processes") == 1,
                within=60,
                what="back to one worker process",
            )
            until(lambda: len(_children(scaler.pid)) == 1, within=30, what="one child left")
            workers_seen = _children(scaler.pid)
        finally:
            scaler.send_signal(signal.SIGTERM)
            try:
                code = scaler.wait(timeout=60)
            except subprocess.TimeoutExpired:
                scaler.kill()
                raise
    output = log.read_text()
    assert code == 0, output[-4000:]
    for pid in workers_seen:
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        ), f"worker process {pid} outlived the autoscaler"
    ups = [line for line in output.splitlines() if "one more worker process" in line]
    downs = [line for line in output.splitlines() if "one worker process fewer" in line]
    assert len(ups) >= 3, output[-4000:]  # the first for the minimum, two for the backlog
    assert any("normal jobs waited" in line for line in ups), ups
    assert len(downs) >= 2, downs
    assert all("no job due" in line for line in downs), downs
    # Every case's delivery made while processes came and went (at least once: a
    # copy after a late heartbeat is allowed by design and carries the same event id).
    assert len({r.headers["X-Tragwerk-Event-Id"] for r in receiver.received}) == CASES


async def _sla_case_behind_bulk(database: str, hook: str) -> int:
    """CASES low-priority cases (bulk webhooks), then one critical case whose SLA runs out
    about a second later: its id."""
    settings = Settings(
        database_url=database,
        **GENEROUS,
        job_heartbeat_timeout_seconds=2.0,
        sla_policy=SlaPolicy.parse("critical=0.0003"),
    )
    api, app = await make_api(database, settings)
    async with app.router.lifespan_context(app):
        await api.subscribe(hook, SECRET)
        location = await api.location()
        for _ in range(CASES):
            await api.case(location, priority="low")
        return int((await api.case(location, priority="critical"))["id"])


def test_sla_work_jumps_a_bulk_backlog(database: str, tmp_path: Path) -> None:
    """While bulk deliveries wait (their 600 s budget is far off, so no process is
    added for them), the SLA monitor's event for a case past its deadline is delivered
    long before the bulk backlog is."""
    env = worker_env(
        database,
        None,
        TRAGWERK_QUEUE_BUDGETS="sla=3",
        TRAGWERK_AUTOSCALE_INTERVAL_SECONDS="0.5",
        TRAGWERK_SLA_SCAN_SECONDS="0.5",
        TRAGWERK_LOG_LEVEL="info",
    )
    log = tmp_path / "autoscale.log"
    with WebhookReceiver(answer=lambda _n: (200, {}, 0.3)) as receiver:
        critical = asyncio.run(_sla_case_behind_bulk(database, receiver.url()))
        scaler = _autoscaler(env, log, "1:2")
        try:

            def bodies() -> list[dict[str, Any]]:
                return [json.loads(r.body) for r in list(receiver.received)]

            def sla_delivered() -> bool:
                return any(
                    b["type"].startswith("case.sla_") and b["case"]["id"] == critical
                    for b in bodies()
                )

            until(sla_delivered, within=60, what="the SLA event's delivery")
            bulk_done = sum(
                1
                for b in bodies()
                if b["type"] == "case.created" and b["case"]["priority"] == "low"
            )
            until(lambda: len(bodies()) >= CASES + 2, within=120, what="every delivery")
        finally:
            scaler.send_signal(signal.SIGTERM)
            code = scaler.wait(timeout=60)
    assert code == 0, log.read_text()[-4000:]
    # Queued behind all of them, delivered while most still waited.
    assert bulk_done < CASES / 2, (bulk_done, log.read_text()[-2000:])


def _ready(port: int) -> int:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code
    except httpx.HTTPError:
        return 0


def test_a_killed_worker_process_is_replaced_and_a_lost_database_is_survived(
    tmp_path: Path,
) -> None:
    """SIGKILL to a worker process: a new one starts, the crash is counted. The
    database stopped: the autoscaler stays up and says why it is not ready; started
    again: ready, with its worker process back."""
    require_program("runuser", "it comes with util-linux")
    with private_postgres("127.0.0.1", free_port(), durable=True) as pg:
        url = asyncio.run(create_database(pg.url, prefix="tragwerk_autoscale_faults"))
        migrate = start(tmp_path, "migrate", env={"TRAGWERK_DATABASE_URL": url})
        out, _ = migrate.communicate(timeout=120)
        assert migrate.returncode == 0, out
        port = free_port()
        env = worker_env(
            url,
            None,
            TRAGWERK_WORKER_PORT=str(port),
            TRAGWERK_AUTOSCALE_INTERVAL_SECONDS="0.5",
            TRAGWERK_RESTART_INITIAL_SECONDS="0.2",
            TRAGWERK_RESTART_CAP_SECONDS="2",
            TRAGWERK_LOG_LEVEL="info",
        )
        log = tmp_path / "autoscale.log"
        scaler = _autoscaler(env, log, "1:2")
        try:
            until(lambda: _ready(port) == 200, within=60, what="the autoscaler ready")
            (first,) = until(lambda: _children(scaler.pid), within=30, what="a worker process")
            os.kill(first, signal.SIGKILL)
            until(
                lambda: _children(scaler.pid) - {first},
                within=30,
                what="a new worker process in place of the killed one",
            )
            crashes = r'tragwerk_task_crashes_total{task="worker-1"}'
            until(lambda: _metric(port, re.escape(crashes)) == 1, within=10, what="the crash")

            pg.stop("immediate")
            until(lambda: _ready(port) == 503, within=30, what="not ready without the database")
            assert scaler.poll() is None
            pg.start()
            until(lambda: _ready(port) == 200, within=90, what="ready again")
            until(lambda: _children(scaler.pid), within=60, what="a worker process again")
        finally:
            scaler.send_signal(signal.SIGTERM)
            code = scaler.wait(timeout=60)
    output = log.read_text()
    assert code == 0, output[-4000:]
    assert "autoscale: cannot read the queue" in output


def test_a_bad_range_is_refused_before_anything_starts(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAGWERK_")}
    done = subprocess.run(
        [sys.executable, "-m", "tragwerk.cli", "worker", "--autoscale", "3:1"],
        env=env, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--autoscale wants 1 <= MIN <= MAX" in done.stderr

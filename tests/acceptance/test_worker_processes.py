"""`tragwerk worker` as real processes: SIGKILL at random loses nothing, SIGTERM is graceful.

The receivers (aiosmtpd and an HTTP server) run in this test process and count what
arrives; the case changes go through the API in this process too, since the workers
are what is under test here.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import (
    GENEROUS,
    SERVICE_PG_ADMIN_URL,
    Api,
    connect_raw,
    make_api,
    migrated_database,
)
from tests.receivers import SmtpSink, WebhookReceiver, eventually
from tests.services import SERVICE_PG_HOST, SERVICE_PG_PORT, free_port, require_service
from tragwerk.monitoring.metrics import Metrics
from tragwerk.settings import Settings
from tragwerk.store.database import create_engine
from tragwerk.store.queries.jobs import JobStore

CHANGES = 2_000
SECRET = "chaos-secret-0123456789"


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[str]:
    require_service("PostgreSQL", SERVICE_PG_HOST, SERVICE_PG_PORT)
    async with migrated_database(SERVICE_PG_ADMIN_URL, "tragwerk_workers") as url:
        yield url


def worker_env(url: str, smtp: SmtpSink | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAGWERK_")}
    env.update(
        {
            "TRAGWERK_DATABASE_URL": url,
            "TRAGWERK_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
            "TRAGWERK_JOB_HEARTBEAT_TIMEOUT_SECONDS": "2",
            "TRAGWERK_JOB_RETRY_BASE_SECONDS": "0.1",
            "TRAGWERK_JOB_RETRY_CAP_SECONDS": "1",
            "TRAGWERK_WORKER_PORT": "off",
            "TRAGWERK_SLA_SCAN_SECONDS": "3600",
            "TRAGWERK_LOG_LEVEL": "warning",
        }
    )
    if smtp is not None:
        env["TRAGWERK_SMTP_URL"] = smtp.url
    env.update(extra)
    return env


def start_worker(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tragwerk.cli", "worker", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def api_on(url: str) -> tuple[Api, Any]:
    # The workers' heartbeat timeout (worker_env), which also decides what is orphaned.
    settings = Settings(database_url=url, **GENEROUS, job_heartbeat_timeout_seconds=2.0)
    return await make_api(url, settings)


async def picked_or_queued(url: str) -> dict[str, int]:
    conn = await connect_raw(url)
    try:
        rows = await conn.fetch("SELECT status::text, count(*) FROM pgqueuer GROUP BY 1")
    finally:
        await conn.close()
    return {r[0]: int(r[1]) for r in rows}


async def test_sigkill_at_random_loses_no_delivery(database: str, tmp_path: Path) -> None:
    rng = random.Random(4)
    with SmtpSink() as smtp, WebhookReceiver() as receiver:
        api, app = await api_on(database)
        async with app.router.lifespan_context(app):
            await api.subscribe(receiver.url(), SECRET)
            location = await api.location()
            agent = await api.user()
            env = worker_env(database, smtp)
            log = tmp_path / "workers.log"
            workers = [start_worker(env, log, "--concurrency", "20") for _ in range(2)]
            kills = 0
            stop_killing = asyncio.Event()

            async def killer() -> None:
                nonlocal kills
                while not stop_killing.is_set():
                    await asyncio.sleep(rng.uniform(0.3, 1.5))
                    victim = rng.randrange(len(workers))
                    workers[victim].send_signal(signal.SIGKILL)
                    workers[victim].wait()
                    kills += 1
                    workers[victim] = start_worker(env, log, "--concurrency", "20")

            async def changes() -> int:
                made = 0
                cases: list[dict[str, Any]] = []
                while made < CHANGES:
                    if not cases or rng.random() < 0.3:
                        cases.append(await api.case(location, assignee_ids=[agent["id"]]))
                    else:
                        case = rng.choice(cases)
                        r = await api.client.patch(
                            f"/v1/cases/{case['id']}",
                            json={"title": f"changed {made}", "version": case["version"]},
                            headers=api.auth(),
                        )
                        assert r.status_code == 200, r.text
                        cases[cases.index(case)] = r.json()
                    made += 1
                return made

            killing = asyncio.create_task(killer())
            try:
                assert await changes() == CHANGES
                await asyncio.sleep(3)  # a few more kills while the backlog drains
            finally:
                stop_killing.set()
                await killing
            try:
                await eventually(
                    lambda: (
                        len(set(receiver.event_ids())) >= CHANGES
                        and len(set(smtp.message_ids())) >= CHANGES
                    ),
                    within=240,
                    every=0.5,
                )
                await eventually(lambda: _queue_empty(database), within=60, every=0.5)
            finally:
                for w in workers:
                    w.send_signal(signal.SIGTERM)
                for w in workers:
                    w.wait(timeout=30)
            async with api.services.engine.connect() as conn:
                notified = (
                    await conn.execute(
                        text("SELECT count(DISTINCT event_id), count(*) FROM notifications")
                    )
                ).one()
        await api.client.aclose()

    webhook_ids = Counter(receiver.event_ids())
    mail_ids = Counter(smtp.message_ids())
    assert len(webhook_ids) == CHANGES
    assert len(mail_ids) == CHANGES
    assert {f"<{e}.{agent['id']}@tragwerk>" for e in webhook_ids} == set(mail_ids)
    assert tuple(notified) == (CHANGES, CHANGES)  # one row per event and recipient, no copy
    duplicates = sum(webhook_ids.values()) - CHANGES, sum(mail_ids.values()) - CHANGES
    print(
        f"\n{kills} SIGKILLs; all {CHANGES} events delivered by webhook and mail; "
        f"re-sent copies (same idempotency key): webhooks {duplicates[0]}, mails {duplicates[1]}"
    )
    assert kills >= 5


async def _queue_empty(url: str) -> bool:
    return not await picked_or_queued(url)


async def test_sigterm_lets_the_running_delivery_finish(database: str, tmp_path: Path) -> None:
    with WebhookReceiver(lambda _n: (200, {}, 1.5)) as receiver:
        api, app = await api_on(database)
        async with app.router.lifespan_context(app):
            await api.subscribe(receiver.url(), SECRET, ["case.created"])
            port = free_port()
            proc = start_worker(
                worker_env(database, None, TRAGWERK_WORKER_PORT=str(port)),
                tmp_path / "worker.log",
            )
            try:
                ready = await eventually(lambda: _get(f"http://127.0.0.1:{port}/health/ready"))
                assert ready.json()["checks"] == {"database": "ok", "queue": "ok"}
                await api.case(await api.location())
                await eventually(lambda: receiver.in_flight == 1)
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait, 30) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
        await api.client.aclose()
    assert len(receiver.received) == 1
    assert receiver.in_flight == 0
    assert await picked_or_queued(database) == {}  # finished and recorded, not re-queued


async def test_sigterm_past_the_grace_period_releases_the_job_at_once(
    database: str, tmp_path: Path
) -> None:
    answers = {0: (200, {}, 6.0)}
    with WebhookReceiver(lambda n: answers.get(n, (200, {}, 0.0))) as receiver:
        api, app = await api_on(database)
        async with app.router.lifespan_context(app):
            await api.subscribe(receiver.url(), SECRET, ["case.created"])
            env = worker_env(database, None, TRAGWERK_WORKER_GRACE_SECONDS="0.5")
            proc = start_worker(env, tmp_path / "worker.log")
            await api.case(await api.location())
            await eventually(lambda: receiver.in_flight == 1)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(proc.wait, 30) == 0
            stopped_after = time.monotonic() - started
            # Back in the queue right away, not after a heartbeat timeout.
            assert await picked_or_queued(database) == {"queued": 1}
            second = start_worker(env, tmp_path / "worker.log")
            try:
                await eventually(lambda: len(receiver.received) == 2)
                await eventually(lambda: _queue_empty(database))
            finally:
                second.send_signal(signal.SIGTERM)
                await asyncio.to_thread(second.wait, 30)
        await api.client.aclose()
    ids = receiver.event_ids()
    assert ids[0] == ids[1]  # the re-run carries the same idempotency key
    assert stopped_after < 6.0


async def _get(url: str) -> httpx.Response | None:
    try:
        async with httpx.AsyncClient() as client:
            response = await client.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return response if response.status_code == 200 else None


async def test_held_jobs_from_the_command_line(database: str, tmp_path: Path) -> None:
    with WebhookReceiver(lambda _n: (404, {}, 0.0)) as receiver:
        api, app = await api_on(database)
        async with app.router.lifespan_context(app):
            await api.subscribe(receiver.url(), SECRET, ["case.created"])
            env = worker_env(database, None)
            proc = start_worker(env, tmp_path / "worker.log")
            try:
                await api.case(await api.location())
                await eventually(lambda: _held_rows(database))
            finally:
                proc.send_signal(signal.SIGTERM)
                await asyncio.to_thread(proc.wait, 30)
        await api.client.aclose()
    held = await jobs_cli(env, "held")
    assert held.returncode == 0, held.stderr
    lines = held.stdout.strip().splitlines()
    assert len(lines) == 2, held.stdout
    assert "webhook" in lines[1]
    assert "receiver answered 404" in lines[1]
    job_id = int(lines[1].split()[0])
    missing = await jobs_cli(env, "requeue", "999999")
    assert missing.returncode == 1
    assert "not held" in missing.stderr
    done = await jobs_cli(env, "requeue", str(job_id))
    assert done.returncode == 0, done.stderr
    assert f"requeued 1 job(s) [{job_id}]" in done.stdout
    assert await picked_or_queued(database) == {"queued": 1}
    usage = await jobs_cli(env, "requeue")
    assert usage.returncode == 2


async def jobs_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tragwerk.cli", "jobs", *args]
    return await asyncio.to_thread(
        subprocess.run, command, env=env, capture_output=True, text=True, check=False
    )


async def _held_rows(url: str) -> bool:
    return (await picked_or_queued(url)).get("failed", 0) == 1


async def test_several_workers_on_one_host_share_the_configured_port(
    database: str, tmp_path: Path
) -> None:
    """The second worker used to exit with status 3 (port taken); each now takes the next
    free port and says where it listens."""
    port = free_port()
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    env = worker_env(database, None, TRAGWERK_WORKER_PORT=str(port), TRAGWERK_LOG_LEVEL="info")
    procs = []
    try:
        for log in logs:
            procs.append(start_worker(env, log))
            await eventually(lambda log=log: "/metrics" in log.read_text(), within=30)
        ports = []
        for log in logs:
            line = next(x for x in log.read_text().splitlines() if "worker health" in x)
            ports.append(int(line.split("http://127.0.0.1:")[1].split("/")[0]))
        assert ports[0] == port
        assert len(set(ports)) == 3
        for p in ports:
            r = await eventually(lambda p=p: _get(f"http://127.0.0.1:{p}/health/live"))
            assert r.status_code == 200
        assert all(proc.poll() is None for proc in procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert await asyncio.to_thread(proc.wait, 30) == 0


async def test_the_jobs_of_a_killed_worker_are_listed_as_orphaned(
    database: str, tmp_path: Path
) -> None:
    """Before, a dead worker's claimed jobs showed nowhere until another worker took
    them over; now the API, `tragwerk jobs orphaned` and a gauge show them, with the
    dead worker's id."""
    answers = {0: (200, {}, 20.0)}  # the first delivery hangs until its worker is killed
    with WebhookReceiver(lambda n: answers.get(n, (200, {}, 0.0))) as receiver:
        api, app = await api_on(database)
        async with app.router.lifespan_context(app):
            await api.subscribe(receiver.url(), SECRET, ["case.created"])
            env = worker_env(database, None, TRAGWERK_LOG_LEVEL="info")
            victim_log = tmp_path / "victim.log"
            victim = start_worker(env, victim_log)
            try:
                await api.case(await api.location())
                await eventually(lambda: receiver.in_flight == 1)
            finally:
                victim.kill()
                await asyncio.to_thread(victim.wait, 30)
            match = re.search(r"queue_manager_id\W+([0-9a-f-]{36})", victim_log.read_text())
            assert match, victim_log.read_text()
            dead_worker = match.group(1)

            async def listed() -> list[dict[str, Any]]:
                r = await api.get("/v1/admin/jobs?state=orphaned")
                assert r.status_code == 200, r.text
                return list(r.json())

            orphans = await eventually(listed)  # after the 2 s heartbeat timeout
            # The webhook job, and the case event too if the dead worker had not yet
            # written its outcome (outcomes are written in batches).
            assert ("webhook", dead_worker) in [(o["kind"], o["worker"]) for o in orphans]
            assert {o["worker"] for o in orphans} == {dead_worker}
            assert all(o["silent_seconds"] >= 2 for o in orphans)

            cli = await jobs_cli(env, "orphaned")
            assert cli.returncode == 0, cli.stderr
            lines = cli.stdout.strip().splitlines()
            assert len(lines) == 1 + len(orphans)
            assert any("webhook" in line and dead_worker in line for line in lines[1:])

            metrics = Metrics()
            engine = create_engine(database, pool_size=1)
            try:
                stats = await JobStore(engine).stats(timedelta(seconds=2))
            finally:
                await engine.dispose()
            metrics.jobs.refresh_queue(stats)
            assert 'tragwerk_jobs_orphaned{kind="webhook"} 1.0' in metrics.render().decode()
            assert len(stats) >= 1

            successor = start_worker(env, tmp_path / "successor.log")
            try:
                await eventually(lambda: len(receiver.received) >= 2)
                await eventually(lambda: _queue_empty(database))
            finally:
                successor.send_signal(signal.SIGTERM)
                await asyncio.to_thread(successor.wait, 30)
            assert await listed() == []
            none = await jobs_cli(env, "orphaned")
            assert none.returncode == 0
            assert "no orphaned jobs" in none.stderr
        await api.client.aclose()
    assert len(set(receiver.event_ids())) == 1  # the re-run carries the same key

"""Job queue throughput against peers, and what recording an event adds to a case write.

    python3 -m venv var/bench-peers
    var/bench-peers/bin/pip install -e . -r bench/requirements-peers.txt
    var/bench-peers/bin/python -m bench.jobs [--jobs 20000] [--only tragwerk,celery]

Throughput, per queue and setting, one worker process, on this machine's services
(PostgreSQL, Redis, RabbitMQ): N jobs are queued, then one worker process starts and
runs them, followed by a sentinel job queued last that records when it ran. The same
run with no jobs gives the worker's start-up time (process start, imports,
connections), which is subtracted: jobs/s = N / (time to sentinel with N jobs - time to
sentinel with none). Two job kinds: a no-op, and a realistic job that inserts one
notification row into PostgreSQL.

Enqueue latency: the same case creation through tragwerk's CaseStore with and without
its event, interleaved, p50/p99 (in this process, on the same database).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bench.servers import ROOT

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
DB = "tragwerk_bench_jobs"
DSN = f"postgresql://postgres@127.0.0.1:5432/{DB}"
PY = sys.executable


@dataclass
class Setup:
    """One queue at one setting: how to clear it, fill it, and start its worker."""

    name: str
    setting: str
    reset: Callable[[], None]
    enqueue: Callable[[str, int], None]
    worker: Callable[[], list[str]]
    env: dict[str, str] = field(default_factory=dict)
    # tragwerk's sentinel is a notification row; the peers' write a file
    db_marker: bool = False


def sql(statement: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(DSN)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(go())


def run(*args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(
        args, check=True, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL
    )


# --- tragwerk -------------------------------------------------------------------------


def tragwerk_enqueue(kind: str, count: int) -> None:
    import orjson

    from tragwerk.store.database import create_engine
    from tragwerk.store.outbox import NOOP, NOTIFICATION_ONLY, Job, enqueue

    async def go() -> None:
        engine = create_engine(DSN, pool_size=1)
        user = await _user_id()
        job = Job(
            NOOP if kind == "noop" else NOTIFICATION_ONLY,
            orjson.dumps({"user_id": user, "title": "bench"}),
            0,
        )
        try:
            for start in range(0, count, 1000):
                async with engine.begin() as conn:
                    await enqueue(conn, [job] * min(1000, count - start))
            sentinel = Job(
                NOTIFICATION_ONLY, orjson.dumps({"user_id": user, "title": "sentinel"}), 0
            )
            async with engine.begin() as conn:
                await enqueue(conn, [sentinel])
        finally:
            await engine.dispose()

    asyncio.run(go())


def tragwerk_setup(setting: str, *args: str) -> Setup:
    return Setup(
        "tragwerk (pgqueuer)",
        setting,
        reset=lambda: sql(
            "DELETE FROM pgqueuer; DELETE FROM pgqueuer_log; DELETE FROM notifications"
        ),
        enqueue=tragwerk_enqueue,
        worker=lambda: [PY, "-m", "tragwerk.cli", "worker", *args],
        env={
            "TRAGWERK_DATABASE_URL": DSN,
            "TRAGWERK_WORKER_PORT": "off",
            "TRAGWERK_SLA_SCAN_SECONDS": "3600",
            "TRAGWERK_LOG_LEVEL": "warning",
        },
        db_marker=True,
    )


# --- peers ----------------------------------------------------------------------------


def peer_setup(
    name: str,
    setting: str,
    module: str,
    clear: Callable[[], None],
    worker: list[str],
    env: dict[str, str] | None = None,
) -> Setup:
    """A peer from bench/job_peers/: `python -m <module> enqueue KIND N` fills its queue."""

    def reset() -> None:
        clear()
        sql("DELETE FROM notifications")

    return Setup(
        name,
        setting,
        reset=reset,
        enqueue=lambda kind, n: run(PY, "-m", module, "enqueue", kind, str(n), env=_peer_env()),
        worker=lambda: worker,
        env=env or {},
    )


PROCRASTINATE = "bench.job_peers.procrastinate_app"
CELERY = "bench.job_peers.celery_app"
DRAMATIQ = "bench.job_peers.dramatiq_app"


def procrastinate_setup(setting: str, concurrency: int) -> Setup:
    return peer_setup(
        "procrastinate",
        setting,
        PROCRASTINATE,
        lambda: sql("DELETE FROM procrastinate_jobs"),
        [PY, "-m", PROCRASTINATE, "work", str(concurrency)],
    )


def celery_setup(setting: str, args: list[str]) -> Setup:
    quiet = ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return peer_setup(
        "Celery (Redis broker)",
        setting,
        CELERY,
        lambda: run("redis-cli", "-n", "15", "flushdb"),
        [PY, "-m", "celery", "-A", f"{CELERY}:app", "worker", "-l", "warning", *quiet, *args],
    )


def dramatiq_setup(setting: str, threads: int, prefetch: int | None) -> Setup:
    return peer_setup(
        "Dramatiq (RabbitMQ broker)",
        setting,
        DRAMATIQ,
        lambda: run(PY, "-m", DRAMATIQ, "flush", env=_peer_env()),
        [PY, "-m", "dramatiq", DRAMATIQ, "--processes", "1", "--threads", str(threads)],
        env={"dramatiq_queue_prefetch": str(prefetch)} if prefetch else None,
    )


# --- measurement ----------------------------------------------------------------------

MARKER = Path(tempfile.gettempdir()) / "tragwerk-bench-jobs.marker"
_USER: list[int] = []


async def _user_id() -> int:
    if not _USER:
        conn = await asyncpg.connect(DSN)
        try:
            _USER.append(int(await conn.fetchval("SELECT min(id) FROM users")))
        finally:
            await conn.close()
    return _USER[0]


def _peer_env() -> dict[str, str]:
    return {
        "BENCH_DSN": DSN,
        "BENCH_MARKER": str(MARKER),
        "BENCH_USER_ID": str(asyncio.run(_user_id())),
    }


def _db_marker() -> float | None:
    async def go() -> float | None:
        conn = await asyncpg.connect(DSN)
        try:
            value = await conn.fetchval(
                "SELECT extract(epoch FROM created_at) FROM notifications WHERE title = 'sentinel'"
            )
        finally:
            await conn.close()
        return None if value is None else float(value)

    return asyncio.run(go())


def _file_marker() -> float | None:
    try:
        return float(MARKER.read_text())
    except (FileNotFoundError, ValueError):
        return None


def time_to_sentinel(setup: Setup, kind: str, count: int, timeout: float) -> tuple[float, float]:
    """(seconds to enqueue, seconds from worker launch to the sentinel's run)."""
    setup.reset()
    MARKER.unlink(missing_ok=True)
    started = time.perf_counter()
    setup.enqueue(kind, count)
    enqueue_seconds = time.perf_counter() - started
    launched = time.time()
    proc = subprocess.Popen(
        setup.worker(),
        cwd=ROOT,
        env={**os.environ, **_peer_env(), **setup.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = _db_marker if setup.db_marker else _file_marker
    try:
        deadline = time.monotonic() + timeout
        while (done := marker()) is None:
            if proc.poll() is not None:
                raise SystemExit(f"{setup.name} worker exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{setup.name}: no sentinel within {timeout} s")
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return enqueue_seconds, done - launched


def throughput(setup: Setup, kind: str, count: int) -> dict[str, float]:
    _, startup = time_to_sentinel(setup, kind, 0, timeout=60)
    enqueue_seconds, total = time_to_sentinel(setup, kind, count, timeout=600)
    work = max(total - startup, 1e-3)
    return {
        "startup_s": startup,
        "drain_s": work,
        "jobs_per_s": count / work,
        "enqueue_per_s": count / enqueue_seconds,
    }


# --- enqueue latency in a case write --------------------------------------------------


def write_latency(samples: int) -> dict[str, float]:
    import orjson
    from sqlalchemy import text

    from tragwerk.domain.cases import Priority, SlaPolicy
    from tragwerk.domain.observability import SilentReporter
    from tragwerk.store.database import create_engine
    from tragwerk.store.outbox import NOTIFICATION_ONLY, Job, enqueue
    from tragwerk.store.queries.cases import CaseStore

    async def go() -> dict[str, float]:
        engine = create_engine(DSN, pool_size=2)
        try:
            async with engine.begin() as conn:
                location = await conn.scalar(
                    text(
                        "INSERT INTO locations (name, country_code, time_zone) "
                        "VALUES ('bench', 'DE', 'Europe/Berlin') RETURNING id"
                    )
                )
            user = await _user_id()
            stores = {
                "with event": CaseStore(engine, SilentReporter(), SlaPolicy()),
                "without": CaseStore(engine, SilentReporter(), SlaPolicy(), emit_events=False),
            }
            times: dict[str, list[float]] = {name: [] for name in stores}
            times["enqueue statement alone"] = []
            event = orjson.dumps({"user_id": user, "title": "latency"})
            for i in range(samples + 50):
                for name, store in stores.items():
                    started = time.perf_counter()
                    await store.create(
                        title="latency",
                        description="",
                        priority=Priority.NORMAL,
                        location_id=int(location),
                        reporter_id=user,
                        assignee_ids=[user],
                        principal=None,
                    )
                    if i >= 50:  # warm-up: connections, prepared statements
                        times[name].append(time.perf_counter() - started)
                async with engine.begin() as conn:
                    await conn.execute(text("SELECT 1"))
                    started = time.perf_counter()
                    await enqueue(conn, [Job(NOTIFICATION_ONLY, event, 200)])
                    if i >= 50:
                        times["enqueue statement alone"].append(time.perf_counter() - started)
        finally:
            await engine.dispose()
        result: dict[str, float] = {}
        for name, values in times.items():
            values.sort()
            result[f"{name} p50 ms"] = statistics.median(values) * 1000
            result[f"{name} p99 ms"] = values[int(len(values) * 0.99) - 1] * 1000
        return result

    return asyncio.run(go())


# --- main -----------------------------------------------------------------------------


def prepare() -> None:
    async def go() -> None:
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{DB}"')
        finally:
            await admin.close()
        from tragwerk.store.database import create_engine
        from tragwerk.store.migrate import upgrade

        engine = create_engine(DSN, pool_size=1)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()
        conn = await asyncpg.connect(DSN)
        try:
            await conn.execute(
                "INSERT INTO users (email, name, role_id) "
                "SELECT 'bench@example.test', 'Bench', id FROM roles WHERE name = 'agent'"
            )
        finally:
            await conn.close()

    asyncio.run(go())


def setups(only: set[str] | None) -> list[Setup]:
    all_setups = [
        tragwerk_setup("defaults (concurrency 50, batches of 50)"),
        tragwerk_setup(
            "tuned (--concurrency 1000 --batch 500)", "--concurrency", "1000", "--batch", "500"
        ),
        procrastinate_setup("defaults (concurrency 1)", 1),
        procrastinate_setup("tuned (concurrency 20)", 20),
        celery_setup("defaults (prefork pool, -c 1, prefetch 4)", ["-c", "1"]),
        celery_setup(
            "tuned (solo pool, prefetch 100)", ["-P", "solo", "--prefetch-multiplier", "100"]
        ),
        dramatiq_setup("defaults (1 process, 8 threads)", 8, None),
        dramatiq_setup("tuned (1 process, 16 threads, prefetch 1000)", 16, 1000),
    ]
    if only is None:
        return all_setups
    return [s for s in all_setups if s.name.split()[0].lower() in only]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--latency-samples", type=int, default=1000)
    parser.add_argument("--only", help="comma-separated: tragwerk, procrastinate, celery, dramatiq")
    parser.add_argument("--kinds", default="noop,realistic")
    args = parser.parse_args()
    only = set(args.only.lower().split(",")) if args.only else None
    if args.jobs < 5_000:
        # The start-up time subtracted varies by a few hundred milliseconds between
        # launches; with few jobs that noise is the figure (smoke runs only).
        print("bench.jobs: fewer than 5,000 jobs: the figures are start-up noise", file=sys.stderr)
    try:
        if only is None or only - {"tragwerk"}:
            import celery  # noqa: F401
            import dramatiq  # noqa: F401
            import procrastinate  # noqa: F401
    except ImportError:
        raise SystemExit(
            __doc__.split("\n\n")[0] + "\n\nInstall the peers first:\n" + __doc__.split("\n\n")[1]
        ) from None

    print(f"preparing database {DB} ...", file=sys.stderr)
    prepare()
    if only is None or only - {"tragwerk"}:
        run(PY, "-m", PROCRASTINATE, "schema", env=_peer_env())
    print(f"\nEnd-to-end throughput, {args.jobs:,} jobs, one worker process\n")
    print("| queue | setting | job | jobs/s | enqueue jobs/s | worker start-up s |")
    print("|---|---|---|---:|---:|---:|")
    for setup in setups(only):
        for kind in args.kinds.split(","):
            print(f"  running {setup.name} / {setup.setting} / {kind} ...", file=sys.stderr)
            figures = throughput(setup, kind, args.jobs)
            print(
                f"| {setup.name} | {setup.setting} | {kind} | {figures['jobs_per_s']:,.0f} "
                f"| {figures['enqueue_per_s']:,.0f} | {figures['startup_s']:.2f} |",
                flush=True,
            )
    if only is None or "tragwerk" in only:
        print(f"\nCase creation through CaseStore, {args.latency_samples} each, interleaved\n")
        for name, value in write_latency(args.latency_samples).items():
            print(f"- {name}: {value:.2f}")


if __name__ == "__main__":
    main()

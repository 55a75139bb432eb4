"""What the webhook delivery log costs a worker: webhook jobs per second with and
without recording each attempt, alternated in one run.

    python -m bench.deliveries [--jobs 3000] [--rounds 3]

A receiver process on loopback answers every POST with 200 at once (raw asyncio, kept
alive, pinned to CPU 1 with taskset when available); one in-process Worker
(concurrency 50, pinned nowhere: it shares CPU 0 and 1 with PostgreSQL) runs N
webhook jobs queued beforehand. "without": the jobs carry no delivery id, as jobs
queued before the log existed, so nothing is recorded; "with": each job's delivery
row exists and every attempt is recorded (one INSERT ... UPDATE statement). The
fan-out's extra INSERT of the delivery rows is not in this figure (it is in the
case_event job, not the webhook job).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import time

import asyncpg
import orjson

from tragwerk.jobs.worker import Worker
from tragwerk.monitoring.metrics import Metrics
from tragwerk.settings import Settings
from tragwerk.store.database import create_engine
from tragwerk.store.migrate import upgrade

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
DB = "tragwerk_bench_deliveries"
DSN = f"postgresql://postgres@127.0.0.1:5432/{DB}"

RECEIVER = r"""
import asyncio, sys
REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            writer.write(REPLY)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await server.serve_forever()
asyncio.run(main())
"""


async def reset_database() -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {DB}")
    finally:
        await admin.close()
    engine = create_engine(DSN, pool_size=1)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()


async def queue_jobs(conn: asyncpg.Connection, subscription: int, count: int, log: bool) -> None:
    body = orjson.dumps({"id": "x", "type": "case.created", "case": {"id": 1}}).decode()
    delivery_ids: list[int | None] = [None] * count
    if log:
        rows = await conn.fetch(
            "INSERT INTO webhook_deliveries (subscription_id, event_id, event_type, body) "
            "SELECT $1, 'e' || g || '-' || gen_random_uuid(), 'case.created', $2 "
            "FROM generate_series(1, $3) g RETURNING id",
            subscription,
            body,
            count,
        )
        delivery_ids = [r["id"] for r in rows]
    payloads = [
        orjson.dumps(
            {
                "event_id": f"event-{i}",
                "event_type": "case.created",
                "subscription_id": subscription,
                "body": body,
                "delivery_id": delivery_ids[i],
            }
        )
        for i in range(count)
    ]
    await conn.execute(
        "INSERT INTO pgqueuer (priority, entrypoint, payload, status) "
        "SELECT 200, 'webhook', p, 'queued' FROM unnest($1::bytea[]) p",
        payloads,
    )


async def until_empty(conn: asyncpg.Connection) -> None:
    """Poll the queue table until every job has run (checked every 20 ms)."""
    while True:
        if await conn.fetchval("SELECT count(*) FROM pgqueuer") == 0:
            return
        await asyncio.sleep(0.02)


async def run_once(settings: Settings, subscription: int, count: int, log: bool) -> float:
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute("DELETE FROM webhook_deliveries; DELETE FROM pgqueuer")
        await queue_jobs(conn, subscription, count, log)
        engine = create_engine(DSN, pool_size=10)
        worker = Worker(settings, DSN, engine, Metrics(), concurrency=50, sla_monitor=False)
        started = time.perf_counter()
        await worker.start()
        await until_empty(conn)
        elapsed = time.perf_counter() - started
        await worker.stop()
        await engine.dispose()
        if log:
            recorded = await conn.fetchval("SELECT count(*) FROM webhook_delivery_attempts")
            assert recorded == count, (recorded, count)
        return count / elapsed
    finally:
        await conn.close()


async def main_async(count: int, rounds: int, port: int) -> None:
    await reset_database()
    conn = await asyncpg.connect(DSN)
    try:
        subscription = await conn.fetchval(
            "INSERT INTO webhook_subscriptions (url, secret, event_types) "
            "VALUES ($1, 'bench-secret-0123456789', ARRAY['*']) RETURNING id",
            f"http://127.0.0.1:{port}/hook",
        )
    finally:
        await conn.close()
    settings = Settings(
        database_url=DSN, webhook_allow_hosts=("127.0.0.1",), worker_port=None, log_level="warning"
    )
    results: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(rounds):
        for log in (False, True):
            rate = await run_once(settings, subscription, count, log)
            results[log].append(rate)
            name = "with log" if log else "without"
            print(f"round {round_ + 1}: {name:>8}: {rate:7.0f} jobs/s", flush=True)
    without, with_log = statistics.median(results[False]), statistics.median(results[True])
    print(f"\nmedian of {rounds}, {count} webhook jobs each:")
    print(f"  without the delivery log: {without:7.0f} jobs/s")
    print(f"  with the delivery log:    {with_log:7.0f} jobs/s ({with_log / without:.0%})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pin = ["taskset", "-c", "1"] if shutil.which("taskset") else []
    receiver = subprocess.Popen(
        [*pin, sys.executable, "-c", RECEIVER, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().strip() == "ready"
        asyncio.run(main_async(args.jobs, args.rounds, port))
    finally:
        receiver.terminate()
        receiver.wait()


if __name__ == "__main__":
    main()

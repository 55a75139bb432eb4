"""Benchmark: `tragwerk worker --autoscale 1:4` against one fixed worker process, same backlog.

    python -m bench.autoscale [--jobs 40000] [--rounds 2]

The backlog and the measurement are bench/jobs.py's: N realistic jobs (each inserts a
notification row) are queued, then the worker command starts and runs them; jobs/s
is N over the time to the sentinel job queued last, less the command's start-up time
(the same run with no jobs). The queued jobs are of the bulk class; for the autoscaler
TRAGWERK_QUEUE_BUDGETS=bulk=2 and TRAGWERK_AUTOSCALE_INTERVAL_SECONDS=1, so that the
backlog is late after two seconds, as a real one would be after its budget.

SLA-job wait: 2 s after the worker command starts, one SLA job (priority 1000, the
same kind) is queued behind the backlog; its wait is from its queueing to its row.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import threading
import time

import asyncpg
import orjson

from bench import jobs as queue_bench
from bench.servers import ROOT

AUTOSCALE_ENV = {
    "TRAGWERK_QUEUE_BUDGETS": "bulk=2",
    "TRAGWERK_AUTOSCALE_INTERVAL_SECONDS": "1",
    "TRAGWERK_AUTOSCALE_COOLDOWN_SECONDS": "60",
}


def _sla_job_wait(delay: float, result: dict[str, float]) -> None:
    """Queue one SLA job `delay` s from now; record how long it waited for its run."""
    from tragwerk.store.database import create_engine
    from tragwerk.store.hot import transaction
    from tragwerk.store.outbox import NOTIFICATION_ONLY, Job, enqueue_in

    async def go() -> None:
        await asyncio.sleep(delay)
        engine = create_engine(queue_bench.DSN, pool_size=1)
        user = await queue_bench._user_id()
        payload = orjson.dumps({"user_id": user, "title": "sla-probe"})
        try:
            queued = time.time()
            async with transaction(engine) as tx:
                await enqueue_in(tx, [Job(NOTIFICATION_ONLY, payload, 1000)])
        finally:
            await engine.dispose()
        conn = await asyncpg.connect(queue_bench.DSN)
        try:
            for _ in range(6000):
                done = await conn.fetchval(
                    "SELECT extract(epoch FROM created_at) FROM notifications"
                    " WHERE title = 'sla-probe'"
                )
                if done is not None:
                    result["sla_wait_s"] = float(done) - queued
                    return
                await asyncio.sleep(0.01)
        finally:
            await conn.close()

    asyncio.run(go())


def measure(setup: queue_bench.Setup, count: int) -> dict[str, float]:
    _, startup = queue_bench.time_to_sentinel(setup, "notification", 0, timeout=60)
    probe: dict[str, float] = {}
    threads: list[threading.Thread] = []

    def enqueue(kind: str, n: int) -> None:
        setup.enqueue(kind, n)
        # The worker command starts right after this: the probe comes 2 s into its work.
        thread = threading.Thread(target=_sla_job_wait, args=(2.0 + startup, probe))
        thread.start()
        threads.append(thread)

    probed = dataclasses.replace(setup, enqueue=enqueue)
    launched = time.time()
    _, total = queue_bench.time_to_sentinel(probed, "notification", count, timeout=900)
    for thread in threads:
        thread.join(timeout=120)
    work = max(total - startup, 1e-3)
    processes = asyncio.run(_worker_processes_since(launched))
    return {
        "startup_s": startup,
        "drain_s": work,
        "jobs_per_s": count / work,
        "worker_processes": processes,
        **probe,
    }


async def _worker_processes_since(epoch: float) -> float:
    """Worker processes that recorded themselves (the instances table) since `epoch`."""
    conn = await asyncpg.connect(queue_bench.DSN)
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM instances"
            " WHERE role = 'worker' AND started_at >= to_timestamp($1)",
            epoch,
        )
    finally:
        await conn.close()
    return float(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=40_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    queue_bench.prepare()
    contenders = {
        "one process": queue_bench.tragwerk_setup("fixed", "--concurrency", "50"),
        "--autoscale 1:4": queue_bench.tragwerk_setup(
            "autoscale", "--autoscale", "1:4", "--concurrency", "50"
        ),
    }
    contenders["--autoscale 1:4"].env.update(AUTOSCALE_ENV)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in contenders}
    for round_ in range(args.rounds):
        for name, setup in contenders.items():
            print(f"[bench] round {round_ + 1}: {name}", flush=True)
            results[name].append(measure(setup, args.jobs))
    print(
        "| worker command | jobs/s (each round) | median | SLA job waited, s (each round)"
        " | worker processes (each round) |"
    )
    print("|---|---|---:|---|---|")
    for name, runs in results.items():
        rates = [r["jobs_per_s"] for r in runs]
        waits = [r.get("sla_wait_s", float("nan")) for r in runs]
        print(
            f"| `{name}` | {', '.join(f'{r:,.0f}' for r in rates)} |"
            f" {statistics.median(rates):,.0f} | {', '.join(f'{w:.2f}' for w in waits)} |"
            f" {', '.join(str(int(r.get('worker_processes', 0))) for r in runs)} |"
        )
    out = ROOT / "bench" / "results" / "autoscale.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

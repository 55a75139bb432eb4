"""Benchmark: case writes (create, status change) per second per core, latency and API
CPU per request; today's path against the earlier one and against the ceiling.

    python -m bench.case_writes                          # 10 s per figure
    python -m bench.case_writes --duration 5 --connections 1,8

Three contenders, one after the other in the same run:

- `tragwerk`: `tragwerk api` as it serves (granian, one worker process), its writes on
  asyncpg (store.queries.case_writes);
- `before`: the same app with the writes as they were (bench.legacy_case_writes:
  SQLAlchemy, a statement per check and a read-back);
- `ceiling`: the same store calls as `tragwerk` makes, from plain asyncio tasks in one
  process, no HTTP: the statements alone, what the API could reach if serving cost
  nothing.

The API process (and the ceiling's) is pinned to core 0, wrk to core 1; PostgreSQL
(TRAGWERK_BENCH_DATABASE_URL, default the bench database of bench.list_cases) runs
where it is scheduled. API CPU per request is the server's CPU time (main and worker
process, from /proc) over the requests it answered; its inverse, requests per API
core-second, is the throughput per core of the API on a machine where PostgreSQL and
the load generator do not share its core. Creates post one case with one
assignee; status changes move fresh cases (made for each figure) from open to
in_progress, each case once. Results: a table on stdout and
bench/results/case_writes.json. `--table FILE` prints the table of a results file again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench import servers
from bench.list_cases import DEFAULT_URL, SEED_CASES, prepare, say

HERE = Path(__file__).parent
PORT = 8250
CREATE_BODY = {"title": "written by the benchmark", "description": "", "priority": "normal"}
STATUS_BODY = json.dumps({"status": "in_progress", "version": 1})


async def _fixture(url: str) -> tuple[int, int]:
    """A location and an active user to create cases with."""
    conn = await asyncpg.connect(url)
    try:
        location = await conn.fetchval("SELECT id FROM locations ORDER BY id LIMIT 1")
        user = await conn.fetchval("SELECT id FROM users WHERE active ORDER BY id LIMIT 1")
    finally:
        await conn.close()
    return int(location), int(user)


async def _fresh_cases(url: str, count: int, location: int, user: int) -> list[int]:
    """`count` new open cases at version 1, for status changes."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "INSERT INTO cases (title, location_id, reporter_id, sla_due_at) "
            "SELECT 'status bench', $1, $2, now() + interval '72 hours' "
            "FROM generate_series(1, $3) RETURNING id",
            location,
            user,
            count,
        )
        await conn.execute("ANALYZE cases")
    finally:
        await conn.close()
    return [r["id"] for r in rows]


def _figure(result: dict[str, Any], cpu: float) -> dict[str, float]:
    answered = max(1, result["requests"])
    return {
        "per_s": result["rps"],
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "cpu_ms": cpu / answered * 1000,
        "errors": float(
            sum(result[k] for k in ("status_errors", "connect_errors", "read_errors", "timeouts"))
        ),
    }


def _serve(contender: str, url: str) -> Any:
    env = {
        "TRAGWERK_DATABASE_URL": url,
        "TRAGWERK_LIMIT_EXTERNAL": "100000000/minute",
        "TRAGWERK_LIMIT_INTERNAL": "100000000/minute",
        "TRAGWERK_BACKPRESSURE": "256",
    }
    target = "bench.legacy_case_writes:app_from_env" if contender == "before" else "-"
    return servers.start(["bench.case_writes", "--serve", target], PORT, env)


def _over_http(contender: str, url: str, token: str, args: argparse.Namespace,
               location: int, user: int, work: Path) -> dict[str, dict[str, float]]:  # fmt: skip
    figures: dict[str, dict[str, float]] = {}
    proc = _serve(contender, url)
    try:
        body = json.dumps({**CREATE_BODY, "location_id": location, "assignee_ids": [user]})
        servers.wrk(PORT, 4, 2, METHOD="POST", BODY=body, TARGET_PATH="/v1/cases", TOKEN=token)
        for connections in args.connections:
            say(f"{contender}: creates, {connections} connections")
            before = servers.cpu_seconds(proc.pid)
            result = servers.wrk(PORT, connections, args.duration, METHOD="POST", BODY=body,
                                 TARGET_PATH="/v1/cases", TOKEN=token)  # fmt: skip
            figures[f"create c{connections}"] = _figure(
                result, servers.cpu_seconds(proc.pid) - before
            )
            say(f"{contender}: status changes, {connections} connections")
            ids = asyncio.run(_fresh_cases(url, args.status_cases, location, user))
            paths = work / "status-paths.txt"
            paths.write_text("".join(f"/v1/cases/{i}/status\n" for i in ids))
            before = servers.cpu_seconds(proc.pid)
            result = servers.wrk(PORT, connections, args.duration, METHOD="POST",
                                 BODY=STATUS_BODY, PATHS_FILE=str(paths), SEQUENTIAL="1",
                                 TOKEN=token)  # fmt: skip
            if result["requests"] > len(ids):
                say(f"more requests than fresh cases ({len(ids)}): raise --status-cases")
            figures[f"status c{connections}"] = _figure(
                result, servers.cpu_seconds(proc.pid) - before
            )
    finally:
        servers.stop(proc)
    return figures


# --- the ceiling: the store's calls without HTTP ----------------------------------------


async def _ceiling_run(url: str, kind: str, connections: int, seconds: float,
                       location: int, user: int) -> dict[str, float]:  # fmt: skip
    from tragwerk.domain.cases import Priority, SlaPolicy, Status
    from tragwerk.domain.observability import SilentReporter
    from tragwerk.store.database import create_engine
    from tragwerk.store.queries.cases import CaseStore

    ids = await _fresh_cases(url, 60_000, location, user) if kind == "status" else []
    engine = create_engine(url, pool_size=connections)
    store = CaseStore(engine, SilentReporter(), SlaPolicy())
    latencies: list[float] = []
    stop_at = time.monotonic() + seconds
    pending = iter(ids)

    async def one() -> None:
        if kind == "create":
            await store.create(title="ceiling", description="", priority=Priority.NORMAL,
                               location_id=location, reporter_id=user, assignee_ids=[user],
                               principal=None)  # fmt: skip
        else:
            await store.change_status(next(pending), 1, Status.IN_PROGRESS, None)

    async def client() -> None:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            await one()
            latencies.append(time.perf_counter() - started)

    try:
        for _ in range(50):  # warm-up: connections, prepared statements
            await one()
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client() for _ in range(connections)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await engine.dispose()
    latencies.sort()
    return {
        "per_s": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
        "cpu_ms": cpu / len(latencies) * 1000,
        "errors": 0.0,
    }


def _ceiling(url: str, args: argparse.Namespace, location: int, user: int) -> dict[str, Any]:
    figures = {}
    os.sched_setaffinity(0, {0})
    try:
        for connections in args.connections:
            for kind in ("create", "status"):
                say(f"ceiling: {kind}, {connections} connections")
                figures[f"{kind} c{connections}"] = asyncio.run(
                    _ceiling_run(url, kind, connections, args.duration, location, user)
                )
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return figures


# --- main ---------------------------------------------------------------------------------


def _serve_here(target: str, port: int) -> None:
    """The server process of one contender (called as `--serve TARGET --port P`)."""
    from tragwerk.api import serving
    from tragwerk.monitoring.logging import configure_logging
    from tragwerk.settings import Settings

    settings = Settings.from_env().with_overrides(port=port)
    configure_logging(settings.log_level)
    if target == "-":
        raise SystemExit(serving.serve(settings, workers=1))
    serving.build_server(settings, workers=1, with_worker=False, target=target).serve()


def _table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        "| write | contender | per s | p50 ms | p99 ms | API CPU ms/req | per API core-second |"
        " errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    keys = list(next(iter(results.values())))
    for key in keys:
        for contender, figures in results.items():
            f = figures.get(key)
            if f is None:
                continue
            lines.append(
                f"| {key.replace(' c', ', ')} conn. | {contender} | {f['per_s']:.0f} |"
                f" {f['p50_ms']:.1f} | {f['p99_ms']:.1f} | {f['cpu_ms']:.2f} |"
                f" {1000 / f['cpu_ms']:.0f} | {f['errors']:.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per figure")
    parser.add_argument("--connections", default="1,8,32", help="comma-separated")
    parser.add_argument("--status-cases", type=int, default=40_000,
                        help="fresh cases per status-change figure")  # fmt: skip
    parser.add_argument("--only", choices=["tragwerk", "before", "ceiling"], action="append")
    parser.add_argument("--table", type=Path, help="print the table of a results file")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=PORT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve_here(args.serve, args.port)
        return
    if args.table:
        print(_table(json.loads(args.table.read_text())))
        return
    args.connections = [int(c) for c in args.connections.split(",")]
    url = os.environ.get("TRAGWERK_BENCH_DATABASE_URL", DEFAULT_URL)
    token, _ = asyncio.run(prepare(url, SEED_CASES))
    location, user = asyncio.run(_fixture(url))
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as work:
        for contender in args.only or ["tragwerk", "before", "ceiling"]:
            if contender == "ceiling":
                results[contender] = _ceiling(url, args, location, user)
            else:
                results[contender] = _over_http(
                    contender, url, token, args, location, user, Path(work)
                )
    print(_table(results))
    out = HERE / "results" / "case_writes.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    say(f"written to {out}")


if __name__ == "__main__":
    main()

"""Benchmark: reference data through the full stack, cache on and off, beside bare apps.

    python -m bench.reference_cache            # server on core 0, wrk on core 1

In one run, 64 connections, the same uvicorn settings for every contender:
GET /v1/locations (300 locations) and GET /v1/countries (249) from tragwerk with the
cache on and off (authenticated), a bare FastAPI endpoint with a response model and a
bare Starlette app serving the same bytes. Then, in-process, the cost of
authentication with the token cache, and over two API processes, the time from a
raw SQL commit until both serve the new value. Needs wrk and PostgreSQL
(TRAGWERK_BENCH_DATABASE_URL, default the listing benchmark's database).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from bench import servers
from bench.list_cases import DEFAULT_URL, HERE, SEED_CASES, prepare, run_wrk, say
from bench.servers import stop

LOCATIONS_WANTED = 300


async def ensure_locations(url: str) -> None:
    parsed = make_url(url)
    conn = await asyncpg.connect(
        user=parsed.username, host=parsed.host, port=parsed.port, database=parsed.database
    )
    try:
        have = await conn.fetchval("SELECT count(*) FROM locations")
        if have < LOCATIONS_WANTED:
            await conn.executemany(
                "INSERT INTO locations (name, country_code, time_zone) VALUES ($1, 'DE', "
                "'Europe/Berlin')",
                [(f"Bench site {i}",) for i in range(LOCATIONS_WANTED - have)],
            )
    finally:
        await conn.close()


def start(contender: str, url: str, port: int, cache: str = "on") -> subprocess.Popen[bytes]:
    # Rate limiting stays on (it is part of the stack), with a limit the load never reaches.
    env = {
        "TRAGWERK_DATABASE_URL": url,
        "TRAGWERK_CACHE": cache,
        "TRAGWERK_LIMIT_EXTERNAL": "100000000/minute",
    }
    return servers.start(
        ["bench.serve", contender],
        port,
        env,
        ready_path="/v1/countries" if contender != "tragwerk" else "/health/ready",
    )


async def auth_cost(url: str, token: str, n: int = 20_000) -> dict[str, float]:
    """Microseconds per authentication: token cache hit, and the database lookup."""
    from tragwerk.bootstrap import build_services
    from tragwerk.settings import Settings

    services = build_services(Settings(database_url=url), url)
    await services.start()
    try:
        reads = services.reads
        await reads.principal(token)
        started = time.perf_counter()
        for _ in range(n):
            await reads.principal(token)
        cached = (time.perf_counter() - started) / n * 1e6
        started = time.perf_counter()
        for _ in range(n // 10):
            await services.directory.authenticate(token)
        uncached = (time.perf_counter() - started) / (n // 10) * 1e6
    finally:
        await services.stop()
    return {"cached_us": cached, "database_us": uncached}


async def convergence(url: str, bases: list[str], token: str, rounds: int) -> list[float]:
    """Seconds from a raw SQL commit until every instance serves the new value."""
    parsed = make_url(url)
    conn = await asyncpg.connect(
        user=parsed.username, host=parsed.host, port=parsed.port, database=parsed.database
    )
    headers = {"Authorization": f"Bearer {token}"}
    results = []
    try:
        loc = await conn.fetchval("SELECT min(id) FROM locations")
        async with httpx.AsyncClient(headers=headers) as client:

            async def watch(base: str, name: str, committed: list[float]) -> float:
                while True:
                    r = await client.get(f"{base}/v1/locations/{loc}")
                    if r.json()["name"] == name and committed:
                        return time.monotonic() - committed[0]

            for i in range(rounds):
                for base in bases:  # cached everywhere before the change
                    await client.get(f"{base}/v1/locations/{loc}")
                name = f"renamed {i} {time.time()}"
                committed: list[float] = []
                watchers = [asyncio.ensure_future(watch(b, name, committed)) for b in bases]
                await conn.execute("UPDATE locations SET name = $1 WHERE id = $2", name, loc)
                committed.append(time.monotonic())
                results.append(max(await asyncio.wait_for(asyncio.gather(*watchers), 5)))
    finally:
        await conn.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=50, help="convergence measurements")
    parser.add_argument("--port", type=int, default=8200)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    url = os.environ.get("TRAGWERK_BENCH_DATABASE_URL", DEFAULT_URL)
    token, _ = asyncio.run(prepare(url, SEED_CASES))
    asyncio.run(ensure_locations(url))

    workdir = Path(tempfile.mkdtemp(prefix="tragwerk-bench-"))
    contenders = [
        ("tragwerk, cache on", "tragwerk", "on"),
        ("tragwerk, cache off", "tragwerk", "off"),
        ("bare FastAPI, response model", "fastapi", "on"),
        ("bare Starlette, constant bytes", "starlette", "on"),
    ]
    results: list[dict[str, Any]] = []
    try:
        for path in ("/v1/locations", "/v1/countries"):
            paths = workdir / "paths.txt"
            paths.write_text(path + "\n")
            for label, contender, cache in contenders:
                proc = start(contender, url, args.port, cache)
                try:
                    say(f"{path} | {label}")
                    if args.warmup:
                        run_wrk(args.port, token, paths, args.connections, args.warmup, True)
                    result = run_wrk(args.port, token, paths, args.connections, args.duration, True)
                finally:
                    stop(proc)
                result.update(path=path, contender=label)
                results.append(result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    say("authentication cost, in-process")
    auth = asyncio.run(auth_cost(url, token))
    say("convergence over two API processes")
    ports = [args.port, args.port + 1]
    procs = [start("tragwerk", url, p) for p in ports]
    try:
        seconds = asyncio.run(
            convergence(url, [f"http://127.0.0.1:{p}" for p in ports], token, args.rounds)
        )
    finally:
        for proc in procs:
            stop(proc)

    print_report(results, auth, seconds)
    out = HERE / "results" / "reference_cache.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {"args": vars(args), "results": results, "auth": auth, "convergence_seconds": seconds},
            indent=2,
        )
    )
    say(f"raw results in {out}")
    return 0


def print_report(
    results: list[dict[str, Any]], auth: dict[str, float], seconds: list[float]
) -> None:
    print("| endpoint | contender | req/s | p50 ms | p99 ms | errors |")
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        errors = r["status_errors"] + r["connect_errors"] + r["read_errors"] + r["timeouts"]
        print(
            f"| {r['path']} | {r['contender']} | {r['rps']:,.0f} | {r['p50_us'] / 1000:.1f} | "
            f"{r['p99_us'] / 1000:.1f} | {errors} |"
        )
    print()
    for path in ("/v1/locations", "/v1/countries"):
        by = {r["contender"]: r["rps"] for r in results if r["path"] == path}
        on = by["tragwerk, cache on"]
        print(
            f"{path}: cache on / off = {on / by['tragwerk, cache off']:.1f}x; "
            f"on / bare FastAPI = {on / by['bare FastAPI, response model']:.0%}; "
            f"on / bare Starlette = {on / by['bare Starlette, constant bytes']:.0%}"
        )
    print()
    print(
        f"authentication: {auth['cached_us']:.1f} us with the token cache, "
        f"{auth['database_us']:.0f} us from the database"
    )
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(
        f"convergence over 2 processes, {len(seconds)} changes: "
        f"p50 {statistics.median(seconds) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {max(seconds) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    raise SystemExit(main())

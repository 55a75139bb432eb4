"""Benchmark: GET /v1/cases on 1,000,000 cases, keyset vs OFFSET vs N+1, at 8 and 32 connections.

    python -m bench.list_cases                # seeds the bench database on first run
    python -m bench.list_cases --duration 20 --pin

Needs wrk (Debian package `wrk`) and a PostgreSQL server (TRAGWERK_BENCH_DATABASE_URL,
default postgresql://postgres@127.0.0.1:5432/tragwerk_bench; the database is created).
The server runs `bench.peers` (tragwerk's app plus the two slower variants) in one
uvicorn process; with --pin the server is pinned to core 0 and wrk to core 1.
Results are printed as a table and written to bench/results/list_cases.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from bench import servers
from tragwerk.domain.cases import SlaPolicy
from tragwerk.store import cursor
from tragwerk.store.database import create_engine
from tragwerk.store.migrate import upgrade
from tragwerk.store.queries.directory import DirectoryStore
from tragwerk.store.seed import seed

HERE = Path(__file__).parent
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/tragwerk_bench"
# At least this many cases (and their users) for benchmarks that need a populated
# database but not the listing benchmark's million; a larger seed is reused as it is.
SEED_CASES = 10_000
PAGE = 50


def say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


async def prepare(url: str, cases: int) -> tuple[str, list[int]]:
    """Create, migrate and seed the database as needed; return a token and locations."""
    parsed = make_url(url)
    admin = await asyncpg.connect(
        user=parsed.username, host=parsed.host, port=parsed.port, database="postgres"
    )
    try:
        exists = await admin.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", parsed.database
        )
        if not exists:
            await admin.execute(f'CREATE DATABASE "{parsed.database}"')
    finally:
        await admin.close()
    engine = create_engine(url, pool_size=2, max_overflow=0)
    try:
        await upgrade(engine)
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            have = await raw.fetchval("SELECT count(*) FROM cases")
        if have < cases:
            say(f"seeding {cases - have:,} cases (once; later runs reuse them)")
            started = time.monotonic()
            await seed(engine, cases - have, sla=SlaPolicy())
            say(f"seeded in {time.monotonic() - started:.0f} s")
        directory = DirectoryStore(engine, _silent())
        async with engine.begin() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            user_id = await raw.fetchval(
                "SELECT id FROM users WHERE email LIKE '%@seed.tragwerk.test' ORDER BY id LIMIT 1"
            )
            token, _ = await directory.create_token(
                name="bench", user_id=user_id, service_client_id=None, expires_at=None, conn=conn
            )
            # Locations that have cases (other benchmarks add empty ones).
            locations = [
                r["id"]
                for r in await raw.fetch(
                    "SELECT id FROM locations l WHERE EXISTS "
                    "(SELECT 1 FROM cases c WHERE c.location_id = l.id) ORDER BY id"
                )
            ]
    finally:
        await engine.dispose()
    return token, locations


def _silent() -> Any:
    from tragwerk.domain.observability import SilentReporter

    return SilentReporter()


async def page_starts(url: str, where: str, args: list[Any]) -> list[tuple[int, str | None]]:
    """(offset, cursor) of every page of a filtered listing, newest first."""
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            keys = await raw.fetch(
                f"SELECT created_at, id FROM cases WHERE {where} ORDER BY created_at DESC, id DESC",
                *args,
            )
    finally:
        await engine.dispose()
    pages: list[tuple[int, str | None]] = [(0, None)]
    for offset in range(PAGE, len(keys), PAGE):
        last = keys[offset - 1]
        pages.append((offset, cursor.encode("created", last["created_at"], last["id"])))
    return pages


def write_paths(
    directory: Path, name: str, query: str, pages: list[tuple[int, str | None]]
) -> dict[str, Path]:
    variants = {
        "keyset (tragwerk)": lambda off, cur: (
            f"/v1/cases?{query}&limit={PAGE}" + (f"&cursor={cur}" if cur else "")
        ),
        "OFFSET": lambda off, cur: f"/bench/offset/cases?{query}&limit={PAGE}&offset={off}",
        "N+1 assignees": lambda off, cur: (
            f"/bench/n-plus-one/cases?{query}&limit={PAGE}" + (f"&cursor={cur}" if cur else "")
        ),
    }
    files = {}
    for variant, make in variants.items():
        path = directory / f"{name}-{variant.split()[0].lower()}.txt"
        path.write_text("\n".join(make(off, cur) for off, cur in pages) + "\n")
        files[variant] = path
    return files


def start_server(url: str, port: int, pin: bool) -> subprocess.Popen[bytes]:
    # Rate limiting stays on (it is part of the stack), with a limit the load never reaches.
    env = {
        "TRAGWERK_DATABASE_URL": url,
        "TRAGWERK_PAGE_SIZE_MAX": "200",
        "TRAGWERK_LIMIT_EXTERNAL": "100000000/minute",
    }
    return servers.start(["bench.peers"], port, env, pin=pin)


def check_same_answers(port: int, token: str, files: dict[str, Path]) -> None:
    """All variants must return the same cases for the same page, or the comparison is void."""
    headers = {"Authorization": f"Bearer {token}"}
    lines = {v: p.read_text().splitlines() for v, p in files.items()}
    rng = random.Random(3)
    for index in rng.sample(range(len(next(iter(lines.values())))), 5):
        answers = []
        for variant in files:
            r = httpx.get(f"http://127.0.0.1:{port}{lines[variant][index]}", headers=headers)
            r.raise_for_status()
            answers.append([(c["id"], len(c["assignees"])) for c in r.json()["items"]])
        assert all(a == answers[0] for a in answers), f"variants disagree on page {index}"


def run_wrk(
    port: int, token: str, paths: Path, connections: int, seconds: int, pin: bool
) -> dict[str, Any]:
    return servers.wrk(port, connections, seconds, pin=pin, PATHS_FILE=str(paths), TOKEN=token)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--duration", type=int, default=15, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--connections", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--pin", action="store_true", help="server on core 0, wrk on core 1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    url = os.environ.get("TRAGWERK_BENCH_DATABASE_URL", DEFAULT_URL)
    token, locations = asyncio.run(prepare(url, args.cases))
    rng = random.Random(11)
    chosen = rng.sample(locations, 8)

    workdir = Path(tempfile.mkdtemp(prefix="tragwerk-bench-"))
    listings: dict[str, dict[str, Path]] = {}
    say("computing page cursors")
    pages_a: list[tuple[int, str | None]] = []
    query_lines: dict[str, list[str]] = {}
    for loc in chosen:
        starts = asyncio.run(page_starts(url, "status = 'open' AND location_id = $1", [loc]))
        for variant, path in write_paths(
            workdir, f"loc{loc}", f"status=open&location_id={loc}", starts
        ).items():
            query_lines.setdefault(variant, []).extend(path.read_text().splitlines())
        pages_a += starts
    combined = {}
    for variant, lines in query_lines.items():
        path = workdir / f"status-location-{variant.split()[0].lower()}.txt"
        path.write_text("\n".join(lines) + "\n")
        combined[variant] = path
    listings["status=open & location (every page of 8 locations)"] = combined
    starts_b = asyncio.run(page_starts(url, "status = 'open'", []))
    listings[f"status=open (every page, 1 to {len(starts_b)})"] = write_paths(
        workdir, "status", "status=open", starts_b
    )

    server = start_server(url, args.port, args.pin)
    results: list[dict[str, Any]] = []
    try:
        for listing, files in listings.items():
            check_same_answers(args.port, token, files)
            for connections in args.connections:
                for variant, paths in files.items():
                    say(f"{listing} | {variant} | {connections} connections")
                    if args.warmup:
                        run_wrk(args.port, token, paths, connections, args.warmup, args.pin)
                    result = run_wrk(args.port, token, paths, connections, args.duration, args.pin)
                    result.update(listing=listing, variant=variant, connections=connections)
                    results.append(result)
    finally:
        servers.stop(server)
        shutil.rmtree(workdir, ignore_errors=True)

    print_table(results)
    out = HERE / "results" / "list_cases.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    say(f"raw results in {out}")
    return 0


def print_table(results: list[dict[str, Any]]) -> None:
    print("| listing | conns | variant | req/s | p50 ms | p99 ms | vs keyset (req/s) | errors |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in results:
        base = next(
            x
            for x in results
            if x["listing"] == r["listing"]
            and x["connections"] == r["connections"]
            and x["variant"] == "keyset (tragwerk)"
        )
        errors = r["status_errors"] + r["connect_errors"] + r["read_errors"] + r["timeouts"]
        print(
            f"| {r['listing']} | {r['connections']} | {r['variant']} | {r['rps']:,.0f} | "
            f"{r['p50_us'] / 1000:.1f} | {r['p99_us'] / 1000:.1f} | "
            f"{r['rps'] / base['rps']:.2f}x | {errors} |"
        )


if __name__ == "__main__":
    raise SystemExit(main())

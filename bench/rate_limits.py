"""Benchmark: what rate limiting costs, how exact a shared budget is, and floods.

    python -m bench.rate_limits

1. Throughput of GET /v1/locations (cached) with the limiter off, on memory and on
   Redis: one uvicorn process on core 0, wrk on core 1, 64 connections, requests
   spread over 1,000 tokens (1,000 clients, each with its own 1,200/minute budget).
   Then off and on Redis with two instances, both on core 0, one wrk each with 32
   connections, so that every client's requests spread over both instances. All
   five in turn, `--rounds` times; medians reported, with the server's CPU per request.
2. Side by side: "off" and each limiter (memory, Redis, Redis on two instances beside
   two "off" ones) running at the same time on core 0, 32 connections to each side;
   each side's CPU per request from /proc. Drift of the machine's speed touches both
   alike. `--rounds` rounds, medians.
3. Accuracy: two API processes sharing Redis; one client alternates between them
   within one window; allowed requests against its limit.
4. Flood: ten well-behaved clients (2.5 requests/s each, wrk with a pause between
   requests) beside one client at 20x its limit; their p99 without and with it,
   `--rounds` pairs, medians reported.
5. Saturation: bulk list traffic at 64 connections against max 8 in flight, and an
   internal service at 20 requests/s: the share of internal requests served.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median
from typing import Any

import httpx
import redis.asyncio as aioredis

from bench import servers
from bench.list_cases import DEFAULT_URL, HERE, SEED_CASES, prepare, say
from bench.servers import stop

PORT = 8300
PARTS = ("throughput", "side-by-side", "accuracy", "flood", "saturation")
REDIS = "redis://127.0.0.1:6379/0"


def start(port: int, **env: str) -> subprocess.Popen[bytes]:
    return servers.start(["bench.serve", "tragwerk"], port, env)


async def make_tokens(url: str, count: int, internal: bool = False) -> list[str]:
    from tragwerk.domain.observability import SilentReporter
    from tragwerk.store.database import create_engine
    from tragwerk.store.queries.directory import DirectoryStore

    engine = create_engine(url, pool_size=1)
    try:
        directory = DirectoryStore(engine, SilentReporter())
        async with engine.begin() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            user_id = await raw.fetchval(
                "SELECT id FROM users WHERE email LIKE '%@seed.tragwerk.test' ORDER BY id LIMIT 1"
            )
            owner: dict[str, Any] = {"user_id": user_id, "service_client_id": None}
            if internal:
                role = await raw.fetchval("SELECT id FROM roles WHERE name = 'agent'")
                client_id = await raw.fetchval(
                    "INSERT INTO service_clients (name, role_id, internal) VALUES ($1, $2, true) "
                    "RETURNING id",
                    f"bench-{uuid.uuid4().hex[:8]}",
                    role,
                )
                owner = {"user_id": None, "service_client_id": client_id}
            tokens = []
            for _ in range(count):
                token, _row = await directory.create_token(
                    name="bench", expires_at=None, conn=conn, **owner
                )
                tokens.append(token)
    finally:
        await engine.dispose()
    return tokens


def wrk(port: int, tokens_file: Path, path: str, connections: int, seconds: int) -> dict[str, Any]:
    return servers.wrk(port, connections, seconds, TOKENS_FILE=str(tokens_file), TARGET_PATH=path)


def throughput(url: str, tokens_file: Path, seconds: int, rounds: int) -> list[dict[str, Any]]:
    """The cached endpoint with the limiter off, on memory and on Redis; then off and
    on Redis with two instances sharing core 0 (and Redis), each loaded by its own wrk
    with half the connections: every client's requests then spread over both.

    All five run once per round, in turn, and each configuration's share of "off" is
    taken within its round: this machine's speed drifts by more than the limiter
    costs, so only figures measured side by side compare. The report gives each
    configuration's median over the rounds, and the server's CPU time per request.
    """
    off = {"TRAGWERK_RATE_LIMIT": "off", "TRAGWERK_MAX_IN_FLIGHT": "0"}
    configs: list[tuple[str, int, dict[str, str]]] = [
        ("limiter off", 1, off),
        ("memory", 1, {}),
        ("redis", 1, {"TRAGWERK_REDIS_URL": REDIS}),
        ("limiter off, two instances", 2, off),
        ("redis, two instances", 2, {"TRAGWERK_REDIS_URL": REDIS}),
    ]
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _n, _env in configs}
    for round_ in range(1, rounds + 1):
        baseline: dict[int, float] = {}
        for label, instances, env in configs:
            namespace = {"TRAGWERK_REDIS_NAMESPACE": f"bench-{uuid.uuid4().hex}"}
            ports = [PORT + n for n in range(instances)]
            procs = [start(port, TRAGWERK_DATABASE_URL=url, **env, **namespace) for port in ports]
            try:
                say(f"throughput | round {round_}/{rounds} | {label}")
                load(ports, tokens_file, 3)
                cpu_before = sum(servers.cpu_seconds(proc.pid) for proc in procs)
                result = load(ports, tokens_file, seconds)
                cpu = sum(servers.cpu_seconds(proc.pid) for proc in procs) - cpu_before
            finally:
                for proc in procs:
                    stop(proc)
            result["cpu_us_per_request"] = 1e6 * cpu / max(1, result["requests"])
            baseline.setdefault(instances, result["rps"])  # the first of each shape is "off"
            result["vs_off"] = result["rps"] / baseline[instances]
            runs[label].append(result)
    results = []
    for label, instances, _env in configs:
        rows = runs[label]
        results.append(
            {
                "config": label,
                "instances": instances,
                "rounds": rows,
                "rps": median(r["rps"] for r in rows),
                "vs_off": median(r["vs_off"] for r in rows),
                "cpu_us_per_request": median(r["cpu_us_per_request"] for r in rows),
                "p50_us": median(r["p50_us"] for r in rows),
                "p99_us": median(r["p99_us"] for r in rows),
                "status_errors": sum(r["status_errors"] for r in rows),
            }
        )
    return results


def side_by_side(url: str, tokens_file: Path, seconds: int, rounds: int) -> list[dict[str, Any]]:
    """Each limiter beside "off", both running at once on core 0, one wrk per server.

    The servers share the same core through the same seconds, so a drift of the
    machine's speed (1.5x within minutes here) touches both alike; each one's CPU
    time per request (user + system, from /proc) then compares directly. "Throughput
    at equal CPU" is off's CPU per request over the limiter's: the share of off's
    throughput the limiter keeps when both get the same processor. With two
    instances, two "off" servers run beside two sharing a Redis budget, every wrk
    spreading all clients' requests over its pair.
    """
    off = {"TRAGWERK_RATE_LIMIT": "off", "TRAGWERK_MAX_IN_FLIGHT": "0"}
    configs: list[tuple[str, int, dict[str, str]]] = [
        ("memory", 1, {}),
        ("redis", 1, {"TRAGWERK_REDIS_URL": REDIS}),
        ("redis, two instances", 2, {"TRAGWERK_REDIS_URL": REDIS}),
    ]
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _n, _env in configs}
    for round_ in range(1, rounds + 1):
        for label, instances, env in configs:
            namespace = {"TRAGWERK_REDIS_NAMESPACE": f"bench-{uuid.uuid4().hex}"}
            ports = [PORT + n for n in range(2 * instances)]  # "off" first, then the limiter
            procs = [start(port, TRAGWERK_DATABASE_URL=url, **off) for port in ports[:instances]]
            try:
                procs += [
                    start(port, TRAGWERK_DATABASE_URL=url, **env, **namespace)
                    for port in ports[instances:]
                ]
                say(f"side by side | round {round_}/{rounds} | off and {label}")
                # Warm for as long as measured: with requests spread at random over 1,000
                # clients, each instance sees its last new client (and reserves its first
                # batch, in the request path) only after some thousands of requests, which
                # two instances sharing a core take seconds to serve.
                load(ports, tokens_file, seconds)
                before = [servers.cpu_seconds(proc.pid) for proc in procs]
                connections = 32 // instances
                with ThreadPoolExecutor(len(ports)) as pool:
                    each = list(
                        pool.map(
                            lambda port, c=connections: wrk(
                                port, tokens_file, "/v1/locations", c, seconds
                            ),
                            ports,
                        )
                    )
                cpu = [
                    servers.cpu_seconds(proc.pid) - b for proc, b in zip(procs, before, strict=True)
                ]
            finally:
                for proc in procs:
                    stop(proc)
            if any(r["status_errors"] for r in each):
                raise SystemExit(f"side by side: responses that were not 2xx ({label})")
            groups = [slice(0, instances), slice(instances, 2 * instances)]
            requests = [sum(r["requests"] for r in each[g]) for g in groups]
            us = [1e6 * sum(cpu[g]) / max(1, n) for g, n in zip(groups, requests, strict=True)]
            rps = [sum(r["rps"] for r in each[g]) for g in groups]
            runs[label].append(
                {
                    "off_rps": rps[0],
                    "rps": rps[1],
                    "off_cpu_us_per_request": us[0],
                    "cpu_us_per_request": us[1],
                    "equal_cpu_share": us[0] / us[1],
                }
            )
    return [
        {
            "config": label,
            "rounds": rows,
            "equal_cpu_share": median(r["equal_cpu_share"] for r in rows),
            "off_cpu_us_per_request": median(r["off_cpu_us_per_request"] for r in rows),
            "cpu_us_per_request": median(r["cpu_us_per_request"] for r in rows),
            "rps_share": median(r["rps"] / r["off_rps"] for r in rows),
        }
        for label, rows in runs.items()
    ]


def load(ports: list[int], tokens_file: Path, seconds: int) -> dict[str, Any]:
    """64 connections in all, split over the instances, one wrk each (all on core 1)."""
    connections = 64 // len(ports)
    with ThreadPoolExecutor(len(ports)) as pool:
        runs = list(
            pool.map(
                lambda port: wrk(port, tokens_file, "/v1/locations", connections, seconds), ports
            )
        )
    return {
        "requests": sum(r["requests"] for r in runs),
        "rps": sum(r["rps"] for r in runs),
        "p50_us": max(r["p50_us"] for r in runs),
        "p99_us": max(r["p99_us"] for r in runs),
        "status_errors": sum(r["status_errors"] for r in runs),
    }


async def accuracy(url: str, limit: int) -> dict[str, Any]:
    namespace = f"bench-{uuid.uuid4().hex}"
    env = {
        "TRAGWERK_DATABASE_URL": url,
        "TRAGWERK_REDIS_URL": REDIS,
        "TRAGWERK_REDIS_NAMESPACE": namespace,
        "TRAGWERK_LIMIT_EXTERNAL": f"{limit}/minute",
    }
    procs = [start(PORT, **env), start(PORT + 1, **env)]
    try:
        (token,) = await make_tokens(url, 1)
        allowed = 0
        # The whole run in one window: windows slide, so a run across a window's end
        # is granted part of the next window too (a run that did: 634 of 600).
        await in_one_window(60, needed=30.0)
        began = time.monotonic()
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as client:
            for i in range(3 * limit):
                r = await client.get(f"http://127.0.0.1:{PORT + i % 2}/v1/locations")
                allowed += r.status_code == 200
        took = time.monotonic() - began
    finally:
        for proc in procs:
            stop(proc)
    return {"limit": limit, "allowed": allowed, "ratio": allowed / limit, "seconds": took}


async def in_one_window(window_seconds: int, needed: float) -> None:
    """Wait, if need be, until the window on Redis's clock has `needed` seconds left."""
    client = aioredis.Redis.from_url(REDIS)
    try:
        seconds, micros = await client.time()
    finally:
        await client.aclose()
    left = window_seconds - (seconds % window_seconds + micros / 1e6)
    if left < needed:
        say(f"accuracy: waiting {left:.0f} s for the next window")
        await asyncio.sleep(left + 0.2)


async def paced(
    client: httpx.AsyncClient,
    url: str,
    token: str,
    rate: float,
    seconds: float,
    latencies: list[float] | None,
    codes: list[int],
) -> None:
    interval = 1.0 / rate
    end = time.monotonic() + seconds
    next_at = time.monotonic()
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < end:
        started = time.monotonic()
        r = await client.get(url, headers=headers)
        codes.append(r.status_code)
        if latencies is not None:
            latencies.append(time.monotonic() - started)
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def flood(url: str, seconds: int, workdir: Path, rounds: int) -> dict[str, Any]:
    """Ten paced clients with and without one client at 20x its limit beside them.

    Both loads are wrk processes on core 1 (a Python client's own event loop was most
    of the latency it measured): the polite one with 10 connections each waiting
    400 ms between requests over ten tokens, the flood with 10 connections each
    waiting 100 ms on one token: 100 requests/s at cost 2 against 600/minute.
    """
    env = {"TRAGWERK_DATABASE_URL": url, "TRAGWERK_LIMIT_EXTERNAL": "600/minute"}
    proc = start(PORT, **env)
    try:
        polite_file = workdir / "polite.txt"
        polite_file.write_text("\n".join(await make_tokens(url, 10)) + "\n")
        (flooder,) = await make_tokens(url, 1)
        path = "/v1/cases/1"  # costs 2

        def polite(duration: int) -> dict[str, Any]:
            return servers.wrk(
                PORT, 10, duration, TOKENS_FILE=str(polite_file), TARGET_PATH=path, DELAY_MS="400"
            )

        def flooding() -> dict[str, Any]:
            return servers.wrk(PORT, 10, seconds, TOKEN=flooder, TARGET_PATH=path, DELAY_MS="100")

        polite(2)  # warm caches and connections
        # Without and with the flood in turn, `rounds` times; the medians are reported
        # (one pair of runs on this machine differs by more than the flood's effect).
        runs: dict[str, list[dict[str, Any]]] = {"without flood": [], "with flood": []}
        for _round in range(rounds):
            for label, with_flood in (("without flood", False), ("with flood", True)):
                with ThreadPoolExecutor(2) as pool:
                    calm = pool.submit(polite, seconds)
                    flood_run = pool.submit(flooding) if with_flood else None
                    p = calm.result()
                    f = flood_run.result() if flood_run is not None else None
                runs[label].append(
                    {
                        "polite_p50_ms": p["p50_us"] / 1000,
                        "polite_p99_ms": p["p99_us"] / 1000,
                        "polite_requests": p["requests"],
                        "polite_refused": p["status_errors"],
                        "flood_requests": f["requests"] if f else 0,
                        "flood_refused": f["status_errors"] if f else 0,
                    }
                )
        result = {
            label: {
                "rounds": rows,
                "polite_p50_ms": median(r["polite_p50_ms"] for r in rows),
                "polite_p99_ms": median(r["polite_p99_ms"] for r in rows),
                **{
                    name: sum(r[name] for r in rows)
                    for name in (
                        "polite_requests",
                        "polite_refused",
                        "flood_requests",
                        "flood_refused",
                    )
                },
            }
            for label, rows in runs.items()
        }
    finally:
        stop(proc)
    return result


async def saturation(url: str, seconds: int, tokens_file: Path) -> dict[str, Any]:
    env = {
        "TRAGWERK_DATABASE_URL": url,
        "TRAGWERK_MAX_IN_FLIGHT": "8",
        "TRAGWERK_LIMIT_EXTERNAL": "10000000/minute",
    }
    proc = start(PORT, **env)
    try:
        (internal,) = await make_tokens(url, 1, internal=True)
        codes: list[int] = []
        latencies: list[float] = []
        loop = asyncio.get_running_loop()
        bulk = loop.run_in_executor(
            None, wrk, PORT, tokens_file, "/v1/cases?status=open&limit=50", 64, seconds
        )
        await asyncio.sleep(1)
        async with httpx.AsyncClient(timeout=15) as client:
            await paced(
                client,
                f"http://127.0.0.1:{PORT}/v1/cases/1",
                internal,
                20,
                seconds - 2,
                latencies,
                codes,
            )
        bulk_result = await bulk
    finally:
        stop(proc)
    served = sum(c in (200, 404) for c in codes)
    return {
        "internal_requests": len(codes),
        "internal_served": served,
        "internal_share": served / len(codes),
        "internal_p99_ms": p99(latencies) * 1000,
        "bulk_rps": bulk_result["rps"],
        "bulk_non_2xx": bulk_result["status_errors"],
        "bulk_requests": bulk_result["requests"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of the throughput configurations and of the flood pair (medians reported)",
    )
    parser.add_argument(
        "--only",
        choices=PARTS,
        action="append",
        help="run only this part (repeatable); default: all five",
    )
    args = parser.parse_args()
    parts = args.only or list(PARTS)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    url = os.environ.get("TRAGWERK_BENCH_DATABASE_URL", DEFAULT_URL)
    workdir = Path(tempfile.mkdtemp(prefix="tragwerk-bench-"))
    try:
        asyncio.run(prepare(url, SEED_CASES))  # migrated and seeded once, like the listing
        tokens_file = workdir / "tokens.txt"
        tokens_file.write_text("\n".join(asyncio.run(make_tokens(url, 1000))) + "\n")
        report: dict[str, Any] = {}
        if "throughput" in parts:
            report["throughput"] = throughput(url, tokens_file, args.duration, args.rounds)
        if "side-by-side" in parts:
            report["side_by_side"] = side_by_side(url, tokens_file, args.duration, args.rounds)
        if "accuracy" in parts:
            say("accuracy over two instances")
            report["accuracy"] = asyncio.run(accuracy(url, 600))
        if "flood" in parts:
            say("flood")
            report["flood"] = asyncio.run(flood(url, args.duration, workdir, args.rounds))
        if "saturation" in parts:
            say("saturation")
            report["saturation"] = asyncio.run(saturation(url, args.duration, tokens_file))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_report(report)
    out = HERE / "results" / "rate_limits.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    say(f"raw results in {out}")
    return 0


def print_table(intro: str, columns: list[str], rows: list[list[str]]) -> None:
    print(intro)
    print("| " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * (len(columns) - 1))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def shares(rounds: list[dict[str, Any]], key: str) -> str:
    return ", ".join(f"{x[key]:.0%}" for x in rounds)


def print_report(report: dict[str, Any]) -> None:
    if "throughput" in report:
        print_table(
            "medians over the rounds; in brackets each round's share of its own 'off'",
            ["limiter", "req/s", "vs off", "CPU µs/request", "p50 ms", "p99 ms", "non-2xx"],
            [
                [
                    r["config"],
                    f"{r['rps']:,.0f}",
                    f"{r['vs_off']:.0%} ({shares(r['rounds'], 'vs_off')})",
                    f"{r['cpu_us_per_request']:.1f}",
                    f"{r['p50_us'] / 1000:.1f}",
                    f"{r['p99_us'] / 1000:.1f}",
                    str(r["status_errors"]),
                ]
                for r in report["throughput"]
            ],
        )
    if "side_by_side" in report:
        print_table(
            "\neach limiter beside 'off', both at once on core 0; medians over the rounds",
            ["limiter", "CPU µs/request, off / limiter", "throughput at equal CPU", "req/s ratio"],
            [
                [
                    r["config"],
                    f"{r['off_cpu_us_per_request']:.1f} / {r['cpu_us_per_request']:.1f}",
                    f"{r['equal_cpu_share']:.0%} ({shares(r['rounds'], 'equal_cpu_share')})",
                    f"{r['rps_share']:.0%}",
                ]
                for r in report["side_by_side"]
            ],
        )
    if "accuracy" in report:
        a = report["accuracy"]
        print(
            f"\naccuracy: {a['allowed']} allowed of a {a['limit']}/minute limit "
            f"across two instances ({a['ratio']:.1%}) in {a['seconds']:.1f} s"
        )
    for label, f in report.get("flood", {}).items():
        p99s = ", ".join(f"{r['polite_p99_ms']:.1f}" for r in f["rounds"])
        print(
            f"flood, {label} (medians; p99 per round {p99s} ms): "
            f"polite p50 {f['polite_p50_ms']:.1f} ms, "
            f"p99 {f['polite_p99_ms']:.1f} ms, polite {f['polite_requests']} sent / "
            f"{f['polite_refused']} refused, "
            f"flood {f['flood_requests']} sent / {f['flood_refused']} refused"
        )
    if "saturation" in report:
        s = report["saturation"]
        print(
            f"saturation: internal {s['internal_served']}/{s['internal_requests']} served "
            f"({s['internal_share']:.1%}), internal p99 {s['internal_p99_ms']:.1f} ms; "
            f"bulk {s['bulk_rps']:,.0f} req/s, {s['bulk_non_2xx']} of {s['bulk_requests']} shed"
        )


if __name__ == "__main__":
    raise SystemExit(main())

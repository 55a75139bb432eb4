"""Benchmark: the same app on granian and on uvicorn, and the bare-app ceilings of both.

    python -m bench.serving [--rounds 3] [--duration 5]   # server on core 0, wrk on core 1

Interleaved rounds (each round runs every contender once, in turn, so that drift on
this noisy machine touches all of them alike), `wrk -t1 -c64`, one worker process:

- tragwerk on granian: `tragwerk api`, as served now (tragwerk.api.serving);
- tragwerk on uvicorn: as served before the move (bench.uvicorn_protocol);
- bare Starlette returning the same bytes, on uvicorn (httptools) and on granian:
  the Python stack's ceilings.

Workloads: the cached reference read (GET /v1/locations) for all four, and the case
listing (GET /v1/cases?status=open&limit=50, every page of eight locations, 1,000,000
cases seeded once by bench.list_cases) for tragwerk on both servers, at 8 connections.
Rate limiting and admission stay on, limits out of reach. Also reported: the resident
memory of the process serving requests after the load (granian's worker, uvicorn's
only process). Needs wrk and PostgreSQL (TRAGWERK_BENCH_DATABASE_URL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import servers
from bench.list_cases import DEFAULT_URL, HERE, page_starts, prepare, say
from bench.reference_cache import ensure_locations

CONTENDERS = {
    "tragwerk on granian": (["bench.serve", "tragwerk", "--server", "granian"], True),
    "tragwerk on uvicorn (before)": (["bench.serve", "tragwerk", "--server", "uvicorn"], True),
    "bare Starlette on uvicorn": (["bench.serve", "starlette", "--server", "uvicorn"], False),
    "bare Starlette on granian": (["bench.serve", "starlette", "--server", "granian"], False),
}


def serving_process(proc: subprocess.Popen[bytes]) -> int:
    """The process that serves requests: granian's one worker, or the process itself."""
    time.sleep(0.2)
    pids = [proc.pid]
    while kids := servers.children(pids[-1]):  # granian's main has one child, its worker
        pids.append(kids[0])
    return pids[-1]


def measure(
    name: str, url: str, port: int, workloads: dict[str, dict[str, str]], args: argparse.Namespace
) -> list[dict[str, Any]]:
    module_args, full_app = CONTENDERS[name]
    env = {
        "TRAGWERK_DATABASE_URL": url,
        "TRAGWERK_LIMIT_EXTERNAL": "100000000/minute",
        "TRAGWERK_PAGE_SIZE_MAX": "200",
    }
    proc = servers.start(
        module_args, port, env, ready_path="/v1/locations" if not full_app else "/health/ready"
    )
    results = []
    try:
        server_pid = serving_process(proc)
        rss_before = servers.rss_mib(server_pid)
        for workload, lua in workloads.items():
            if not full_app and workload != "cached reference read":
                continue
            connections = 64 if workload == "cached reference read" else 8
            servers.wrk(port, connections, args.warmup, **lua)
            cpu = servers.cpu_seconds(proc.pid)
            result = servers.wrk(port, connections, args.duration, **lua)
            cpu = servers.cpu_seconds(proc.pid) - cpu
            result.update(
                contender=name,
                workload=workload,
                connections=connections,
                cpu_ms_per_request=cpu * 1000 / max(1, result["requests"]),
            )
            results.append(result)
        rss_after = servers.rss_mib(server_pid)
        for result in results:
            result.update(rss_before_mib=rss_before, rss_after_mib=rss_after)
    finally:
        servers.stop(proc)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--port", type=int, default=8150)
    parser.add_argument("--cases", type=int, default=1_000_000)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install wrk")
    url = os.environ.get("TRAGWERK_BENCH_DATABASE_URL", DEFAULT_URL)
    token, locations = asyncio.run(prepare(url, args.cases))
    asyncio.run(ensure_locations(url))
    workdir = Path(tempfile.mkdtemp(prefix="tragwerk-bench-"))
    lines = []
    for loc in random.Random(11).sample(locations, 8):
        for _offset, cursor in asyncio.run(
            page_starts(url, "status = 'open' AND location_id = $1", [loc])
        ):
            lines.append(
                f"/v1/cases?status=open&location_id={loc}&limit=50"
                + (f"&cursor={cursor}" if cursor else "")
            )
    (workdir / "listing.txt").write_text("\n".join(lines) + "\n")
    workloads = {
        "cached reference read": {"TARGET_PATH": "/v1/locations", "TOKEN": token},
        "case listing": {"PATHS_FILE": str(workdir / "listing.txt"), "TOKEN": token},
    }
    results: list[dict[str, Any]] = []
    try:
        for round_no in range(1, args.rounds + 1):
            for name in CONTENDERS:
                say(f"round {round_no}: {name}")
                for result in measure(name, url, args.port, workloads, args):
                    result["round"] = round_no
                    results.append(result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_tables(results)
    out = HERE / "results" / "serving.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    say(f"raw results in {out}")
    return 0


def print_tables(results: list[dict[str, Any]]) -> None:
    rounds = sorted({r["round"] for r in results})
    for workload in ("cached reference read", "case listing"):
        rows = [r for r in results if r["workload"] == workload]
        if not rows:
            continue
        print(f"\n{workload} (req/s per round; median p99 ms; errors)\n")
        head = " | ".join(f"round {n}" for n in rounds)
        print(
            f"| contender | {head} | median | p99 ms | server CPU ms/request "
            "| requests per server CPU second | RSS MiB before, after | errors |"
        )
        print("|---|" + "---:|" * (len(rounds) + 6))
        for name in CONTENDERS:
            mine = [r for r in rows if r["contender"] == name]
            if not mine:
                continue
            by_round = {r["round"]: r for r in mine}
            cells = " | ".join(
                f"{by_round[n]['rps']:,.0f}" if n in by_round else "-" for n in rounds
            )
            median = statistics.median(r["rps"] for r in mine)
            p99 = statistics.median(r["p99_us"] / 1000 for r in mine)
            rss_before = statistics.median(r["rss_before_mib"] for r in mine)
            rss = statistics.median(r["rss_after_mib"] for r in mine)
            cpu = statistics.median(r["cpu_ms_per_request"] for r in mine)
            errors = sum(
                r["status_errors"] + r["connect_errors"] + r["read_errors"] + r["timeouts"]
                for r in mine
            )
            print(
                f"| {name} | {cells} | {median:,.0f} | {p99:.1f} | {cpu:.3f} | "
                f"{1000 / cpu:,.0f} | {rss_before:.0f}, {rss:.0f} | {errors} |"
            )
        ratios = _ratios(rows, rounds)
        for label, values in ratios.items():
            shown = ", ".join(f"{v:.2f}" for v in values)
            print(f"\n{label}: {shown} (per round)")


def _ratios(rows: list[dict[str, Any]], rounds: list[int]) -> dict[str, list[float]]:
    def rps(name: str, n: int) -> float | None:
        for r in rows:
            if r["contender"] == name and r["round"] == n:
                return float(r["rps"])
        return None

    pairs = {
        "tragwerk on granian / tragwerk on uvicorn": (
            "tragwerk on granian",
            "tragwerk on uvicorn (before)",
        ),
        "tragwerk on granian / bare Starlette on uvicorn": (
            "tragwerk on granian",
            "bare Starlette on uvicorn",
        ),
        "tragwerk on granian / bare Starlette on granian": (
            "tragwerk on granian",
            "bare Starlette on granian",
        ),
    }
    found = {}
    for label, (a, b) in pairs.items():
        values = []
        for n in rounds:
            x, y = rps(a, n), rps(b, n)
            if x and y:
                values.append(x / y)
        if values:
            found[label] = values
    return found


if __name__ == "__main__":
    raise SystemExit(main())

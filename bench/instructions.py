"""Benchmark: instructions per served request, limiter off, on memory and on Redis.

    python -m bench.instructions [--tokens 100] [--warm 20] [--seconds 15]

Five configurations on granian, as `tragwerk api` serves: limiter off, on memory, on
Redis, admission control alone (limiter off, admission on, as in the two before);
and "off" once more on uvicorn with the protocol tragwerk used before granian.

Runs the API under valgrind's callgrind with counting switched off (granian's worker
process is forked inside valgrind and counted on its own), loads it with wrk for
`--warm` seconds, then counts the user-space instructions of the process serving
requests (server, app, libraries; not the kernel) while wrk sends `GET
/v1/locations` for `--seconds` more, each request with one of `--tokens` tokens.
Instruction counts do not depend on what else the machine is doing, so unlike
requests per second they compare across runs and machines of the same software;
they leave out what the kernel spends (sending responses, waking the load
generator), which bench/rate_limits.py's throughput includes. Needs valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from bench import servers
from bench.list_cases import DEFAULT_URL, HERE, SEED_CASES, prepare, say
from bench.rate_limits import REDIS, make_tokens

PORT = 8310
CONFIGS: list[tuple[str, dict[str, str]]] = [
    ("limiter off", {"TRAGWERK_RATE_LIMIT": "off", "TRAGWERK_MAX_IN_FLIGHT": "0"}),
    ("memory", {}),
    ("redis", {"TRAGWERK_REDIS_URL": REDIS}),
    # Admission control alone (on in "memory" and "redis"): its share of their cost.
    ("admission only", {"TRAGWERK_RATE_LIMIT": "off"}),
    # The same as the first, on the server tragwerk used before (bench.uvicorn_protocol).
    (
        "limiter off, on uvicorn (before)",
        {"TRAGWERK_RATE_LIMIT": "off", "TRAGWERK_MAX_IN_FLIGHT": "0", "BENCH_SERVER": "uvicorn"},
    ),
]


def wrk(tokens_file: Path, seconds: int) -> int:
    report = servers.wrk(
        PORT, 16, seconds, pin=False, TOKENS_FILE=str(tokens_file), TARGET_PATH="/v1/locations"
    )
    if report["status_errors"]:
        raise SystemExit(f"{report['status_errors']} responses were not 2xx")
    return int(report["requests"])


def counting(pid: int, state: str) -> None:
    subprocess.run(["callgrind_control", "-i", state, str(pid)], check=True, capture_output=True)


def measure(url: str, env: dict[str, str], tokens_file: Path, warm: int, seconds: int) -> float:
    workdir = Path(tempfile.mkdtemp(prefix="tragwerk-callgrind-"))
    log = workdir / "valgrind.log"
    env = dict(env)
    server = env.pop("BENCH_SERVER", "granian")
    proc = servers.start(
        ["bench.serve", "tragwerk", "--server", server],
        PORT,
        {
            "TRAGWERK_DATABASE_URL": url,
            "TRAGWERK_REDIS_NAMESPACE": f"bench-{uuid.uuid4().hex}",
            **env,
        },
        pin=False,
        wrapper=[
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={workdir / 'callgrind.out.%p'}",
        ],
        timeout=300,  # start-up under valgrind takes a while
        output=log,
    )
    serving = proc.pid  # uvicorn serves in its only process, granian in its one worker
    while kids := servers.children(serving):
        serving = kids[0]
    try:
        wrk(tokens_file, warm)  # caches, reservations, the pool: all warm
        counting(serving, "on")
        requests = wrk(tokens_file, seconds)
        counting(serving, "off")
    finally:
        servers.stop(proc, grace=120)  # valgrind writes its count on the way out
    found = re.search(rf"=={serving}== Collected : ([\d,]+)", log.read_text())
    if found is None:
        raise SystemExit(f"no instruction count in {log}")
    count = int(found.group(1).replace(",", ""))
    if count == 0:
        # Seen with granian: callgrind_control switched counting on in the forked worker
        # process, and valgrind still reported nothing for it. Not a figure: say so.
        raise SystemExit(f"valgrind counted no instructions in process {serving} ({log})")
    shutil.rmtree(workdir, ignore_errors=True)
    return count / requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=100, help="clients (tokens) to spread over")
    parser.add_argument("--warm", type=int, default=20, help="seconds of load before counting")
    parser.add_argument("--seconds", type=int, default=15, help="seconds of load counted")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install valgrind wrk")
    url = os.environ.get("TRAGWERK_BENCH_DATABASE_URL", DEFAULT_URL)
    workdir = Path(tempfile.mkdtemp(prefix="tragwerk-bench-"))
    try:
        asyncio.run(prepare(url, SEED_CASES))
        tokens_file = workdir / "tokens.txt"
        tokens_file.write_text("\n".join(asyncio.run(make_tokens(url, args.tokens))) + "\n")
        results = []
        for label, env in CONFIGS:
            say(f"instructions | {label}")
            per_request = measure(url, env, tokens_file, args.warm, args.seconds)
            results.append({"config": label, "instructions_per_request": per_request})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    off = results[0]["instructions_per_request"]
    print("| configuration | instructions per request | over limiter off |")
    print("|---|---:|---:|")
    for r in results:
        n = r["instructions_per_request"]
        print(f"| {r['config']} | {n:,.0f} | {n / off - 1:+.1%} |")
    out = HERE / "results" / "instructions.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    say(f"raw results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

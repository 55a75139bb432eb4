"""Starting and stopping the benchmark's server processes, the same way for every script."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).parent.parent


def start(
    module_args: list[str],
    port: int,
    env: dict[str, str],
    *,
    pin: bool = True,
    ready_path: str = "/health/ready",
    wrapper: list[str] | None = None,
    timeout: float = 30,
    output: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Run `python -m <module_args> --port P` (on core 0 when pinned) until it answers.

    `wrapper`: a command to run it under (valgrind, say); `output`: a file for its
    stdout and stderr.
    """
    cmd = [*(wrapper or ()), sys.executable, "-m", *module_args, "--port", str(port)]
    if pin:
        cmd = ["taskset", "-c", "0", *cmd]
    full_env = {**os.environ, "TRAGWERK_LOG_LEVEL": "warning", **env}
    if output is None:
        proc = subprocess.Popen(cmd, env=full_env, cwd=ROOT)
    else:
        with output.open("w") as out:
            proc = subprocess.Popen(cmd, env=full_env, cwd=ROOT, stdout=out, stderr=out)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=1).raise_for_status()
            return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{' '.join(module_args)} did not start on port {port}")


def stop(proc: subprocess.Popen[bytes], grace: float = 20) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()


def wrk(
    port: int, connections: int, seconds: int, *, pin: bool = True, **lua_env: str
) -> dict[str, Any]:
    """Run wrk with bench/wrk_report.lua (on core 1 when pinned) and return its figures.

    `lua_env`: PATHS_FILE or TARGET_PATH, and TOKENS_FILE or TOKEN (see the script).
    """
    cmd = [
        "wrk",
        "-t",
        "1" if pin else "2",
        "-c",
        str(connections),
        "-d",
        f"{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(ROOT / "bench" / "wrk_report.lua"),
        f"http://127.0.0.1:{port}",
    ]
    if pin:
        cmd = ["taskset", "-c", "1", *cmd]
    env = {**os.environ, **lua_env}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def children(pid: int) -> list[int]:
    """The direct child processes of `pid` (granian's worker processes, say)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def cpu_seconds(root: int) -> float:
    """User and system CPU time of `root` and its descendants (a server's main process
    and its workers), from /proc."""
    total, pending = 0.0, [root]
    while pending:
        pid = pending.pop()
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            pending += children(pid)
    return total


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")

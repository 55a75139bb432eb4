"""Real tragwerk processes for acceptance tests: start, wait until ready, find children, stop."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

STARTUP_SECONDS = 60


def start(
    cwd: Path, *args: str, env: dict[str, str] | None = None, output: Path | None = None
) -> subprocess.Popen[str]:
    """`tragwerk ARGS` with only the TRAGWERK_ variables given in `env`.

    Its output goes to `output` if given (a long-running server fills a pipe nobody
    reads), else to a pipe that `stop` reads.
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRAGWERK_")}
    full_env.update(env or {})
    out = output.open("w") if output is not None else subprocess.PIPE
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "tragwerk.cli", *args],
            cwd=cwd,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            # Its own process group: whatever happens, the test can end it whole.
            start_new_session=True,
        )
    finally:
        if output is not None:
            out.close()  # type: ignore[union-attr]


def wait_ready(proc: subprocess.Popen[str], port: int, path: str = "/health/ready") -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"tragwerk exited with {proc.returncode}:\n{out}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"tragwerk did not become ready on port {port} in time")


def children(pid: int) -> list[int]:
    """The direct child processes of `pid` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie is dead too
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGKILL whatever is left of the process's group (workers it may have orphaned)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 90) -> str:
    """Send `sig`, wait for the exit and return the output (when it went to a pipe)."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, _ = proc.communicate(timeout=10)
        raise AssertionError(f"tragwerk did not stop within {timeout} s:\n{out}") from None
    finally:
        kill_group(proc)
    return out or ""


@contextlib.contextmanager
def running(
    cwd: Path, *args: str, env: dict[str, str], port: int, output: Path | None = None
) -> Iterator[subprocess.Popen[str]]:
    """A ready tragwerk process, stopped (and, if it will not stop, killed) afterwards."""
    proc = start(cwd, *args, "--port", str(port), env=env, output=output)
    try:
        wait_ready(proc, port)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            proc.communicate(timeout=10)
            raise AssertionError("tragwerk did not stop within 90 s of SIGTERM") from None
        finally:
            kill_group(proc)


@contextlib.contextmanager
def served_database(cwd: Path, prefix: str) -> Iterator[str]:
    """A new database on the service PostgreSQL, migrated by `tragwerk migrate` (as an
    operator would), dropped afterwards. Skips (fails in CI) without PostgreSQL."""
    import asyncio

    from tests.conftest import create_database, drop_database
    from tests.services import (
        SERVICE_PG_ADMIN_URL,
        SERVICE_PG_HOST,
        SERVICE_PG_PORT,
        require_service,
    )

    require_service("PostgreSQL", SERVICE_PG_HOST, SERVICE_PG_PORT)
    url = asyncio.run(create_database(SERVICE_PG_ADMIN_URL, prefix=prefix))
    try:
        proc = start(cwd, "migrate", env={"TRAGWERK_DATABASE_URL": url})
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        yield url
    finally:
        asyncio.run(drop_database(SERVICE_PG_ADMIN_URL, url))


def admin_token(cwd: Path, url: str, email: str = "admin@example.test") -> str:
    """A token for a new admin user, made by `tragwerk token create`."""
    out = cwd / "admin.token"
    proc = start(
        cwd, "token", "create", "--user", email, "--output", str(out),
        env={"TRAGWERK_DATABASE_URL": url},
    )  # fmt: skip
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    return out.read_text().strip()


def until(check: Callable[[], Any], within: float, what: str, every: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `within` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    raise AssertionError(f"{what}: not within {within} s")

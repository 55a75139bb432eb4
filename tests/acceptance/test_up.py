"""`tragwerk up` as a user runs it: a real process, a real embedded PostgreSQL, Ctrl-C."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.processes import wait_ready
from tests.services import SERVICE_PG_HOST, SERVICE_PG_PORT, free_port, require_service

STARTUP_SECONDS = 60


def _start(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TRAGWERK_")}
    full_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "tragwerk.cli", *args],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


_wait_ready = wait_ready  # one readiness wait for every acceptance test


def _interrupt(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> str:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return out


def _postgres_running(pgdata: Path) -> bool:
    pidfile = pgdata / "postmaster.pid"
    if not pidfile.exists():
        return False
    pid = int(pidfile.read_text().split()[0])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_up_starts_everything_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)  # as root, the embedded server runs as its own user
    port = free_port()
    proc = _start(tmp_path, "up", "--port", str(port), "--data-dir", "data")
    try:
        _wait_ready(proc, port)
        token_file = tmp_path / "data" / "admin.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        base = f"http://127.0.0.1:{port}"
        loc = httpx.post(
            f"{base}/v1/locations",
            headers=headers,
            json={"name": "Berlin", "country_code": "DE", "time_zone": "Europe/Berlin"},
        ).json()
        me = httpx.get(f"{base}/v1/users/me", headers=headers).json()
        r = httpx.post(
            f"{base}/v1/cases",
            headers=headers,
            json={"title": "First case", "location_id": loc["id"], "assignee_ids": [me["id"]]},
        )
        assert r.status_code == 201, r.text
        assert _postgres_running(tmp_path / "data" / "pgdata")
        # The worker inside `up` turns the event into the assignee's notification.
        ready = httpx.get(f"{base}/health/ready").json()
        assert ready["checks"]["worker"] == "ok", ready
        deadline = time.monotonic() + 20
        while True:
            listed = httpx.get(f"{base}/v1/notifications", headers=headers)
            assert listed.status_code == 200, listed.text
            if items := listed.json()["items"]:
                break
            assert time.monotonic() < deadline, "no notification from the in-process worker"
            time.sleep(0.2)
        assert items[0]["kind"] == "case.created"
    finally:
        if proc.poll() is None:
            out = _interrupt(proc)
    assert str(token_file) in out
    assert not _postgres_running(tmp_path / "data" / "pgdata")

    # A second start keeps the data and the admin; SIGTERM (a supervisor's stop) is clean too.
    proc = _start(tmp_path, "up", "--port", str(port), "--data-dir", "data")
    try:
        _wait_ready(proc, port)
        r = httpx.get(f"http://127.0.0.1:{port}/v1/cases", headers=headers)
        assert [c["title"] for c in r.json()["items"]] == ["First case"]
    finally:
        out = _interrupt(proc, signal.SIGTERM)
    assert "created the admin user" not in out
    assert not _postgres_running(tmp_path / "data" / "pgdata")


def test_up_with_a_database_url_starts_no_embedded_server(tmp_path: Path) -> None:
    require_service("PostgreSQL", SERVICE_PG_HOST, SERVICE_PG_PORT)
    import asyncio

    from tests.conftest import SERVICE_PG_ADMIN_URL, create_database, drop_database

    url = asyncio.run(create_database(SERVICE_PG_ADMIN_URL, prefix="tragwerk_up"))
    port = free_port()
    try:
        proc = _start(tmp_path, "up", "--port", str(port), env={"TRAGWERK_DATABASE_URL": url})
        try:
            _wait_ready(proc, port)
            assert not (tmp_path / "var" / "pgdata").exists()
            token = (tmp_path / "var" / "admin.token").read_text().strip()
            r = httpx.get(
                f"http://127.0.0.1:{port}/v1/roles", headers={"Authorization": f"Bearer {token}"}
            )
            assert {role["name"] for role in r.json()} >= {"admin", "agent", "viewer"}
        finally:
            _interrupt(proc)
    finally:
        asyncio.run(drop_database(SERVICE_PG_ADMIN_URL, url))


def test_bad_settings_are_reported_not_crashed_on(tmp_path: Path) -> None:
    proc = _start(tmp_path, "up", env={"TRAGWERK_PORT": "eighty"})
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "TRAGWERK_PORT must be an integer" in out


@pytest.mark.parametrize("args", [["api"], ["seed", "--cases", "0"]])
def test_commands_refuse_what_they_cannot_do(tmp_path: Path, args: list[str]) -> None:
    proc = _start(tmp_path, *args)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2, out
    assert "tragwerk:" in out


def test_api_serves_a_shared_database_with_several_workers(tmp_path: Path) -> None:
    require_service("PostgreSQL", SERVICE_PG_HOST, SERVICE_PG_PORT)
    import asyncio

    from tests.conftest import SERVICE_PG_ADMIN_URL, create_database, drop_database

    url = asyncio.run(create_database(SERVICE_PG_ADMIN_URL, prefix="tragwerk_api"))
    env = {"TRAGWERK_DATABASE_URL": url}
    port = free_port()
    try:
        migrate = _start(tmp_path, "migrate", env=env)
        out, _ = migrate.communicate(timeout=60)
        assert migrate.returncode == 0, out
        assert "schema at revision" in out
        proc = _start(tmp_path, "api", "--port", str(port), "--workers", "2", env=env)
        try:
            _wait_ready(proc, port)
            codes = {httpx.get(f"http://127.0.0.1:{port}/v1/roles").status_code for _ in range(20)}
            assert codes == {401}  # served, and authentication is enforced in every worker
        finally:
            _interrupt(proc, signal.SIGTERM)
    finally:
        asyncio.run(drop_database(SERVICE_PG_ADMIN_URL, url))


def test_api_refuses_a_database_that_is_not_migrated(tmp_path: Path) -> None:
    require_service("PostgreSQL", SERVICE_PG_HOST, SERVICE_PG_PORT)
    import asyncio

    from tests.conftest import SERVICE_PG_ADMIN_URL, create_database, drop_database

    url = asyncio.run(create_database(SERVICE_PG_ADMIN_URL, prefix="tragwerk_bare"))
    try:
        proc = _start(
            tmp_path, "api", "--port", str(free_port()), env={"TRAGWERK_DATABASE_URL": url}
        )
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 2
        assert "run 'tragwerk migrate' first" in out
    finally:
        asyncio.run(drop_database(SERVICE_PG_ADMIN_URL, url))


def _processes_of(port: int) -> list[int]:
    """Processes still running `tragwerk ... --port PORT` (the command or its workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"tragwerk.cli" in argv and str(port).encode() in argv:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("delay", [0.2, 1.0, 2.0, 3.5])
def test_sigterm_during_start_up_stops_everything(tmp_path: Path, delay: float) -> None:
    """Whatever `up` is doing (starting PostgreSQL, migrating, starting its worker
    process), SIGTERM stops it cleanly: exit 0, nothing left running."""
    os.chmod(tmp_path, 0o755)
    port = free_port()
    warm = _start(tmp_path, "migrate", "--data-dir", "data")  # the data directory exists
    out, _ = warm.communicate(timeout=120)
    assert warm.returncode == 0, out
    proc = _start(tmp_path, "up", "--port", str(port), "--data-dir", "data")
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    if proc.returncode == -signal.SIGTERM:
        # Before the interpreter had set its handlers: ended by the default action,
        # and it had started nothing yet.
        assert "starting the embedded PostgreSQL" not in out, out
    else:
        assert proc.returncode == 0, out
    assert not _postgres_running(tmp_path / "data" / "pgdata"), out
    assert _processes_of(port) == [], out


def test_token_create_and_revoke_on_an_existing_database(tmp_path: Path) -> None:
    """A first admin token for a database served by `tragwerk api`, without `up`."""
    require_service("PostgreSQL", SERVICE_PG_HOST, SERVICE_PG_PORT)
    import asyncio

    from tests.conftest import SERVICE_PG_ADMIN_URL, create_database, drop_database

    url = asyncio.run(create_database(SERVICE_PG_ADMIN_URL, prefix="tragwerk_token"))
    env = {"TRAGWERK_DATABASE_URL": url}
    port = free_port()

    def run(*args: str) -> tuple[int, str]:
        proc = _start(tmp_path, *args, env=env)
        out, _ = proc.communicate(timeout=60)
        return proc.returncode, out

    try:
        assert run("migrate")[0] == 0
        code, out = run("token", "create", "--user", "ops@example.test", "--output", "ops.token")
        assert code == 0, out
        token_file = tmp_path / "ops.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert token not in out  # written to the file, not printed
        code, out = run("token", "create", "--user", "ops@example.test", "--expires", "2h")
        assert code == 0, out
        second = out.strip().splitlines()[0]
        assert second.startswith("tw_"), out
        assert run("token", "create", "--user", "x@example.test", "--role", "nope")[0] == 2
        assert run("token", "create", "--user", "x@example.test", "--expires", "soon")[0] == 2
        proc = _start(tmp_path, "api", "--port", str(port), env=env)
        try:
            _wait_ready(proc, port)
            base = f"http://127.0.0.1:{port}"
            for secret in (token, second):
                r = httpx.get(f"{base}/v1/users/me", headers={"Authorization": f"Bearer {secret}"})
                assert r.status_code == 200, r.text
                assert r.json()["email"] == "ops@example.test"
            code, out = run("token", "revoke", "--user", "ops@example.test")
            assert code == 0, out
            assert "revoked 2 token(s)" in out
            deadline = time.monotonic() + 5  # the API hears it from the database
            while (
                httpx.get(f"{base}/v1/users/me", headers={"Authorization": f"Bearer {token}"})
            ).status_code != 401:
                assert time.monotonic() < deadline, "the revoked token still works"
                time.sleep(0.1)
            assert run("token", "revoke", "999999")[0] == 1
        finally:
            _interrupt(proc, signal.SIGTERM)
    finally:
        asyncio.run(drop_database(SERVICE_PG_ADMIN_URL, url))

"""Real processes record themselves: `tragwerk api --workers 2` shows two API instances,
each `tragwerk worker` one; a SIGKILLed worker is shown lost, a SIGTERMed one stopped."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import admin_token, running, served_database, start, until
from tests.services import free_port

BEAT = "0.5"  # TRAGWERK_INSTANCE_HEARTBEAT_SECONDS: lost after 1.5 s


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    with served_database(tmp_path, "tragwerk_instances") as url:
        yield url


def test_processes_are_listed_up_lost_and_stopped(tmp_path: Path, database: str) -> None:
    token = admin_token(tmp_path, database, "ops@example.test")
    port = free_port()
    env = {
        "TRAGWERK_DATABASE_URL": database,
        "TRAGWERK_INSTANCE_HEARTBEAT_SECONDS": BEAT,
        "TRAGWERK_LOG_LEVEL": "warning",
    }
    workers: list[subprocess.Popen[str]] = []
    with (
        running(tmp_path, "api", "--workers", "2", env=env, port=port) as api,
        httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
        ) as client,
    ):

        def listing() -> list[dict[str, Any]]:
            r = client.get("/v1/admin/instances")
            assert r.status_code == 200, r.text
            return list(r.json())

        def by_role(role: str, state: str) -> list[dict[str, Any]]:
            return [i for i in listing() if i["role"] == role and i["state"] == state]

        try:
            for _ in range(2):
                workers.append(
                    start(tmp_path, "worker", env={**env, "TRAGWERK_WORKER_PORT": "0"},
                          output=tmp_path / f"worker{len(workers)}.log")
                )  # fmt: skip
            up_workers = until(lambda: len(by_role("worker", "up")) == 2 and
                               by_role("worker", "up"), 60, "two workers up")  # fmt: skip
            apis = until(lambda: len(by_role("api", "up")) == 2 and by_role("api", "up"), 30,
                         "two API processes up")  # fmt: skip
            assert {i["pid"] for i in apis} <= {api.pid, *_children(api.pid)}
            assert {i["pid"] for i in up_workers} == {w.pid for w in workers}
            for instance in up_workers:
                assert instance["modules"]["database"] == "ok"
                assert instance["modules"]["queue"] == "ok"
                assert instance["address"].startswith("127.0.0.1:")
            for instance in apis:
                assert instance["modules"]["database"] == "ok"
                assert instance["modules"]["tasks"] == "ok"

            killed, stopped = workers
            killed.send_signal(signal.SIGKILL)
            stopped.send_signal(signal.SIGTERM)
            assert stopped.wait(timeout=60) == 0
            lost = until(lambda: by_role("worker", "lost"), 15, "the killed worker lost")
            assert [i["pid"] for i in lost] == [killed.pid]
            assert [i["pid"] for i in by_role("worker", "stopped")] == [stopped.pid]
            assert len(by_role("api", "up")) == 2
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                worker.wait()


def _children(pid: int) -> list[int]:
    from tests.processes import children

    return children(pid)

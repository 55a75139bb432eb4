"""Recovery inside a process: `tragwerk up` survives its database restarting.

A real `tragwerk up` (API and in-process worker) on a PostgreSQL of the test's own,
restarted like a crash. Afterwards requests succeed, the in-process worker is back
(restarted by the supervisor if it crashed, its crash logged and counted), and a
case change made after the restart still reaches the webhook receiver.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import httpx

from tests.conftest import create_database
from tests.private_postgres import PrivatePostgres, private_postgres
from tests.processes import running
from tests.receivers import WebhookReceiver
from tests.services import free_port, require_program


def metric(text: str, name: str, **labels: str) -> float:
    selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(f"{name}{{{selector}}}" if labels else name) + r" ([0-9.e+-]+)"
    found = re.search(pattern, text)
    assert found, f"{name} {labels} not in the metrics"
    return float(found.group(1))


def delivered_cases(receiver: WebhookReceiver) -> set[int]:
    return {json.loads(r.body)["case"]["id"] for r in receiver.received}


def wait_for(check: object, within: float, what: str) -> object:
    deadline = time.monotonic() + within
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = check()  # type: ignore[operator]
        except httpx.HTTPError as exc:
            last = exc
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {within} s (last: {last!r})")


def test_up_recovers_from_a_database_restart(tmp_path: Path) -> None:
    require_program("runuser", "it comes with util-linux")
    with (
        private_postgres("127.0.0.1", free_port(), durable=True) as pg,
        WebhookReceiver() as receiver,
    ):
        url = asyncio.run(create_database(pg.url, prefix="tragwerk_recovery"))
        port = free_port()
        env = {
            "TRAGWERK_DATABASE_URL": url,
            "TRAGWERK_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
            "TRAGWERK_RESTART_INITIAL_SECONDS": "0.2",
            "TRAGWERK_RESTART_CAP_SECONDS": "2",
        }
        log = tmp_path / "up.log"
        with running(tmp_path, "up", env=env, port=port, output=log):
            base = f"http://127.0.0.1:{port}"
            token = (tmp_path / "var" / "admin.token").read_text().strip()
            auth = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=base, headers=auth) as client:
                recover(client, pg, receiver, log)


def recover(
    client: httpx.Client, pg: PrivatePostgres, receiver: WebhookReceiver, log: Path
) -> None:
    """The steps of the test above, against a running `tragwerk up`."""
    location = client.post(
        "/v1/locations",
        json={"name": "Depot", "country_code": "DE", "time_zone": "Europe/Berlin"},
    ).json()["id"]
    sub = client.post(
        "/v1/webhook-subscriptions",
        json={"url": receiver.url(), "secret": "s" * 32, "event_types": ["*"]},
    )
    assert sub.status_code == 201, sub.text
    first = client.post("/v1/cases", json={"title": "before", "location_id": location})
    assert first.status_code == 201, first.text
    wait_for(lambda: len(receiver.received) >= 1, 30, "the first delivery")

    restarted_at = time.monotonic()
    pg.restart("immediate")

    def ready() -> bool:
        r = client.get("/health/ready")
        return r.status_code == 200 and r.json()["checks"]["worker"] == "ok"

    wait_for(ready, 60, "ready with a working worker after the restart")
    back_after = time.monotonic() - restarted_at
    after = client.post("/v1/cases", json={"title": "after", "location_id": location})
    assert after.status_code == 201, after.text
    case_id = after.json()["id"]
    wait_for(
        lambda: case_id in delivered_cases(receiver),
        60,
        "the delivery of a change made after the restart",
    )
    metrics = client.get("/metrics").text
    assert metric(metrics, "tragwerk_task_up", task="worker") == 1.0
    assert metric(metrics, "tragwerk_task_up", task="change_feed") == 1.0
    assert metric(metrics, "tragwerk_task_crash_looping", task="worker") == 0.0
    assert client.get("/health/live").status_code == 200
    # Its listener died with the database: the worker run ended with an error,
    # which was logged with its traceback, counted, and followed by a restart.
    assert metric(metrics, "tragwerk_task_crashes_total", task="worker") >= 1
    crashes = [
        entry
        for line in log.read_text().splitlines()
        if line.startswith("{") and (entry := json.loads(line))["event"] == "task crashed"
    ]
    assert crashes
    assert crashes[0]["task"] == "worker"
    assert "Traceback" in crashes[0]["exception"]
    print(f"ready with a working worker {back_after:.1f} s after the restart")

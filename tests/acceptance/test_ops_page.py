"""The operations page in a real browser: headless Chromium (Debian's) driven by
Playwright. A `tragwerk api` with its own alerting and a `tragwerk worker` run on a
fresh database; the page loads with the admin token entered once, shows a held job
and requeues it, and shows an alert after the worker is SIGKILLed.

OPS_SCREENSHOT=path saves a screenshot of the page there (docs/operations.md has one).
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.processes import admin_token, running, served_database, start, until
from tests.receivers import WebhookReceiver
from tests.services import (
    free_port,
    in_ci,
)

SECRET = "ops-page-secret-0123456789"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if in_ci():
            pytest.fail("chromium is not installed (CI=true: .ci/run installs it)")
        pytest.skip("chromium is not installed; apt-get install chromium")
    return path


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    with served_database(tmp_path, "tragwerk_ops") as url:
        yield url


def test_the_ops_page_shows_held_jobs_requeues_them_and_shows_an_alert(
    tmp_path: Path, database: str
) -> None:
    browser_path = chromium()
    sync_api = pytest.importorskip("playwright.sync_api")
    token = admin_token(tmp_path, database, "support@example.test")
    answers = {"status": 410}  # the receiver refuses (a 4xx: held at once), then takes

    with WebhookReceiver(lambda _n: (answers["status"], {}, 0.0)) as receiver, \
            WebhookReceiver() as alerts:  # fmt: skip
        port = free_port()
        env = {
            "TRAGWERK_DATABASE_URL": database,
            "TRAGWERK_LOG_LEVEL": "warning",
            "TRAGWERK_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
            "TRAGWERK_INSTANCE_HEARTBEAT_SECONDS": "0.5",
            "TRAGWERK_ALERT_WEBHOOK_URL": alerts.url("/alerts"),
            "TRAGWERK_ALERT_EVALUATE_SECONDS": "0.5",
            "TRAGWERK_ALERT_FOR_SCALE": "0.05",
        }
        worker_env = {**env, "TRAGWERK_WORKER_PORT": "0"}
        with running(tmp_path, "api", env=env, port=port, output=tmp_path / "api.log"):
            worker = start(tmp_path, "worker", env=worker_env, output=tmp_path / "worker.log")
            try:
                base = f"http://127.0.0.1:{port}"
                with httpx.Client(
                    base_url=base, headers={"Authorization": f"Bearer {token}"}
                ) as api:
                    held_id = _held_job(api, receiver)
                with sync_api.sync_playwright() as playwright:
                    browser = playwright.chromium.launch(
                        executable_path=browser_path, args=["--no-sandbox"]
                    )
                    try:
                        page = browser.new_page(viewport={"width": 1400, "height": 1000})
                        _check_the_page(page, base, token, held_id, receiver, answers)
                        worker.send_signal(signal.SIGKILL)
                        worker.wait()
                        alert = page.locator("#alerts", has_text="TragwerkInstanceDown")
                        alert.wait_for(timeout=30_000)
                        assert "critical" in alert.inner_text()
                        page.locator("#instances tbody tr", has_text="lost").wait_for()
                        shot = Path(os.environ.get("OPS_SCREENSHOT") or tmp_path / "ops.png")
                        page.screenshot(path=str(shot), full_page=True)
                        assert shot.stat().st_size > 10_000
                    finally:
                        browser.close()
            finally:
                if worker.poll() is None:
                    worker.kill()
                worker.wait()


def _held_job(api: httpx.Client, receiver: WebhookReceiver) -> int:
    location = api.post(
        "/v1/locations", json={"name": "Depot", "country_code": "DE", "time_zone": "Europe/Berlin"}
    ).json()["id"]
    sub = api.post(
        "/v1/webhook-subscriptions",
        json={"url": receiver.url(), "secret": SECRET, "event_types": ["case.created"]},
    )
    assert sub.status_code == 201, sub.text
    assert api.post("/v1/cases", json={"title": "Printer", "location_id": location}).is_success
    held = until(lambda: api.get("/v1/admin/jobs?state=held").json(), 60, "a held job")
    assert held[0]["kind"] == "webhook"
    return int(held[0]["id"])


def _check_the_page(
    page: Any,
    base: str,
    token: str,
    held_id: int,
    receiver: WebhookReceiver,
    answers: dict[str, int],
) -> None:
    page.goto(f"{base}/")
    page.click("text=/ops")
    assert page.url == f"{base}/ops"
    assert page.locator("#status").inner_text() == "enter an admin token"
    page.fill("#token", token)
    page.click("text=Use token")
    page.locator("#status", has_text="updated").wait_for()
    assert token not in page.url
    assert page.eval_on_selector("#token", "e => e.value") == ""  # not left in the field
    # Both processes, up, with their modules.
    page.locator("#instances tbody tr", has_text="worker").wait_for()
    assert page.locator("#instances tbody tr", has_text="api").count() == 1
    held = page.locator("#held tbody tr", has_text=str(held_id))
    held.wait_for()
    assert "410" in held.inner_text()  # the receiver's answer, as the last error
    answers["status"] = 200
    held.locator("button", has_text="Requeue").click()
    page.locator("#held tbody", has_text="no held job").wait_for(timeout=30_000)
    until(lambda: len(receiver.received) >= 2, 30, "the requeued delivery")
    # A reload keeps the token for this tab.
    page.reload()
    page.locator("#status", has_text="updated").wait_for()

"""Alerts without Prometheus: tragwerk evaluates the conditions itself and tells the
support team's webhook (Alertmanager's JSON) and mailbox directly, also while the
database is down, and of several processes only one sends each notification."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from tests.conftest import migrated_database
from tests.private_postgres import private_postgres
from tests.receivers import SmtpSink, WebhookReceiver, eventually
from tests.services import free_port, require_program
from tragwerk.bootstrap import build_app
from tragwerk.settings import Settings
from tragwerk.store.database import create_engine


def settings_for(url: str, hooks: WebhookReceiver, smtp: SmtpSink) -> Settings:
    return Settings(
        database_url=url,
        smtp_url=smtp.url,
        alert_webhook_url=hooks.url("/alerts"),
        alert_emails=("support@example.test",),
        alert_evaluate_seconds=0.3,
        alert_for_scale=0.05,  # the 30 s of a module alert become 1.5 s
        instance_heartbeat_seconds=0.3,
        webhook_allow_hosts=("127.0.0.1",),
    )


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


def notices(hooks: WebhookReceiver, alertname: str, **labels: str) -> list[str]:
    """The status of each alert named so in what the webhook received, in order."""
    seen = []
    for received in list(hooks.received):
        for alert in json.loads(received.body)["alerts"]:
            mine = alert["labels"]
            if mine["alertname"] == alertname and all(mine.get(k) == v for k, v in labels.items()):
                seen.append(alert["status"])
    return seen


async def test_the_database_going_down_is_alerted_while_it_is_down_and_resolved(
    tmp_path: Any,
) -> None:
    require_program("runuser", "it comes with util-linux")
    with (
        private_postgres("127.0.0.1", free_port(), durable=True) as pg,
        WebhookReceiver() as hooks,
        SmtpSink() as smtp,
    ):
        async with migrated_database(pg.url, "tragwerk_alerting") as url, AsyncExitStack() as stack:
            settings = settings_for(url, hooks, smtp)
            # `tragwerk up`, and beside it a second API process: while the database is
            # down no shared store answers, and only one of them may tell the team.
            client = await stack.enter_async_context(
                serving(build_app(settings, url, with_worker=True))
            )
            await stack.enter_async_context(serving(build_app(settings, url)))
            assert (await client.get("/health/ready")).status_code == 200
            await asyncio.sleep(2)  # a few evaluations with everything well
            assert notices(hooks, "TragwerkModuleDown") == []

            stopped = time.monotonic()
            await asyncio.to_thread(pg.stop, "immediate")
            await eventually(lambda: notices(hooks, "TragwerkModuleDown", module="store"), 30)
            to_alert = time.monotonic() - stopped
            await eventually(lambda: any("ModuleDown" in m["Subject"] for m in smtp.messages))
            await asyncio.sleep(2)  # evaluations go on: no second notice
            assert notices(hooks, "TragwerkModuleDown", module="store") == ["firing"]

            await asyncio.to_thread(pg.start)
            await eventually(
                lambda: (
                    notices(hooks, "TragwerkModuleDown", module="store") == ["firing", "resolved"]
                ),
                30,
            )
            await asyncio.sleep(1)
            assert notices(hooks, "TragwerkModuleDown", module="store") == [
                "firing",
                "resolved",
            ]
            await eventually(
                lambda: any(str(m["Subject"]).startswith("[RESOLVED]") for m in smtp.messages)
            )
            body = next(
                b
                for b in (json.loads(r.body) for r in hooks.received)
                if b["alerts"][0]["labels"].get("module") == "store"
            )
            assert body["version"] == "4"
            assert body["receiver"] == "tragwerk"
            first = body["alerts"][0]
            assert "instance" not in first["labels"]  # the database is shared: one alert
            assert first["labels"]["severity"] == "critical"
            assert first["annotations"]["runbook"] == "docs/runbook.md#tragwerkmoduledown"
            print(f"\nalerted {to_alert:.1f} s after the database stopped (for 1.5 s)")


async def test_of_two_processes_one_tells_the_team_of_a_lost_instance(tmp_path: Any) -> None:
    require_program("runuser", "it comes with util-linux")
    with (
        private_postgres("127.0.0.1", free_port()) as pg,
        WebhookReceiver() as hooks,
        SmtpSink() as smtp,
    ):
        async with migrated_database(pg.url, "tragwerk_alerting") as url:
            settings = settings_for(url, hooks, smtp)
            async with AsyncExitStack() as stack:
                for _ in range(2):  # two API processes, as `tragwerk api --workers 2` runs
                    await stack.enter_async_context(serving(build_app(settings, url)))
                engine = create_engine(url, pool_size=1)
                try:
                    # A worker that stopped beating a minute ago, not replaced.
                    async with engine.begin() as conn:
                        await conn.exec_driver_sql(
                            "INSERT INTO instances (id, role, host, pid, version, address,"
                            " started_at, heartbeat_at) VALUES (gen_random_uuid(), 'worker',"
                            " 'gone-host', 4242, '0.1.0', '10.9.9.9:8001',"
                            " now() - interval '1 hour', now() - interval '1 minute')"
                        )
                    await eventually(lambda: notices(hooks, "TragwerkInstanceDown"), 30)
                    await asyncio.sleep(2)
                    assert notices(hooks, "TragwerkInstanceDown") == ["firing"]
                    (alert,) = [
                        a
                        for r in hooks.received
                        for a in json.loads(r.body)["alerts"]
                        if a["labels"]["alertname"] == "TragwerkInstanceDown"
                    ]
                    assert alert["labels"]["instance"] == "10.9.9.9:8001"
                    assert alert["labels"]["role"] == "worker"
                    # It is taken care of (a clean stop recorded): resolved, once.
                    async with engine.begin() as conn:
                        await conn.exec_driver_sql(
                            "UPDATE instances SET stopped_at = now() WHERE host = 'gone-host'"
                        )
                    await eventually(
                        lambda: notices(hooks, "TragwerkInstanceDown") == ["firing", "resolved"],
                        30,
                    )
                    await asyncio.sleep(2)
                    assert notices(hooks, "TragwerkInstanceDown") == ["firing", "resolved"]
                finally:
                    await engine.dispose()

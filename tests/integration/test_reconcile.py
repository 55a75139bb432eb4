"""Reconciliation: a job or a delivery record deleted by hand is found, re-driven once,
and the receiver gets it with the same idempotency key."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from tests.integration.test_jobs import (  # the same fixtures and helpers
    Setup,
    eventually,
    fresh_url,  # noqa: F401 - a fixture
    job_settings,
    setup,
    worker,
)
from tests.processes import start
from tests.receivers import WebhookReceiver
from tragwerk.store.queries.reconcile import reconcile

NOW = timedelta(0)  # no grace: the test's changes are seconds old


async def run(s: Setup, dry_run: bool = False):  # type: ignore[no-untyped-def]
    cases = s.api.services.cases
    return await reconcile(
        s.api.services.engine, cases.read_in, since=timedelta(hours=1), grace=NOW, dry_run=dry_run
    )


async def sql(s: Setup, statement: str) -> None:
    async with s.api.services.engine.begin() as conn:
        await conn.exec_driver_sql(statement)


async def test_a_deleted_delivery_record_is_found_and_redelivered(
    fresh_url: str,  # noqa: F811
) -> None:
    with WebhookReceiver() as receiver:
        settings = job_settings(fresh_url, None)
        async with setup(fresh_url, settings) as s:
            await s.subscribe(receiver.url(), ["case.created"])
            await s.api.case(await s.api.location())
            async with worker(settings, fresh_url):
                await eventually(lambda: len(receiver.received) == 1)
                assert (await run(s)).gaps == 0
                await sql(s, "DELETE FROM webhook_deliveries")  # by hand
                report = await run(s)
                assert len(report.missing_deliveries) == 1
                assert report.missing_events == []
                await eventually(lambda: len(receiver.received) == 2)
                assert (await run(s)).gaps == 0  # re-driven once, and recorded
            first, second = receiver.event_ids()
            assert first == second  # the same idempotency key
            assert second == report.missing_deliveries[0]["event_id"]


async def test_deleted_notifications_are_found_and_written_again(
    fresh_url: str,  # noqa: F811
) -> None:
    settings = job_settings(fresh_url, None)
    async with setup(fresh_url, settings) as s:
        agent = await s.api.user("agent")
        token = await s.api.token_for(agent["id"])
        await s.api.case(await s.api.location(), assignee_ids=[agent["id"]])

        async def notices() -> list[dict[str, object]]:
            r = await s.api.get("/v1/notifications", token=token)
            assert r.status_code == 200, r.text
            return list(r.json()["items"])

        async with worker(settings, fresh_url):
            (before,) = await eventually(notices)
        assert (await run(s)).gaps == 0
        await sql(s, "DELETE FROM notifications")  # by hand
        report = await run(s)
        (missing,) = report.missing_notifications
        assert missing["user_id"] == agent["id"]
        (after,) = await notices()
        assert (after["event_id"], after["title"], after["body"]) == (
            before["event_id"],
            before["title"],
            before["body"],
        )
        assert (await run(s)).gaps == 0


async def test_a_deleted_event_job_is_found_and_queued_again(fresh_url: str) -> None:  # noqa: F811
    with WebhookReceiver() as receiver:
        settings = job_settings(fresh_url, None)
        async with setup(fresh_url, settings) as s:
            await s.subscribe(receiver.url(), ["case.created"])
            case = await s.api.case(await s.api.location())
            await sql(s, "DELETE FROM pgqueuer WHERE entrypoint = 'case_event'")  # by hand
            dry = await run(s, dry_run=True)
            assert len(dry.missing_events) == 1
            assert len((await run(s, dry_run=True)).missing_events) == 1  # nothing queued
            report = await run(s)
            (missing,) = report.missing_events
            assert missing["case_id"] == case["id"]
            assert missing["event_type"] == "case.created"
            assert (await run(s)).gaps == 0  # queued: not a gap any more
            async with worker(settings, fresh_url):
                await eventually(lambda: len(receiver.received) == 1)
            assert receiver.event_ids() == [missing["event_id"]]
            history = await s.api.get(f"/v1/cases/{case['id']}/history")
            assert history.status_code == 200


async def test_the_command_reports_gaps_and_refuses_a_window_past_retention(
    fresh_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    settings = job_settings(fresh_url, None)
    async with setup(fresh_url, settings) as s:
        await s.api.case(await s.api.location())
        await sql(s, "DELETE FROM pgqueuer WHERE entrypoint = 'case_event'")
        env = {"TRAGWERK_DATABASE_URL": fresh_url}

        def command(*args: str) -> tuple[int, str]:
            proc = start(tmp_path, "reconcile", *args, env=env)
            out, _ = proc.communicate(timeout=60)
            return proc.returncode, out

        code, out = await asyncio.to_thread(command, "--dry-run", "--grace", "0s")
        assert code == 1, out
        assert "missing event" in out
        assert "would queue again" in out
        code, out = await asyncio.to_thread(command, "--since", "30d")
        assert code == 2, out
        assert "TRAGWERK_JOB_LOG_RETENTION_HOURS" in out
        code, out = await asyncio.to_thread(command, "--since", "soon")
        assert code == 2, out
        code, out = await asyncio.to_thread(command, "--grace", "0s")
        assert code == 1, out
        assert "queued again" in out
        code, out = await asyncio.to_thread(command, "--grace", "0s")
        assert code == 0, out

"""Asynchronous processing with real parts: PostgreSQL queue, aiosmtpd, an HTTP receiver.

Each test gets a fresh database so that jobs queued by other tests do not run here.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from tests.conftest import ADMIN_URL_OF, GENEROUS, Api, make_api, migrated_database
from tests.receivers import SmtpSink, WebhookReceiver, eventually
from tests.services import free_port
from tragwerk.jobs.mail import message_id
from tragwerk.jobs.worker import Worker
from tragwerk.monitoring.metrics import Metrics
from tragwerk.settings import Settings
from tragwerk.store.database import create_engine
from tragwerk.store.outbox import NOTIFICATION_ONLY, Job, enqueue
from tragwerk.store.queries.jobs import JobStore
from tragwerk.store.queries.sla import raise_alerts

SECRET = "s3cret-s3cret-s3cret"


def job_settings(url: str, smtp: SmtpSink | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        **GENEROUS,
        "smtp_url": smtp.url if smtp else None,
        "webhook_allow_hosts": ("127.0.0.1",),
        "job_retry_base_seconds": 0.05,
        "job_retry_cap_seconds": 0.3,
        "job_heartbeat_timeout_seconds": 2.0,
        "worker_concurrency": 10,
        "worker_port": 0,
        "sla_scan_seconds": 3600.0,  # tests call the scan themselves
        "worker_grace_seconds": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def fresh_url(database_url: str) -> AsyncIterator[str]:
    async with migrated_database(ADMIN_URL_OF[database_url], "tragwerk_jobs") as url:
        yield url


@dataclass
class Setup:
    api: Api
    url: str
    settings: Settings

    async def sql(self, statement: str, **params: Any) -> list[Any]:
        async with self.api.services.engine.connect() as conn:
            return list((await conn.execute(text(statement), params)).all())

    async def subscribe(self, url: str, events: list[str] | None = None) -> int:
        return await self.api.subscribe(url, SECRET, events)


@asynccontextmanager
async def setup(url: str, settings: Settings) -> AsyncIterator[Setup]:
    api, app = await make_api(url, settings)
    async with app.router.lifespan_context(app):
        yield Setup(api, url, settings)
    await api.client.aclose()


@asynccontextmanager
async def worker(settings: Settings, url: str, **kw: Any) -> AsyncIterator[Worker]:
    engine = create_engine(url, pool_size=5)
    w = Worker(settings, url, engine, Metrics(), **kw)
    await w.start()
    try:
        yield w
    finally:
        await w.stop()
        await engine.dispose()


async def queued(s: Setup, kind: str) -> int:
    """Jobs of `kind` still in the queue table (waiting, running or held)."""
    rows = await s.sql("SELECT count(*) FROM pgqueuer WHERE entrypoint = :k", k=kind)
    return int(rows[0][0])


async def test_a_write_commits_its_event_and_a_rollback_leaves_none(fresh_url: str) -> None:
    async with setup(fresh_url, job_settings(fresh_url, None)) as s:
        location = await s.api.location()
        case = await s.api.case(location)
        rows = await s.sql(
            "SELECT convert_from(payload, 'UTF8') FROM pgqueuer WHERE entrypoint = 'case_event'"
        )
        events = [orjson.loads(r[0]) for r in rows]
        assert [(e["type"], e["case"]["id"]) for e in events] == [("case.created", case["id"])]

        # A write refused halfway (stale version) leaves no event behind.
        r = await s.api.post(
            f"/v1/cases/{case['id']}/status", {"status": "in_progress", "version": 99}
        )
        assert r.status_code == 409
        assert await queued(s, "case_event") == 1

        # The outbox joins the caller's transaction: rolled back, the job never existed.
        class Boom(Exception):
            pass

        async def write_then_fail() -> None:
            async with s.api.services.engine.begin() as conn:
                await enqueue(conn, [Job(NOTIFICATION_ONLY, b"{}", 0)])
                assert await conn.scalar(text("SELECT count(*) FROM pgqueuer")) == 2
                raise Boom

        with pytest.raises(Boom):
            await write_then_fail()
        assert await queued(s, NOTIFICATION_ONLY) == 0


async def test_events_become_mail_notifications_and_signed_webhooks(fresh_url: str) -> None:
    with SmtpSink() as smtp, WebhookReceiver() as receiver:
        settings = job_settings(fresh_url, smtp)
        async with setup(fresh_url, settings) as s:
            subscription = await s.subscribe(receiver.url())
            location = await s.api.location()
            alice = await s.api.user(email="alice@example.test")
            bob = await s.api.user(email="bob@example.test")
            case = await s.api.case(location, assignee_ids=[alice["id"], bob["id"]])
            async with worker(settings, fresh_url):
                await eventually(lambda: len(smtp.messages) == 2 and len(receiver.received) == 1)
                r = await s.api.post(
                    f"/v1/cases/{case['id']}/status", {"status": "in_progress", "version": 1}
                )
                assert r.status_code == 200
                await eventually(lambda: len(smtp.messages) == 4 and len(receiver.received) == 2)

            event_ids = receiver.event_ids()
            assert len(set(event_ids)) == 2
            # Mail: one per assignee and event, Message-ID derived from event and user.
            expected = {message_id(e, u["id"]) for e in event_ids for u in (alice, bob)}
            assert set(smtp.message_ids()) == expected
            assert {str(m["To"]) for m in smtp.messages} == {
                "alice@example.test",
                "bob@example.test",
            }
            # In-app notifications: one row per recipient and event.
            rows = await s.sql(
                "SELECT user_id, kind FROM notifications WHERE case_id = :c ORDER BY id",
                c=case["id"],
            )
            assert sorted(rows) == sorted(
                [
                    (alice["id"], "case.created"),
                    (bob["id"], "case.created"),
                    (alice["id"], "case.status_changed"),
                    (bob["id"], "case.status_changed"),
                ]
            )
            # ... listed for the recipient, with the event they came from.
            listed = await s.api.get("/v1/notifications", token=await s.api.token_for(alice["id"]))
            assert listed.status_code == 200, listed.text
            assert {n["event_id"] for n in listed.json()["items"]} == set(receiver.event_ids())
            # Webhooks: signed over "<timestamp>.<body>" with the subscription's secret.
            for delivery in receiver.received:
                headers = {k.lower(): v for k, v in delivery.headers.items()}
                timestamp = headers["x-tragwerk-timestamp"]
                expected_sig = hmac.new(
                    SECRET.encode(), f"{timestamp}.".encode() + delivery.body, hashlib.sha256
                ).hexdigest()
                assert headers["x-tragwerk-signature"] == f"t={timestamp},v1={expected_sig}"
                body = orjson.loads(delivery.body)
                assert body["id"] == headers["x-tragwerk-event-id"]
                assert body["case"]["id"] == case["id"]
                assert headers["x-tragwerk-delivery"] == f"{body['id']}:{subscription}"
            types = [orjson.loads(d.body)["type"] for d in receiver.received]
            assert types == ["case.created", "case.status_changed"]
            assert orjson.loads(receiver.received[1].body)["case"]["status"] == "in_progress"


async def test_assignment_tells_only_the_new_assignee(fresh_url: str) -> None:
    with SmtpSink() as smtp:
        settings = job_settings(fresh_url, smtp)
        async with setup(fresh_url, settings) as s:
            location = await s.api.location()
            first = await s.api.user()
            second = await s.api.user()
            case = await s.api.case(location, assignee_ids=[first["id"]])
            r = await s.api.post(
                f"/v1/cases/{case['id']}/assignees", {"user_ids": [second["id"]], "version": 1}
            )
            assert r.status_code == 200, r.text
            async with worker(settings, fresh_url):
                await eventually(lambda: len(smtp.messages) == 2)
                await asyncio.sleep(0.3)
            assert sorted(str(m["To"]) for m in smtp.messages) == sorted(
                [first["email"], second["email"]]
            )


async def test_retry_after_is_honoured_and_the_delivery_succeeds(fresh_url: str) -> None:
    answers = {0: (503, {"Retry-After": "1"}, 0.0), 1: (429, {"Retry-After": "1"}, 0.0)}
    with WebhookReceiver(lambda n: answers.get(n, (200, {}, 0.0))) as receiver:
        settings = job_settings(fresh_url, None)
        async with setup(fresh_url, settings) as s:
            await s.subscribe(receiver.url(), ["case.created"])
            await s.api.case(await s.api.location())
            async with worker(settings, fresh_url):
                await eventually(lambda: len(receiver.received) == 3)
            gaps = [
                b.at - a.at for a, b in zip(receiver.received, receiver.received[1:], strict=False)
            ]
            # Our own backoff here is at most 0.3 s; the receiver asked for 1 s each time.
            assert all(gap >= 0.95 for gap in gaps), gaps
            ids = set(receiver.event_ids())
            assert len(ids) == 1  # the same idempotency key on every attempt


async def test_a_4xx_answer_is_held_at_once_listed_and_requeued(fresh_url: str) -> None:
    state = {"status": 410}
    with WebhookReceiver(lambda _n: (state["status"], {}, 0.0)) as receiver:
        settings = job_settings(fresh_url, None)
        async with setup(fresh_url, settings) as s:
            await s.subscribe(receiver.url(), ["case.created"])
            await s.api.case(await s.api.location())
            async with worker(settings, fresh_url):
                held = await eventually(lambda: _held(s), within=20)
                assert len(receiver.received) == 1  # never retried
                assert held[0]["kind"] == "webhook"
                assert "410" in held[0]["last_error"]
                assert held[0]["attempts"] == 0

                state["status"] = 204
                r = await s.api.post("/v1/admin/jobs/requeue", {"ids": [held[0]["id"]]})
                assert r.status_code == 200, r.text
                assert r.json() == {"requeued": [held[0]["id"]]}
                await eventually(lambda: len(receiver.received) == 2)
                await eventually(lambda: _held_none(s))
            r = await s.api.post("/v1/admin/jobs/requeue", {"ids": [held[0]["id"]]})
            assert r.status_code == 404


async def _held(s: Setup) -> list[dict[str, Any]]:
    r = await s.api.get("/v1/admin/jobs?state=held")
    assert r.status_code == 200, r.text
    return list(r.json())


async def _held_none(s: Setup) -> bool:
    return await _held(s) == []


async def test_failures_are_retried_with_backoff_then_held(fresh_url: str) -> None:
    with WebhookReceiver(lambda _n: (500, {}, 0.0)) as receiver:
        settings = job_settings(fresh_url, None, job_max_attempts=3, breaker_threshold=100)
        async with setup(fresh_url, settings) as s:
            await s.subscribe(receiver.url(), ["case.created"])
            await s.api.case(await s.api.location())
            async with worker(settings, fresh_url):
                held = await eventually(lambda: _held(s))
            assert len(receiver.received) == 3
            assert held[0]["attempts"] == 2  # attempts counts the retries before the last
            assert "500" in held[0]["last_error"]


async def test_the_ssrf_guard_refuses_loopback_unless_allowed(fresh_url: str) -> None:
    with WebhookReceiver() as receiver:
        settings = job_settings(fresh_url, None, webhook_allow_hosts=())
        async with setup(fresh_url, settings) as s:
            await s.subscribe(receiver.url(), ["case.created"])
            await s.subscribe(f"http://localhost:{receiver.port}/x", ["case.created"])
            await s.api.case(await s.api.location())
            async with worker(settings, fresh_url):
                held = await eventually(lambda: _held_count(s, 2))
            assert receiver.received == []
            assert all("loopback" in h["last_error"] for h in held), held


async def _held_count(s: Setup, n: int) -> list[dict[str, Any]] | None:
    held = await _held(s)
    return held if len(held) == n else None


async def test_a_deleted_subscription_is_not_delivered(fresh_url: str) -> None:
    with WebhookReceiver() as receiver:
        settings = job_settings(fresh_url, None)
        async with setup(fresh_url, settings) as s:
            subscription = await s.subscribe(receiver.url(), ["case.created"])
            await s.api.case(await s.api.location())
            async with worker(settings, fresh_url):
                await eventually(lambda: _count_zero(s, "case_event"))
                await eventually(lambda: _count_zero(s, "webhook"))
            assert len(receiver.received) == 1
            r = await s.api.client.delete(
                f"/v1/webhook-subscriptions/{subscription}", headers=s.api.auth()
            )
            assert r.status_code == 204
            await s.api.case(await s.api.location())
            async with worker(settings, fresh_url):
                await eventually(lambda: _count_zero(s, "case_event"))
                await asyncio.sleep(0.3)
            assert len(receiver.received) == 1


async def _count_zero(s: Setup, kind: str) -> bool:
    return await queued(s, kind) == 0


async def test_sla_work_jumps_a_queue_of_ten_thousand(fresh_url: str) -> None:
    settings = job_settings(fresh_url, None, worker_concurrency=4)
    async with setup(fresh_url, settings) as s:
        location = await s.api.location()
        user = await s.api.user()
        case = await s.api.case(location, assignee_ids=[user["id"]])
        engine = s.api.services.engine
        payload = orjson.dumps({"user_id": user["id"], "title": "normal"})
        async with engine.begin() as conn:
            await enqueue(conn, [Job(NOTIFICATION_ONLY, payload, 200) for _ in range(10_000)])
        async with worker(settings, fresh_url):
            await eventually(lambda: _normal_done(s, 200))
            # The case's deadline has passed: the monitor raises the breach event.
            await s.sql("SELECT 1")
            async with engine.begin() as conn:
                await conn.execute(
                    text("UPDATE cases SET sla_due_at = now() - interval '1 minute' WHERE id = :c"),
                    {"c": case["id"]},
                )
            raised = await raise_alerts(
                engine, at_risk_within=timedelta(minutes=60), lookback=timedelta(hours=1)
            )
            assert raised == {"breached": 1, "at_risk": 0}
            enqueued_at = (await s.sql("SELECT clock_timestamp()"))[0][0]
            row = await eventually(lambda: _breach_notification(s, case["id"]), within=10)
            remaining = await queued(s, NOTIFICATION_ONLY)
            overtaking = (
                await s.sql(
                    "SELECT count(*) FROM notifications WHERE kind = 'notice' "
                    "AND created_at > :t AND id < :i",
                    t=enqueued_at,
                    i=row[0],
                )
            )[0][0]
        started = (row[1] - enqueued_at).total_seconds()
        # Thousands of normal jobs were still waiting, yet the SLA job ran within the
        # few jobs already claimed when it arrived, and within one second.
        assert remaining > 5_000
        assert overtaking <= 2 * settings.worker_concurrency, overtaking
        assert started < 1.0, started


async def _normal_count(s: Setup) -> int:
    return int((await s.sql("SELECT count(*) FROM notifications WHERE kind = 'notice'"))[0][0])


async def _normal_done(s: Setup, n: int) -> bool:
    return await _normal_count(s) >= n


async def _breach_notification(s: Setup, case_id: int) -> Any:
    rows = await s.sql(
        "SELECT id, created_at FROM notifications "
        "WHERE case_id = :c AND kind = 'case.sla_breached'",
        c=case_id,
    )
    return rows[0] if rows else None


async def test_the_sla_monitor_raises_each_alert_once_across_workers(fresh_url: str) -> None:
    settings = job_settings(fresh_url, None)
    async with setup(fresh_url, settings) as s:
        location = await s.api.location()
        cases = [await s.api.case(location) for _ in range(6)]
        ids = [c["id"] for c in cases]
        async with s.api.services.engine.begin() as conn:
            # two breached, two at risk (within the hour), two far away
            await conn.execute(
                text(
                    "UPDATE cases SET sla_due_at = now() - interval '5 minutes' WHERE id = ANY(:i)"
                ),
                {"i": ids[:2]},
            )
            await conn.execute(
                text(
                    "UPDATE cases SET sla_due_at = now() + interval '20 minutes' WHERE id = ANY(:i)"
                ),
                {"i": ids[2:4]},
            )
        engines = [create_engine(fresh_url, pool_size=2) for _ in range(4)]
        try:
            for _ in range(3):
                results = await asyncio.gather(
                    *(
                        raise_alerts(
                            e, at_risk_within=timedelta(minutes=60), lookback=timedelta(hours=1)
                        )
                        for e in engines
                    )
                )
                assert all(set(r) == {"breached", "at_risk"} for r in results)
        finally:
            for e in engines:
                await e.dispose()
        alerts = await s.sql("SELECT case_id, threshold FROM sla_alerts ORDER BY case_id")
        assert sorted(alerts) == sorted(
            [(i, "breached") for i in ids[:2]] + [(i, "at_risk") for i in ids[2:4]]
        )
        rows = await s.sql(
            "SELECT convert_from(payload, 'UTF8') FROM pgqueuer WHERE priority >= 900"
        )
        events = sorted(
            (orjson.loads(r[0])["type"], orjson.loads(r[0])["case"]["id"]) for r in rows
        )
        assert events == sorted(
            [("case.sla_breached", i) for i in ids[:2]]
            + [("case.sla_at_risk", i) for i in ids[2:4]]
        )


async def test_an_sla_event_carries_the_deadline_its_alert_was_raised_for(
    fresh_url: str,
) -> None:
    """A deadline change between the claim and the payload read must not reach the
    event. A test-only trigger makes the claim sleep after it inserted the alert; the
    change is made during that sleep. Before, it committed at once and the "at risk"
    event showed tomorrow's deadline; now it waits for the scan to commit."""
    settings = job_settings(fresh_url, None)
    async with setup(fresh_url, settings) as s:
        case = await s.api.case(await s.api.location())
        async with s.api.services.engine.begin() as conn:
            await conn.execute(
                text("UPDATE cases SET sla_due_at = now() + interval '20 minutes' WHERE id = :i"),
                {"i": case["id"]},
            )
            await conn.execute(
                text(
                    "CREATE FUNCTION slow_alert() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN PERFORM pg_sleep(1.5); RETURN NULL; END $$"
                )
            )
            await conn.execute(
                text(
                    "CREATE TRIGGER slow_alert AFTER INSERT ON sla_alerts "
                    "FOR EACH ROW EXECUTE FUNCTION slow_alert()"
                )
            )
        engine = create_engine(fresh_url, pool_size=2)
        try:
            scan = asyncio.create_task(
                raise_alerts(engine, at_risk_within=timedelta(hours=1), lookback=timedelta(hours=1))
            )
            await eventually(
                lambda: s.sql("SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'")
            )

            async def postpone() -> None:
                async with s.api.services.engine.begin() as conn:
                    await conn.execute(
                        text(
                            "UPDATE cases SET sla_due_at = now() + interval '1 day' WHERE id = :i"
                        ),
                        {"i": case["id"]},
                    )

            change = asyncio.create_task(postpone())
            assert (await scan)["at_risk"] == 1
            await change
        finally:
            await engine.dispose()
        rows = await s.sql(
            "SELECT a.due_at, CAST(convert_from(j.payload, 'UTF8')::jsonb #>> '{case,sla_due_at}'"
            " AS timestamptz) FROM sla_alerts a, pgqueuer j WHERE j.priority >= 900"
        )
        assert len(rows) == 1
        alert_due, event_due = rows[0]
        assert event_due == alert_due


async def test_slow_receivers_never_hold_up_a_case_write(fresh_url: str) -> None:
    with SmtpSink(delay=2.0) as smtp, WebhookReceiver(lambda _n: (200, {}, 5.0)) as receiver:
        settings = job_settings(fresh_url, smtp)
        async with setup(fresh_url, settings) as s:
            await s.subscribe(receiver.url(), ["case.created"])
            location = await s.api.location()
            user = await s.api.user()
            async with worker(settings, fresh_url):
                await s.api.case(location, assignee_ids=[user["id"]])
                await eventually(lambda: receiver.in_flight >= 1)
                # While the receiver sits on the first delivery, writes go on untouched.
                for _ in range(20):
                    await s.api.case(location, assignee_ids=[user["id"]])
                assert len(receiver.received) >= 1
                assert smtp.messages == [] or len(smtp.messages) < 21
                completed = len(receiver.received) - receiver.in_flight
                assert completed == 0  # not one delivery had finished: nothing waited on them


async def test_worker_ready_and_job_metrics(fresh_url: str) -> None:
    settings = job_settings(fresh_url, None)
    async with setup(fresh_url, settings) as s:
        await s.api.case(await s.api.location())
        async with worker(settings, fresh_url) as w:
            assert await w.ready() == "ok"
            await eventually(lambda: _count_zero(s, "case_event"))
            await asyncio.sleep(0.2)
            w.metrics.jobs.refresh_queue(await w.jobs.stats(w.heartbeat_timeout))
            rendered = w.metrics.render().decode()
        assert 'tragwerk_jobs_total{kind="case_event",outcome="succeeded"} 1.0' in rendered
        assert 'tragwerk_job_seconds_count{kind="case_event"} 1.0' in rendered
        assert await w.ready() == "stopped"


async def test_queue_lag_counts_from_when_a_job_became_due(fresh_url: str) -> None:
    """A job waiting out its retry backoff is not late; one due for ten minutes is."""
    async with setup(fresh_url, job_settings(fresh_url, None)) as s:
        lag_jobs = """
            INSERT INTO pgqueuer (priority, status, entrypoint, created, execute_after) VALUES
            (250, 'queued', 'lag_probe', now() - interval '600 s', now() - interval '600 s'),
            (250, 'queued', 'lag_probe', now() - interval '3600 s', now() + interval '1 h'),
            (950, 'queued', 'lag_probe', now() - interval '7200 s', now() + interval '1 h')
        """
        async with s.api.services.engine.begin() as conn:
            await conn.execute(text(lag_jobs))
        metrics = Metrics()
        metrics.jobs.refresh_queue(
            await JobStore(s.api.services.engine).stats(timedelta(seconds=30))
        )
        text_ = metrics.render().decode()
        lag = re.search(
            r'tragwerk_job_oldest_queued_seconds\{band="normal",kind="lag_probe"\} ([0-9.]+)',
            text_,
        )
        assert lag is not None
        assert 600 <= float(lag.group(1)) < 660
        assert 'tragwerk_job_oldest_queued_seconds{band="sla",kind="lag_probe"} 0.0' in text_
        assert 'tragwerk_jobs_queued{band="normal",kind="lag_probe"} 2.0' in text_


async def test_requeue_validates_its_body(fresh_url: str) -> None:
    async with setup(fresh_url, job_settings(fresh_url, None)) as s:
        for body in ({}, {"ids": [1], "all": True}, {"ids": []}, {"ids": ["x"]}, {"all": "yes"}):
            r = await s.api.post("/v1/admin/jobs/requeue", body)
            assert r.status_code == 422, (body, r.text)
        r = await s.api.post("/v1/admin/jobs/requeue", {"all": True})
        assert r.json() == {"requeued": []}
        for query in ("state=running", "after=-1", "limit=0", "limit=501"):
            r = await s.api.get(f"/v1/admin/jobs?{query}")
            assert r.status_code == 422, (query, r.text)
        # A subscription to an event that does not exist is refused and not stored.
        r = await s.api.post(
            "/v1/webhook-subscriptions",
            {"url": "https://example.test/h", "secret": SECRET, "event_types": ["case.deleted"]},
        )
        assert r.status_code == 422
        assert (await s.api.get("/v1/webhook-subscriptions")).json() == []
        agent = await s.api.user()
        token = await s.api.token_for(agent["id"])
        r = await s.api.get("/v1/admin/jobs", token=token)
        assert r.status_code == 403


async def test_old_log_rows_are_pruned_but_a_held_jobs_error_stays(fresh_url: str) -> None:
    with WebhookReceiver(lambda _n: (404, {}, 0.0)) as receiver:
        settings = job_settings(fresh_url, None)
        async with setup(fresh_url, settings) as s:
            await s.subscribe(receiver.url(), ["case.created"])
            await s.api.case(await s.api.location())
            async with worker(settings, fresh_url):
                await eventually(lambda: _held(s))
            async with s.api.services.engine.begin() as conn:
                await conn.execute(
                    text("UPDATE pgqueuer_log SET created = created - interval '10 days'")
                )
            before = (await s.sql("SELECT count(*) FROM pgqueuer_log"))[0][0]
            pruned = await s.api.services.jobs.prune_log(timedelta(days=3))
            after = (await s.sql("SELECT count(*) FROM pgqueuer_log"))[0][0]
            assert pruned > 0
            assert after == before - pruned
            held = await _held(s)
            assert held[0]["last_error"] is not None  # the held job's rows were kept


async def test_the_breaker_stops_calling_a_failing_host(fresh_url: str) -> None:
    with WebhookReceiver(lambda _n: (503, {}, 0.0)) as receiver:
        settings = job_settings(
            fresh_url,
            None,
            breaker_threshold=2,
            breaker_open_seconds=60.0,
            job_max_attempts=50,
            worker_concurrency=1,  # one call at a time: none is in flight as the circuit opens
        )
        async with setup(fresh_url, settings) as s:
            await s.subscribe(receiver.url(), ["case.created"])
            location = await s.api.location()
            for _ in range(3):
                await s.api.case(location)
            async with worker(settings, fresh_url) as w:
                # Two failures open the circuit; the third delivery and the retries are
                # not sent but deferred until the circuit lets a probe through.
                await eventually(lambda: w.metrics.jobs.count("webhook", "deferred") >= 3)
                assert len(receiver.received) == 2
                assert w.breakers.open_hosts() == 1
                deferred = await s.sql(
                    "SELECT count(*) FROM pgqueuer WHERE entrypoint = 'webhook' "
                    "AND execute_after > now() + interval '50 seconds'"
                )
                assert deferred[0][0] == 3
                # A refusal is not an attempt: two jobs failed once, the third never ran.
                attempts = await s.sql(
                    "SELECT attempts FROM pgqueuer WHERE entrypoint = 'webhook' ORDER BY 1"
                )
                assert [a for (a,) in attempts] == [0, 1, 1]


async def test_an_outage_behind_an_open_breaker_holds_no_delivery(fresh_url: str) -> None:
    """20 deliveries, the receiver down for 30 s, then slow, then back: all arrive, none
    is held. Before, each refusal by the open breaker (every 2 s) counted as an attempt,
    so the jobs ran out of their 12 attempts during the outage and were held."""
    port = free_port()
    settings = job_settings(
        fresh_url,
        None,
        breaker_open_seconds=2.0,
        job_retry_base_seconds=1.0,
        job_retry_cap_seconds=8.0,
        job_max_attempts=12,
        webhook_read_timeout_seconds=5.0,
    )
    async with setup(fresh_url, settings) as s:
        await s.subscribe(f"http://127.0.0.1:{port}/hook", ["case.created"])
        location = await s.api.location()
        for _ in range(20):
            await s.api.case(location)
        async with worker(settings, fresh_url) as w:
            await asyncio.sleep(30)  # nothing listens on the port: connections refused
            assert await _held(s) == []
            assert w.metrics.jobs.count("webhook", "deferred") > 0
            # Back, slow at first (1 s per answer for the first five), then quick.
            slow_then_quick = lambda n: (200, {}, 1.0 if n < 5 else 0.0)  # noqa: E731
            with WebhookReceiver(slow_then_quick, port=port) as receiver:
                await eventually(lambda: len(set(receiver.event_ids())) == 20, within=60)
                await eventually(lambda: _count_zero(s, "webhook"))  # outcomes written
            assert await _held(s) == []


HOSTILE_TITLES = [
    # Encoded words that decode to CR LF: injected Reply-To and Bcc before the fix.
    "=?utf-8?q?Printer=0D=0AReply-To:_evil@example.test=0D=0ABcc:_evil@example.test?=",
    # Raw line breaks of every kind: the message build raised, and the job was held.
    "Printer\r\nBcc: evil@example.test\x0bbroken\x85again\u2028end",
]


async def test_hostile_case_titles_are_mailed_with_a_safe_subject(fresh_url: str) -> None:
    with SmtpSink() as smtp:
        settings = job_settings(fresh_url, smtp)
        async with setup(fresh_url, settings) as s:
            location = await s.api.location()
            agent = await s.api.user()
            for title in HOSTILE_TITLES:
                await s.api.case(location, title=title, assignee_ids=[agent["id"]])
            async with worker(settings, fresh_url):
                await eventually(lambda: len(smtp.messages) == len(HOSTILE_TITLES))
                await asyncio.sleep(0.3)
            assert await _held(s) == []
        for message in smtp.messages:
            assert set(message.keys()) >= {"From", "To", "Subject"}
            assert "Bcc" not in message
            assert "Reply-To" not in message
            assert str(message["To"]) == agent["email"]
            subject = str(message["Subject"])
            assert not any(c in subject for c in "\r\n\x0b\x85\u2028")
            assert "Printer" in subject


async def test_an_email_that_can_never_be_sent_is_held_at_once(fresh_url: str) -> None:
    with SmtpSink() as smtp:
        settings = job_settings(fresh_url, smtp)
        async with setup(fresh_url, settings) as s:
            agent = await s.api.user()
            # A bad address slipped in by another path (bulk SQL); the API refuses it.
            async with s.api.services.engine.begin() as conn:
                await conn.execute(
                    text("UPDATE users SET email = 'no address' WHERE id = :id"),
                    {"id": agent["id"]},
                )
            s.api.services.caches.changed("users", [agent["id"]])
            await s.api.case(await s.api.location(), assignee_ids=[agent["id"]])
            async with worker(settings, fresh_url):
                held = await eventually(lambda: _held(s), within=20)
            assert held[0]["kind"] == "email"
            assert held[0]["attempts"] == 0  # not retried: no attempt could succeed
            assert "not a valid email address" in held[0]["last_error"]
        assert smtp.messages == []

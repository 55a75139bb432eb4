"""The webhook delivery log: every attempt with time, response code, duration and error,
as GitHub and Stripe show theirs; redelivery with the same event id."""

from __future__ import annotations

from typing import Any

from tests.integration.test_jobs import (  # the same fixtures and helpers
    Setup,
    eventually,
    fresh_url,  # noqa: F401 - a fixture
    job_settings,
    setup,
    worker,
)
from tests.receivers import WebhookReceiver


async def deliveries(s: Setup, subscription: int) -> list[dict[str, Any]]:
    r = await s.api.get(f"/v1/webhook-subscriptions/{subscription}/deliveries")
    assert r.status_code == 200, r.text
    return list(r.json())


async def test_every_attempt_is_logged_until_delivered(fresh_url: str) -> None:  # noqa: F811
    answers = {0: (503, {}, 0.0), 1: (500, {}, 0.2)}
    with WebhookReceiver(lambda n: answers.get(n, (200, {}, 0.0))) as receiver:
        settings = job_settings(fresh_url, None, breaker_threshold=100)
        async with setup(fresh_url, settings) as s:
            sub = await s.subscribe(receiver.url(), ["case.created"])
            case = await s.api.case(await s.api.location())
            # The delivery is written when a worker fans the event out, with its job.
            assert await deliveries(s, sub) == []
            async with worker(settings, fresh_url):
                await eventually(lambda: len(receiver.received) == 3)

                async def delivered() -> list[dict[str, Any]] | None:
                    rows = await deliveries(s, sub)
                    return rows if rows and rows[0]["state"] == "delivered" else None

                (delivery,) = await eventually(delivered)
    assert delivery["event_type"] == "case.created"
    assert delivery["event_id"] == receiver.event_ids()[0]
    assert delivery["attempts"] == 3
    assert delivery["delivered_at"] == delivery["last_attempt_at"]
    log = delivery["attempt_log"]
    assert [(a["outcome"], a["response_code"]) for a in log] == [
        ("retrying", 503),
        ("retrying", 500),
        ("delivered", 200),
    ]
    assert log[0]["error"] == "Retryable: receiver answered 503"
    assert log[2]["error"] is None
    assert log[1]["duration_ms"] >= 200  # the receiver took 0.2 s
    assert not any(a["redelivery"] for a in log)
    assert case["id"]


async def test_a_held_delivery_is_redelivered_with_the_same_event_id(
    fresh_url: str,  # noqa: F811
) -> None:
    state = {"status": 410}
    with WebhookReceiver(lambda _n: (state["status"], {}, 0.0)) as receiver:
        settings = job_settings(fresh_url, None)
        async with setup(fresh_url, settings) as s:
            sub = await s.subscribe(receiver.url(), ["case.created"])
            await s.api.case(await s.api.location())
            async with worker(settings, fresh_url):

                async def held() -> list[dict[str, Any]] | None:
                    rows = await deliveries(s, sub)
                    return rows if rows and rows[0]["state"] == "held" else None

                (delivery,) = await eventually(held)
            assert [(a["outcome"], a["response_code"]) for a in delivery["attempt_log"]] == [
                ("held", 410)
            ]
            path = f"/v1/webhook-subscriptions/{sub}/deliveries/{delivery['id']}/redeliver"
            first = await s.api.post(path, {})
            assert first.status_code == 202, first.text
            assert first.json()["event_id"] == delivery["event_id"]
            again = await s.api.post(path, {})  # no worker runs: the first is still queued
            assert again.status_code == 409, again.text
            state["status"] = 200
            async with worker(settings, fresh_url):
                await eventually(lambda: len(receiver.received) == 2)

                async def redelivered() -> list[dict[str, Any]] | None:
                    rows = await deliveries(s, sub)
                    return rows if rows and rows[0]["state"] == "delivered" else None

                (done,) = await eventually(redelivered)
            assert receiver.event_ids()[0] == receiver.event_ids()[1]
            assert [(a["outcome"], a["redelivery"]) for a in done["attempt_log"]] == [
                ("held", False),
                ("delivered", True),
            ]
            # The redelivery's dedupe key is free again: it can be sent once more.
            assert (await s.api.post(path, {})).status_code == 202


async def test_unknown_subscriptions_and_deliveries_are_404(fresh_url: str) -> None:  # noqa: F811
    async with setup(fresh_url, job_settings(fresh_url, None)) as s:
        r = await s.api.get("/v1/webhook-subscriptions/999999/deliveries")
        assert r.status_code == 404
        sub = await s.subscribe("https://example.test/hook", ["case.created"])
        r = await s.api.post(f"/v1/webhook-subscriptions/{sub}/deliveries/999999/redeliver", {})
        assert r.status_code == 404
        r = await s.api.get(f"/v1/webhook-subscriptions/{sub}/deliveries?limit=0")
        assert r.status_code == 422

"""What a case event turns into, written in one transaction by a worker.

Per recipient an in-app notification row (unique per event and user, so a second
run inserts nothing) and an email job; per matching active webhook subscription a
delivery job. The jobs' dedupe keys make a second run queue nothing that is still
queued or running; a delivery that already finished may be sent again, which its
receiver recognises by the idempotency key (Message-ID, X-Tragwerk-Event-Id).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from tragwerk.store.outbox import EMAIL, WEBHOOK, Job, enqueue
from tragwerk.store.queries.deliveries import create_deliveries, webhook_payload
from tragwerk.store.tables import notifications, users, webhook_subscriptions

TITLES = {
    "case.created": "New case {number}: {title}",
    "case.updated": "Case {number} was updated",
    "case.assigned": "You were assigned case {number}: {title}",
    "case.status_changed": "Case {number} is now {status}",
    "case.sla_at_risk": "Case {number} is close to its SLA deadline",
    "case.sla_breached": "Case {number} has passed its SLA deadline",
}


@dataclass(frozen=True)
class FanOut:
    notifications: int
    emails: int
    webhooks: int


def describe(event: dict[str, Any]) -> tuple[str, str]:
    """Title and body of the notification and email for `event`."""
    case = event["case"]
    title = TITLES[event["type"]].format(
        number=case["number"], title=case["title"], status=case["status"]
    )
    body = (
        f"{title}\n\n"
        f"Case:     {case['number']} - {case['title']}\n"
        f"Status:   {case['status']}\n"
        f"Priority: {case['priority']}\n"
        f"SLA due:  {case['sla_due_at']}\n"
    )
    return title, body


_RECORD_EVENT = text(
    """
    INSERT INTO case_events (event_id, case_id, event_type, occurred_at, body, notified)
    VALUES (:event_id, :case_id, :event_type,
            CAST(CAST(:occurred_at AS text) AS timestamptz), :body,
            CAST(:notified AS bigint[]))
    ON CONFLICT (event_id) DO NOTHING
    """
)


async def fan_out(
    engine: AsyncEngine, event: dict[str, Any], priority: int, *, email: bool
) -> FanOut:
    case = event["case"]
    event_id = event["id"]
    recipient_ids = event["recipients"]
    if recipient_ids is None:
        recipient_ids = [a["user_id"] for a in case.get("assignees", [])]
    title, body = describe(event)
    async with engine.begin() as conn:
        recipients = (
            (
                await conn.execute(
                    select(users.c.id, users.c.email, users.c.name).where(
                        users.c.id.in_(recipient_ids), users.c.active
                    )
                )
            ).all()
            if recipient_ids
            else []
        )
        inserted = 0
        if recipients:
            result = await conn.execute(
                pg_insert(notifications)
                .values(
                    [
                        {
                            "user_id": r.id,
                            "case_id": case["id"],
                            "kind": event["type"],
                            "title": title,
                            "body": body,
                            "event_id": event_id,
                        }
                        for r in recipients
                    ]
                )
                .on_conflict_do_nothing(
                    index_elements=["event_id", "user_id"],
                    index_where=notifications.c.event_id.is_not(None),
                )
                .returning(notifications.c.id)
            )
            inserted = len(result.all())
        subscriptions = (
            (
                await conn.execute(
                    select(webhook_subscriptions.c.id).where(
                        webhook_subscriptions.c.active,
                        webhook_subscriptions.c.event_types.overlap([event["type"], "*"]),
                    )
                )
            )
            .scalars()
            .all()
        )
        jobs: list[Job] = []
        if email:
            for r in recipients:
                jobs.append(
                    Job(
                        EMAIL,
                        orjson.dumps(
                            {
                                "event_id": event_id,
                                "user_id": r.id,
                                "to": r.email,
                                "name": r.name,
                                "subject": title,
                                "body": body,
                            }
                        ),
                        priority,
                        dedupe_key=f"email:{event_id}:{r.id}",
                    )
                )
        delivery = orjson.dumps(
            {
                "id": event_id,
                "type": event["type"],
                "occurred_at": event["occurred_at"],
                "case": case,
            },
            option=orjson.OPT_NON_STR_KEYS,
        )
        # The event as fanned out, and the delivery log's rows, in this transaction: a
        # delivery exists exactly when its job was queued (tragwerk reconcile checks it).
        await conn.execute(
            _RECORD_EVENT,
            {
                "event_id": event_id,
                "case_id": case["id"],
                "event_type": event["type"],
                "occurred_at": event["occurred_at"],
                "body": delivery.decode(),
                "notified": [r.id for r in recipients],
            },
        )
        delivery_ids = await create_deliveries(
            conn, event_id, event["type"], delivery.decode(), list(subscriptions)
        )
        for subscription_id in subscriptions:
            jobs.append(
                Job(
                    WEBHOOK,
                    orjson.dumps(
                        webhook_payload(
                            event_id,
                            event["type"],
                            subscription_id,
                            delivery.decode(),
                            delivery_ids[subscription_id],
                        )
                    ),
                    priority,
                    dedupe_key=f"webhook:{event_id}:{subscription_id}",
                )
            )
        await enqueue(conn, jobs)
    return FanOut(inserted, len(recipients) if email else 0, len(subscriptions))


async def subscription_target(engine: AsyncEngine, subscription_id: int) -> tuple[str, str] | None:
    """URL and secret of an active subscription, or None if it was deleted or deactivated."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(webhook_subscriptions.c.url, webhook_subscriptions.c.secret).where(
                    webhook_subscriptions.c.id == subscription_id,
                    webhook_subscriptions.c.active,
                )
            )
        ).first()
    return None if row is None else (row.url, row.secret)

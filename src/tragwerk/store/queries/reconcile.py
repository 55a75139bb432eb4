"""Proof that nothing went missing: what should have happened against what did.

Three comparisons over a recent window (`tragwerk reconcile`, and every worker's
periodic check):

1. Every change in `case_history` that queued an event has that event either still
   in the queue (its job: dedupe key `event:<id>`, queued, running or held) or
   fanned out (`case_events`). A gap (the job deleted by hand, lost in a restore) is
   re-driven: the event is queued again with its id, built from the case as it is now
   (the case as it was is not kept anywhere else).
2. Every fanned-out event has a notification for each user it notified (the fan-out
   records who); a missing one is written again with the event's title and body.
3. Every fanned-out event has one delivery per subscription that was active and
   subscribed to its type when it was fanned out. A gap is re-driven: the delivery
   is written and its job queued with the event's id and body, so the receiver gets
   the same `X-Tragwerk-Event-Id` it would have got.

Changes younger than `grace` are left alone: their jobs may simply not have run yet.
Not compared: emails (whether a mail server took one is not recorded), SLA events
(they have no history row).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tragwerk.domain.events import EventType
from tragwerk.store.outbox import WEBHOOK, Job, case_event, enqueue
from tragwerk.store.queries.deliveries import create_deliveries, webhook_payload
from tragwerk.store.queries.events import describe

# Only one process reconciles at a time (the periodic check runs in every worker).
ADVISORY_LOCK = 0x7472_6167_7265_636F  # "tragreco"

_MISSING_EVENTS = text(
    """
    SELECT h.event_id, h.event_type, h.case_id, h.at
    FROM case_history h
    WHERE h.at > now() - CAST(:since AS interval)
      AND h.at < now() - CAST(:grace AS interval)
      AND h.event_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM case_events e WHERE e.event_id = h.event_id)
      AND NOT EXISTS (SELECT 1 FROM pgqueuer q WHERE q.dedupe_key = 'event:' || h.event_id)
    ORDER BY h.at
    LIMIT :limit
    """
)

_MISSING_DELIVERIES = text(
    """
    SELECT e.event_id, e.event_type, e.body, s.id AS subscription_id
    FROM case_events e
    JOIN webhook_subscriptions s
      ON s.active
     AND s.event_types && ARRAY[e.event_type, '*']
     AND s.created_at <= e.fanned_out_at
    WHERE e.fanned_out_at > now() - CAST(:since AS interval)
      AND e.fanned_out_at < now() - CAST(:grace AS interval)
      AND NOT EXISTS (
          SELECT 1 FROM webhook_deliveries d
          WHERE d.event_id = e.event_id AND d.subscription_id = s.id)
    ORDER BY e.fanned_out_at
    LIMIT :limit
    """
)

_MISSING_NOTIFICATIONS = text(
    """
    SELECT e.event_id, e.event_type, e.case_id, e.body, u.user_id
    FROM case_events e
    CROSS JOIN LATERAL unnest(e.notified) AS u(user_id)
    WHERE e.fanned_out_at > now() - CAST(:since AS interval)
      AND e.fanned_out_at < now() - CAST(:grace AS interval)
      AND NOT EXISTS (
          SELECT 1 FROM notifications n
          WHERE n.event_id = CAST(e.event_id AS uuid) AND n.user_id = u.user_id)
    ORDER BY e.fanned_out_at
    LIMIT :limit
    """
)

_RESTORE_NOTIFICATION = text(
    """
    INSERT INTO notifications (user_id, case_id, kind, title, body, event_id)
    SELECT CAST(:user_id AS bigint), c.id, :kind, :title, :body, CAST(:event_id AS uuid)
    FROM (SELECT CAST(:case_id AS bigint) AS id) wanted LEFT JOIN cases c ON c.id = wanted.id
    ON CONFLICT (event_id, user_id) WHERE event_id IS NOT NULL DO NOTHING
    """
)

_PRUNE_EVENTS = text(
    "DELETE FROM case_events WHERE fanned_out_at < now() - CAST(:keep AS interval)"
)


@dataclass
class Report:
    """What one reconciliation found and re-drove."""

    missing_events: list[dict[str, Any]] = field(default_factory=list)
    missing_deliveries: list[dict[str, Any]] = field(default_factory=list)
    missing_notifications: list[dict[str, Any]] = field(default_factory=list)
    skipped: bool = False  # another process was reconciling

    @property
    def gaps(self) -> int:
        return (
            len(self.missing_events)
            + len(self.missing_deliveries)
            + len(self.missing_notifications)
        )


CaseReader = Callable[[AsyncConnection, int], Awaitable[dict[str, Any] | None]]


async def reconcile(
    engine: AsyncEngine,
    case_reader: CaseReader,
    *,
    since: timedelta,
    grace: timedelta = timedelta(minutes=2),
    limit: int = 1000,
    dry_run: bool = False,
) -> Report:
    """Find the gaps of the last `since` and (unless `dry_run`) queue each again, once:
    a re-driven event or delivery is in the queue or recorded, so the next run does not
    find it again. `case_reader(conn, case_id)` returns a case as the API shows it."""
    report = Report()
    params = {"since": since, "grace": grace, "limit": limit}
    async with engine.begin() as conn:
        locked = (
            await conn.execute(
                text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK}
            )
        ).scalar_one()
        if not locked:
            report.skipped = True
            return report
        events = [dict(r) for r in (await conn.execute(_MISSING_EVENTS, params)).mappings()]
        deliveries = [dict(r) for r in (await conn.execute(_MISSING_DELIVERIES, params)).mappings()]
        notices = [dict(r) for r in (await conn.execute(_MISSING_NOTIFICATIONS, params)).mappings()]
        report.missing_events = events
        report.missing_deliveries = deliveries
        report.missing_notifications = notices
        if dry_run:
            return report
        for notice in notices:
            title, body = describe(orjson.loads(notice["body"]))
            await conn.execute(
                _RESTORE_NOTIFICATION,
                {
                    "user_id": notice["user_id"],
                    "case_id": notice["case_id"],
                    "kind": notice["event_type"],
                    "title": title,
                    "body": body,
                    "event_id": notice["event_id"],
                },
            )
        jobs: list[Job] = []
        for event in events:
            case = await case_reader(conn, event["case_id"])
            if case is None:
                continue  # the case was deleted since: nobody to tell about it
            jobs.append(
                case_event(
                    EventType(event["event_type"]),
                    case,
                    event["at"],
                    None,
                    event["event_id"],
                )
            )
        for gap in deliveries:
            ids = await create_deliveries(
                conn, gap["event_id"], gap["event_type"], gap["body"], [gap["subscription_id"]]
            )
            payload = webhook_payload(
                gap["event_id"],
                gap["event_type"],
                gap["subscription_id"],
                gap["body"],
                ids[gap["subscription_id"]],
            )
            jobs.append(
                Job(
                    WEBHOOK,
                    orjson.dumps(payload),
                    200,
                    dedupe_key=f"webhook:{gap['event_id']}:{gap['subscription_id']}",
                )
            )
        await enqueue(conn, jobs)
    return report


async def prune_events(engine: AsyncEngine, keep: timedelta) -> int:
    async with engine.begin() as conn:
        return int((await conn.execute(_PRUNE_EVENTS, {"keep": keep})).rowcount)

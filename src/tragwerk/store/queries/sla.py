"""The SLA monitor's scan: raise each case's SLA alert once, with its event.

One statement per threshold claims the cases that crossed it by inserting into
sla_alerts (primary key case, threshold, deadline) with ON CONFLICT DO NOTHING, and
the events are queued in the same transaction. Two workers scanning at once: the
second waits on the first's rows and then inserts nothing, so no alert is raised
twice, and a rolled-back scan raises nothing.

The claim locks the claimed case rows (FOR SHARE) until the transaction ends, so the
case read for the event's payload is the very version the alert was raised for: a
priority or deadline change in between waits for the scan to commit (and then gets
its own alert at the next scan) instead of slipping its new deadline into the old
alert's event. Rows a writer holds at that moment are skipped (SKIP LOCKED) and
claimed at the next scan: the monitor never waits on a case write, and cannot
deadlock with one.

The scan uses cases_sla_open_idx (open cases by deadline) and looks back only
`lookback` past the deadline, so cases that breached long ago (before the monitor
ran, say) do not flood the receivers, and each scan stays a short index range.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tragwerk.domain.events import EventType
from tragwerk.store.outbox import case_event, enqueue
from tragwerk.store.queries.cases import DETAIL_COLUMNS, assignees_of
from tragwerk.store.tables import cases

_CLAIM = text(
    """
    WITH crossing AS (
        SELECT c.id, c.sla_due_at
        FROM cases c
        WHERE c.status IN ('open', 'in_progress', 'waiting')
          AND c.sla_due_at <= now() + CAST(:ahead AS interval)
          AND c.sla_due_at > now() - CAST(:lookback AS interval)
          AND (CAST(:threshold AS text) = 'breached' OR c.sla_due_at > now())
          AND NOT EXISTS (
              SELECT 1 FROM sla_alerts a
              WHERE a.case_id = c.id AND a.threshold = :threshold AND a.due_at = c.sla_due_at)
        ORDER BY c.sla_due_at, c.id
        LIMIT :batch
        FOR SHARE OF c SKIP LOCKED
    )
    INSERT INTO sla_alerts (case_id, threshold, due_at)
    SELECT id, :threshold, sla_due_at FROM crossing
    ON CONFLICT DO NOTHING
    RETURNING case_id
    """
)


async def raise_alerts(
    engine: AsyncEngine,
    *,
    at_risk_within: timedelta,
    lookback: timedelta,
    batch: int = 500,
) -> dict[str, int]:
    """Raise due alerts for both thresholds; how many of each were raised."""
    raised: dict[str, int] = {}
    for threshold, event_type, ahead in (
        ("breached", EventType.SLA_BREACHED, timedelta(0)),
        ("at_risk", EventType.SLA_AT_RISK, at_risk_within),
    ):
        total = 0
        while True:
            async with engine.begin() as conn:
                ids = [
                    int(r[0])
                    for r in (
                        await conn.execute(
                            _CLAIM,
                            {
                                "threshold": threshold,
                                "ahead": ahead,
                                "lookback": lookback,
                                "batch": batch,
                            },
                        )
                    ).all()
                ]
                if not ids:
                    break
                rows = [
                    dict(r)
                    for r in (
                        await conn.execute(
                            cases.select()
                            .with_only_columns(*DETAIL_COLUMNS)
                            .where(cases.c.id.in_(ids))
                        )
                    ).mappings()
                ]
                by_case = await assignees_of(conn, ids)
                now = (await conn.execute(text("SELECT now()"))).scalar_one()
                jobs = []
                for row in rows:
                    row["assignees"] = by_case[row["id"]]
                    jobs.append(case_event(event_type, row, now))
                await enqueue(conn, jobs)
            total += len(ids)
            if len(ids) < batch:
                break
        raised[threshold] = total
    return raised

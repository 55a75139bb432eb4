"""Jobs written inside the caller's transaction: commit makes them exist, rollback never.

The rows go into pgqueuer's queue table through pgqueuer's own enqueue statement
(built once here), executed on the transaction's asyncpg connection. The table's
statement-level trigger sends one NOTIFY per INSERT, delivered at commit, which
wakes the workers; a rolled-back transaction sends nothing.

Jobs carry a dedupe key, and an insert whose key is already queued or running is
skipped: a fan-out that runs twice after a worker crash queues each delivery once.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from pgqueuer.adapters.persistence.qb import QueryQueueBuilder
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tragwerk.domain.cases import Priority
from tragwerk.domain.events import EventType, job_priority
from tragwerk.store.hot import Tx

# Entrypoint names: the kinds of job a worker runs.
CASE_EVENT = "case_event"
EMAIL = "email"
WEBHOOK = "webhook"
NOOP = "noop"
NOTIFICATION_ONLY = "notification"  # benchmark: write one notification row

# pgqueuer's own enqueue statement, built once (tests name it among the write statements).
ENQUEUE_SQL = QueryQueueBuilder().build_enqueue_query("skip")
_BEGIN = text("SELECT 1")


@dataclass(frozen=True)
class Job:
    entrypoint: str
    payload: bytes
    priority: int
    dedupe_key: str | None = None
    delay: timedelta | None = None


async def enqueue(conn: AsyncConnection, jobs: Sequence[Job]) -> list[int | None]:
    """Insert `jobs` in the transaction of `conn`; None where the dedupe key was taken."""
    if not jobs:
        return []
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    if not raw.is_in_transaction():
        # SQLAlchemy's asyncpg adapter opens the transaction with its first statement;
        # a job written first must not slip out in autocommit mode.
        await conn.execute(_BEGIN)
        if not raw.is_in_transaction():
            raise RuntimeError("jobs must be enqueued inside a transaction (engine.begin())")
    return _ids(jobs, await raw.fetch(ENQUEUE_SQL, *_arguments(jobs)))


async def enqueue_in(tx: Tx, jobs: Sequence[Job]) -> list[int | None]:
    """`enqueue` in a transaction of store.hot (the case writes)."""
    if not jobs:
        return []
    return _ids(jobs, await tx.fetch(ENQUEUE_SQL, *_arguments(jobs)))


def _arguments(jobs: Sequence[Job]) -> list[list[Any]]:
    return [
        [j.priority for j in jobs],
        [j.entrypoint for j in jobs],
        [j.payload for j in jobs],
        [j.delay or timedelta(0) for j in jobs],
        [j.dedupe_key for j in jobs],
        ["{}"] * len(jobs),
    ]


def _ids(jobs: Sequence[Job], rows: Sequence[Any]) -> list[int | None]:
    ids: list[int | None] = [None] * len(jobs)
    for row in rows:
        ids[row["ord"] - 1] = row["id"]
    return ids


def case_event(
    event_type: EventType,
    case: dict[str, Any],
    now: datetime,
    recipients: Sequence[int] | None = None,
    event_id: str | None = None,
) -> Job:
    """One case event as a job; its worker fans it out into notifications, mail, webhooks.

    `case` is the case as the API shows it after the change, so every receiver sees
    the state the event describes, not whatever the case looks like when the job runs.
    `recipients` narrows who is told (an assignment tells the new assignees only);
    None means every assignee.
    """
    event_id = event_id or str(uuid.uuid4())
    payload = {
        "id": event_id,
        "type": event_type.value,
        "occurred_at": now,
        "case": case,
        "recipients": None if recipients is None else list(recipients),
    }
    priority = job_priority(event_type, Priority(case["priority"]), case["sla_due_at"], now)
    return Job(
        CASE_EVENT,
        orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS),
        priority,
        dedupe_key=f"event:{event_id}",
    )

"""The webhook delivery log (migration 0009): deliveries, their attempts, redelivery.

A delivery is one event for one subscription, written by the fan-out in the
transaction that queues its job (store.queries.events); each attempt the worker makes
is recorded with one statement (record_attempt). Listing reads a subscription's
deliveries newest first by the (subscription_id, id DESC) index, then their attempts.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import asyncpg
import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tragwerk.domain.errors import Conflict, NotFound
from tragwerk.store.outbox import WEBHOOK, Job, enqueue
from tragwerk.store.queries import Row, read_only

log = logging.getLogger(__name__)

ATTEMPTS_SHOWN = 20  # per delivery in a listing: the newest ones

_CREATE = text(
    """
    INSERT INTO webhook_deliveries (subscription_id, event_id, event_type, body)
    SELECT unnest(CAST(:subscriptions AS bigint[])), :event_id, :event_type, :body
    ON CONFLICT (event_id, subscription_id) DO UPDATE SET event_type = excluded.event_type
    RETURNING id, subscription_id
    """
)

_RECORD = """
    WITH attempt AS (
        INSERT INTO webhook_delivery_attempts
            (delivery_id, duration_ms, response_code, outcome, error, redelivery)
        VALUES ($1, $2, $3, $4, $5, $6)
        RETURNING attempted_at
    )
    UPDATE webhook_deliveries
    SET attempts = attempts + 1, state = $4,
        last_attempt_at = (SELECT attempted_at FROM attempt),
        delivered_at = CASE WHEN $4 = 'delivered' THEN (SELECT attempted_at FROM attempt)
                            ELSE delivered_at END
    WHERE id = $1
"""

_LIST = text(
    """
    SELECT id, subscription_id, event_id, event_type, created_at, state, attempts,
           last_attempt_at, delivered_at
    FROM webhook_deliveries
    WHERE subscription_id = :subscription_id AND id < :before
    ORDER BY id DESC
    LIMIT :limit
    """
)
_ATTEMPTS = text(
    """
    SELECT delivery_id, attempted_at, duration_ms, response_code, outcome, error, redelivery
    FROM (
        SELECT a.*, row_number() OVER (PARTITION BY delivery_id ORDER BY id DESC) AS n
        FROM webhook_delivery_attempts a
        WHERE delivery_id = ANY(CAST(:ids AS bigint[]))
    ) newest
    WHERE n <= :shown
    ORDER BY delivery_id, attempted_at
    """
)
_ONE = text(
    """
    SELECT id, subscription_id, event_id, event_type, body, state
    FROM webhook_deliveries WHERE id = :id AND subscription_id = :subscription_id
    """
)
_PRUNE = text(
    """
    DELETE FROM webhook_deliveries
    WHERE id IN (SELECT id FROM webhook_deliveries
                 WHERE created_at < now() - CAST(:keep AS interval)
                   AND state IN ('delivered', 'held')
                 ORDER BY created_at LIMIT :batch)
    """
)


async def create_deliveries(
    conn: AsyncConnection,
    event_id: str,
    event_type: str,
    body: str,
    subscriptions: list[int],
) -> dict[int, int]:
    """One delivery per subscription, in the caller's transaction: subscription -> id."""
    if not subscriptions:
        return {}
    rows = await conn.execute(
        _CREATE,
        {
            "subscriptions": subscriptions,
            "event_id": event_id,
            "event_type": event_type,
            "body": body,
        },
    )
    return {int(r.subscription_id): int(r.id) for r in rows}


async def record_attempt(
    pool: asyncpg.Pool,
    delivery_id: int,
    *,
    duration_ms: float,
    response_code: int | None,
    outcome: str,
    error: str | None,
    redelivery: bool,
) -> None:
    """Record one attempt; never raises (the log must not fail a delivery)."""
    try:
        await pool.execute(
            _RECORD,
            delivery_id,
            duration_ms,
            response_code,
            outcome,
            None if error is None else error[:1000],
            redelivery,
        )
    except Exception as exc:  # noqa: BLE001 - e.g. the subscription was deleted meanwhile
        log.warning("could not record webhook delivery attempt %s: %r", delivery_id, exc)


class DeliveryStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reader = read_only(engine)

    async def listing(self, subscription_id: int, before: int, limit: int) -> list[Row]:
        """Deliveries newest first (ids below `before`), each with its newest attempts."""
        async with self._reader.connect() as conn:
            params = {"subscription_id": subscription_id, "before": before, "limit": limit}
            deliveries = [dict(r) for r in (await conn.execute(_LIST, params)).mappings()]
            attempts: dict[int, list[Row]] = {d["id"]: [] for d in deliveries}
            if deliveries:
                rows = await conn.execute(
                    _ATTEMPTS, {"ids": list(attempts), "shown": ATTEMPTS_SHOWN}
                )
                for row in rows.mappings():
                    attempt = dict(row)
                    attempts[attempt.pop("delivery_id")].append(attempt)
        for delivery in deliveries:
            delivery["attempt_log"] = attempts[delivery["id"]]
        return deliveries

    async def redeliver(self, subscription_id: int, delivery_id: int) -> Row:
        """Queue the delivery again (same event id, so receivers can deduplicate);
        Conflict if it is already queued."""
        async with self._engine.begin() as conn:
            row = (
                (await conn.execute(_ONE, {"id": delivery_id, "subscription_id": subscription_id}))
                .mappings()
                .first()
            )
            if row is None:
                raise NotFound(
                    f"delivery {delivery_id} of subscription {subscription_id} does not exist"
                )
            payload = webhook_payload(
                row["event_id"], row["event_type"], subscription_id, row["body"], delivery_id
            )
            payload["redelivery"] = True
            (job_id,) = await enqueue(
                conn,
                [
                    Job(
                        WEBHOOK,
                        orjson.dumps(payload),
                        # Asked for by a person: ahead of the bulk of deliveries.
                        350,
                        dedupe_key=f"webhook:{row['event_id']}:{subscription_id}:redeliver",
                    )
                ],
            )
            if job_id is None:
                raise Conflict(f"delivery {delivery_id} is already queued for redelivery")
        return {"delivery_id": delivery_id, "job_id": job_id, "event_id": row["event_id"]}

    async def prune(self, keep: timedelta, batch: int = 5000) -> int:
        async with self._engine.begin() as conn:
            result = await conn.execute(_PRUNE, {"keep": keep, "batch": batch})
        return int(result.rowcount)


def webhook_payload(
    event_id: str, event_type: str, subscription_id: int, body: str, delivery_id: int | None
) -> dict[str, Any]:
    """The payload of a webhook job (jobs.handlers.Handlers.webhook reads it)."""
    return {
        "event_id": event_id,
        "event_type": event_type,
        "subscription_id": subscription_id,
        "body": body,
        "delivery_id": delivery_id,
    }

"""The job queue seen from outside a worker: held jobs, orphaned jobs, requeueing,
queue figures.

Reads pgqueuer's tables directly (their layout is frozen by migration 0005). A held
job is one whose last attempt failed (pgqueuer status 'failed'); its last error is
the newest traceback in pgqueuer_log. An orphaned job is one a worker claimed
(status 'picked') and stopped sending heartbeats for: the worker died. Any worker
claims it again as soon as the heartbeat timeout has passed; until one does, it is
listed here with the id of the worker that had it (`queue_manager_id`, the one its
`worker started` log line gives).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tragwerk.domain.queue_scaling import CLASS_FLOORS
from tragwerk.store.queries import Row, read_only

_HELD = text(
    """
    SELECT j.id, j.entrypoint AS kind, j.priority, j.attempts, j.created, j.updated,
           j.dedupe_key, convert_from(j.payload, 'UTF8') AS payload,
           (SELECT l.traceback FROM pgqueuer_log l
             WHERE l.job_id = j.id AND l.traceback IS NOT NULL
             ORDER BY l.created DESC LIMIT 1) AS last_error
    FROM pgqueuer j
    WHERE j.status = 'failed' AND j.id > :after
    ORDER BY j.id
    LIMIT :limit
    """
)

_ORPHANED = text(
    """
    SELECT j.id, j.entrypoint AS kind, j.priority, j.attempts, j.created,
           CAST(j.queue_manager_id AS text) AS worker, j.heartbeat AS last_heartbeat,
           CAST(extract(epoch FROM now() - j.heartbeat) AS float8) AS silent_seconds
    FROM pgqueuer j
    WHERE j.status = 'picked' AND j.heartbeat < now() - CAST(:timeout AS interval)
      AND j.id > :after
    ORDER BY j.id
    LIMIT :limit
    """
)

# pgqueuer's requeue statement (QueryQueueBuilder.build_requeue_jobs_query), with
# RETURNING so that the caller learns which ids were held.
_REQUEUE = text(
    """
    WITH requeued AS (
        UPDATE pgqueuer
        SET status = 'queued', execute_after = now(), updated = now(),
            attempts = 0, queue_manager_id = NULL
        WHERE status = 'failed' AND (CAST(:all AS boolean) OR id = ANY(:ids))
        RETURNING id, entrypoint, priority
    ), logged AS (
        INSERT INTO pgqueuer_log (job_id, status, entrypoint, priority)
        SELECT id, 'queued', entrypoint, priority FROM requeued
    )
    SELECT id FROM requeued ORDER BY id
    """
)

_RELEASE = text(
    """
    UPDATE pgqueuer
    SET status = 'queued', queue_manager_id = NULL, slot = NULL, updated = now()
    WHERE queue_manager_id = :manager AND status = 'picked'
    """
)

# pgqueuer writes a log row per job and state and never deletes them; rows past the
# retention go, in slices, except those of jobs still in the queue (a held job's last
# error lives there). One worker at a time: the advisory lock makes the rest skip.
_PRUNE = text(
    """
    WITH guard AS (SELECT pg_try_advisory_xact_lock(7215000002) AS proceed),
    doomed AS (
        SELECT l.id FROM pgqueuer_log l, guard
        WHERE guard.proceed AND l.created < now() - CAST(:keep AS interval)
          AND NOT EXISTS (SELECT 1 FROM pgqueuer j WHERE j.id = l.job_id)
        LIMIT :slice
    )
    DELETE FROM pgqueuer_log WHERE id IN (SELECT id FROM doomed)
    """
)

# A claimed job whose worker has been silent past the heartbeat timeout counts as
# 'orphaned'; claimed jobs with a live worker are not counted here (the workers
# export their own running jobs).
_STATS = text(
    """
    SELECT entrypoint,
           CASE WHEN status = 'picked' THEN 'orphaned' ELSE status::text END AS status,
           CASE WHEN priority >= 900 THEN 'sla'
                WHEN priority >= 400 THEN 'critical'
                WHEN priority >= 300 THEN 'high'
                WHEN priority >= 200 THEN 'normal'
                WHEN priority >= 100 THEN 'low'
                ELSE 'other' END AS band,
           count(*) AS jobs,
           -- How long the longest-waiting job that may run now has waited since it
           -- became due: a job waiting out its retry backoff is not late.
           coalesce(extract(epoch FROM now() - min(greatest(created, execute_after))
                    FILTER (WHERE status = 'queued' AND execute_after <= now())), 0)
             AS oldest_seconds
    FROM pgqueuer
    WHERE status IN ('queued', 'failed')
       OR (status = 'picked' AND heartbeat < now() - CAST(:timeout AS interval))
    GROUP BY 1, 2, 3
    """
)


def _class_case() -> str:
    whens = " ".join(
        f"WHEN priority >= {floor} THEN '{name}'" for name, floor in CLASS_FLOORS if floor
    )
    return f"CASE {whens} ELSE 'bulk' END"


# Per priority class (tragwerk.domain.queue_scaling), the jobs that may run now and how
# long the oldest of them has waited since it became due; the autoscaler's input and
# tragwerk_jobs_oldest_queued_seconds. Reads only queued rows (the partial indexes
# on status = 'queued'), whatever the size of the log.
LAG_SQL = f"""
    SELECT {_class_case()} AS class, count(*) AS queued,
           CAST(extract(epoch FROM now() - min(greatest(created, execute_after))) AS float8)
             AS oldest_seconds
    FROM pgqueuer
    WHERE status = 'queued' AND execute_after <= now()
    GROUP BY 1
"""
_LAG = text(LAG_SQL)


def keda_lag_query(budgets: Mapping[str, float]) -> str:
    """The lag query as one integer for KEDA's postgresql scaler (deploy/kubernetes):
    how many of its budgets the latest class's oldest due job has waited, rounded up;
    0 when nothing is due. With targetQueryValue 1 the worker Deployment gets that many
    replicas (between KEDA's minimum and maximum)."""
    values = ", ".join(f"('{name}', {seconds:g})" for name, seconds in budgets.items())
    return (
        "SELECT CAST(ceil(coalesce(max(lag.oldest_seconds / b.budget), 0)) AS bigint)"
        f" FROM ({' '.join(LAG_SQL.split())}) AS lag"
        f" JOIN (VALUES {values}) AS b(class, budget) USING (class)"
    )


def _last_error(value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    kind = value.get("exception_type") or "error"
    message = value.get("exception_message") or ""
    return f"{kind}: {message}".strip(": ")


@dataclass
class QueueSummary:
    """One reading of the queue (JobStore.stats) by what an operator asks about."""

    held: dict[str, int] = field(default_factory=dict)  # kind -> jobs
    orphaned: dict[str, int] = field(default_factory=dict)  # kind -> jobs
    # band -> {"queued": jobs, "oldest_seconds": the oldest due job's wait}
    bands: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: list[Row]) -> QueueSummary:
        summary = cls()
        for row in rows:
            kind, count = str(row["entrypoint"]), int(row["jobs"])
            if row["status"] == "failed":
                summary.held[kind] = summary.held.get(kind, 0) + count
            elif row["status"] == "orphaned":
                summary.orphaned[kind] = summary.orphaned.get(kind, 0) + count
            else:
                band = summary.bands.setdefault(
                    str(row["band"]), {"queued": 0, "oldest_seconds": 0.0}
                )
                band["queued"] += count
                band["oldest_seconds"] = max(band["oldest_seconds"], float(row["oldest_seconds"]))
        return summary


class JobStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reader = read_only(engine)

    async def held(self, after: int, limit: int) -> list[Row]:
        async with self._reader.connect() as conn:
            rows = [
                dict(r)
                for r in (await conn.execute(_HELD, {"after": after, "limit": limit})).mappings()
            ]
        for row in rows:
            row["last_error"] = _last_error(row["last_error"])
        return rows

    async def orphaned(self, heartbeat_timeout: timedelta, after: int, limit: int) -> list[Row]:
        """Claimed jobs whose worker has sent no heartbeat for `heartbeat_timeout`."""
        params = {"timeout": heartbeat_timeout, "after": after, "limit": limit}
        async with self._reader.connect() as conn:
            return [dict(r) for r in (await conn.execute(_ORPHANED, params)).mappings()]

    async def requeue(self, ids: list[int] | None) -> list[int]:
        """Requeue the held jobs among `ids` (all held jobs when None); their ids."""
        async with self._engine.begin() as conn:
            result = await conn.execute(_REQUEUE, {"all": ids is None, "ids": ids or []})
            return [int(r[0]) for r in result.all()]

    async def release(self, queue_manager_id: uuid.UUID) -> int:
        """Put the jobs a stopping worker still holds back in the queue, at once."""
        async with self._engine.begin() as conn:
            result = await conn.execute(_RELEASE, {"manager": queue_manager_id})
            return int(result.rowcount)

    async def prune_log(self, keep: timedelta, slice_rows: int = 10_000) -> int:
        """Delete one slice of job log rows older than `keep`; how many went."""
        async with self._engine.begin() as conn:
            result = await conn.execute(_PRUNE, {"keep": keep, "slice": slice_rows})
            return int(result.rowcount)

    async def summary(self, heartbeat_timeout: timedelta) -> QueueSummary:
        return QueueSummary.of(await self.stats(heartbeat_timeout))

    async def lag(self) -> dict[str, tuple[int, float]]:
        """class -> (jobs due now, seconds the oldest of them has waited); classes with
        nothing due are absent."""
        async with self._reader.connect() as conn:
            rows = (await conn.execute(_LAG)).mappings().all()
        return {str(r["class"]): (int(r["queued"]), float(r["oldest_seconds"])) for r in rows}

    async def stats(self, heartbeat_timeout: timedelta) -> list[Row]:
        """Jobs per kind, state (queued, failed = held, orphaned) and priority band."""
        async with self._reader.connect() as conn:
            params = {"timeout": heartbeat_timeout}
            return [dict(r) for r in (await conn.execute(_STATS, params)).mappings()]

"""In-app notifications of one user, newest first (notifications_user_idx)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from tragwerk.domain.errors import NotFound
from tragwerk.store import cursor
from tragwerk.store.queries import Page, Row, page_by_id, read_only
from tragwerk.store.tables import notifications


class NotificationStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reader = read_only(engine)

    async def for_user(
        self, user_id: int, *, unread_only: bool, after: str | None, limit: int
    ) -> Page:
        # unread_only uses the partial index notifications_user_unread_idx.
        query = select(notifications).where(notifications.c.user_id == user_id)
        if unread_only:
            query = query.where(notifications.c.read_at.is_(None))
        if after is not None:
            query = query.where(notifications.c.id < cursor.decode_id(after, "notifications"))
        async with self._reader.connect() as conn:
            rows = [
                dict(r)
                for r in (
                    await conn.execute(query.order_by(notifications.c.id.desc()).limit(limit + 1))
                ).mappings()
            ]
        return page_by_id(rows, limit, "notifications")

    async def mark_read(self, user_id: int, notification_id: int) -> Row:
        async with self._engine.begin() as conn:
            row = (
                (
                    await conn.execute(
                        notifications.update()
                        .where(
                            notifications.c.id == notification_id,
                            notifications.c.user_id == user_id,
                        )
                        .values(read_at=func.coalesce(notifications.c.read_at, func.now()))
                        .returning(*notifications.c)
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"notification {notification_id} does not exist")
        return dict(row)


_INSERT_PLAIN = (
    "INSERT INTO notifications (user_id, kind, title, body) VALUES ($1, 'notice', $2, '')"
)


async def insert_plain(pool: Any, user_id: int, title: str) -> None:
    """One notification row without a case: the job benchmark's realistic job.

    The same statement the peers in bench/jobs.py run through their drivers: one
    INSERT in autocommit (atomic by itself, one round trip), on an asyncpg pool
    directly; SQLAlchemy's connection checkout alone was a fifth of the worker's CPU
    for this job.
    """
    await pool.execute(_INSERT_PLAIN, user_id, title)

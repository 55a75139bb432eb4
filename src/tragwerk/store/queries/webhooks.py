"""Webhook subscriptions (deliveries come with the asynchronous-processing component)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from tragwerk.domain.errors import NotFound
from tragwerk.store.queries import Row, read_only
from tragwerk.store.tables import webhook_subscriptions

# The secret is write-only: it signs deliveries and is never returned.
PUBLIC_COLUMNS = (
    webhook_subscriptions.c.id,
    webhook_subscriptions.c.url,
    webhook_subscriptions.c.event_types,
    webhook_subscriptions.c.active,
    webhook_subscriptions.c.created_at,
)


class WebhookStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reader = read_only(engine)

    async def list(self) -> list[Row]:
        async with self._reader.connect() as conn:
            result = await conn.execute(
                select(*PUBLIC_COLUMNS).order_by(webhook_subscriptions.c.id)
            )
            return [dict(r) for r in result.mappings()]

    async def get(self, subscription_id: int) -> Row:
        async with self._reader.connect() as conn:
            row = (
                (
                    await conn.execute(
                        select(*PUBLIC_COLUMNS).where(webhook_subscriptions.c.id == subscription_id)
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"webhook subscription {subscription_id} does not exist")
        return dict(row)

    async def create(self, fields: dict[str, Any]) -> Row:
        async with self._engine.begin() as conn:
            row = (
                (
                    await conn.execute(
                        webhook_subscriptions.insert().values(**fields).returning(*PUBLIC_COLUMNS)
                    )
                )
                .mappings()
                .one()
            )
        return dict(row)

    async def update(self, subscription_id: int, fields: dict[str, Any]) -> Row:
        if not fields:
            return await self.get(subscription_id)
        async with self._engine.begin() as conn:
            row = (
                (
                    await conn.execute(
                        webhook_subscriptions.update()
                        .where(webhook_subscriptions.c.id == subscription_id)
                        .values(**fields)
                        .returning(*PUBLIC_COLUMNS)
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"webhook subscription {subscription_id} does not exist")
        return dict(row)

    async def delete(self, subscription_id: int) -> None:
        async with self._engine.begin() as conn:
            deleted = await conn.scalar(
                webhook_subscriptions.delete()
                .where(webhook_subscriptions.c.id == subscription_id)
                .returning(webhook_subscriptions.c.id)
            )
        if deleted is None:
            raise NotFound(f"webhook subscription {subscription_id} does not exist")

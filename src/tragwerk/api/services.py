"""What the routes need, built once by the composition root (tragwerk.bootstrap)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from tragwerk.api.cached import CachedReads
from tragwerk.api.limit_sync import LimitSync
from tragwerk.cache.caches import Caches
from tragwerk.monitoring.metrics import Metrics
from tragwerk.ratelimit.admission import Admission
from tragwerk.ratelimit.limiter import RequestLimiter
from tragwerk.settings import Settings
from tragwerk.store.changes import ChangeFeed
from tragwerk.store.queries.cases import CaseStore
from tragwerk.store.queries.directory import DirectoryStore
from tragwerk.store.queries.notifications import NotificationStore
from tragwerk.store.queries.webhooks import WebhookStore


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    metrics: Metrics
    cases: CaseStore
    directory: DirectoryStore
    webhooks: WebhookStore
    notifications: NotificationStore
    caches: Caches
    reads: CachedReads
    feed: ChangeFeed | None
    limiter: RequestLimiter | None = None
    admission: Admission | None = None
    limits: LimitSync | None = None

    async def start(self) -> None:
        """Start what runs beside the requests: the change feed that keeps caches true."""
        if self.limits is not None:
            await self.limits.reload()
        if self.feed is not None:
            await self.feed.start()

    async def stop(self) -> None:
        if self.feed is not None:
            await self.feed.stop()
        await self.engine.dispose()

    def rate_limit_state(self) -> str:
        if self.limiter is None:
            return "off"
        if not self.limiter.shared:
            return "ok (memory)"
        return "ok (redis)" if self.limiter.store_healthy else "failing (falling back per tier)"

    def cache_state(self) -> str:
        if self.feed is None or not self.settings.cache_enabled:
            return "off"
        return "ok" if self.feed.connected else "reconnecting (serving from the database)"

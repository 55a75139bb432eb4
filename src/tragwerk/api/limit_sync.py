"""Keeps every process's rate-limit tiers equal to the overrides stored in the database."""

from __future__ import annotations

import asyncio
import logging

from tragwerk.ratelimit.limiter import RequestLimiter
from tragwerk.ratelimit.policy import Tier
from tragwerk.store.queries.limits import LimitStore

log = logging.getLogger(__name__)


class LimitSync:
    """Keeps the limiter's tiers equal to the overrides stored in the database."""

    def __init__(self, store: LimitStore, limiter: RequestLimiter | None) -> None:
        self.store = store
        self.limiter = limiter
        self._tasks: set[asyncio.Task[None]] = set()

    async def reload(self) -> None:
        if self.limiter is None:
            return
        rows = await self.store.overrides()
        self.limiter.apply_overrides({Tier(r["tier"]): (r["rate"], r["fail_mode"]) for r in rows})

    def reload_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload())
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("reloading rate-limit tiers failed", exc_info=task.exception())

"""Keeps every process's rate-limit tiers equal to the overrides stored in the database."""

from __future__ import annotations

from tragwerk.monitoring.supervisor import Supervisor
from tragwerk.ratelimit.limiter import RequestLimiter
from tragwerk.ratelimit.policy import Tier
from tragwerk.store.queries.limits import LimitStore


class LimitSync:
    """Keeps the limiter's tiers equal to the overrides stored in the database.

    A reload that fails (the database restarting while the change feed reconnects) is
    retried by the supervisor with backoff until one succeeds; before, it was logged and
    the process kept its old tiers until the next change.
    """

    def __init__(
        self, store: LimitStore, limiter: RequestLimiter | None, supervisor: Supervisor
    ) -> None:
        self.store = store
        self.limiter = limiter
        self.supervisor = supervisor
        self._wanted = False

    async def reload(self) -> None:
        if self.limiter is None:
            return
        rows = await self.store.overrides()
        self.limiter.apply_overrides({Tier(r["tier"]): (r["rate"], r["fail_mode"]) for r in rows})

    def reload_soon(self) -> None:
        # A reload already running may have read the rows before this change: it reads
        # again when it is done (_reload_until_current).
        self._wanted = True
        self.supervisor.start("limit_sync", self._reload_until_current, restart="on-failure")

    async def _reload_until_current(self) -> None:
        while self._wanted:
            self._wanted = False
            try:
                await self.reload()
            except BaseException:
                self._wanted = True
                raise

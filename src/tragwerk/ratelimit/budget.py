"""Budgets behind one interface: `take(limit, key, cost)` spends `cost` from the budget
of `key` under `limit` and returns a Decision with what is left.

`SharedBudget` serves every request: it reserves a batch from its windows (Redis,
shared by all instances, or this process's memory) and spends it locally, so only
one request in a batch waits for the store; a refused key is refused locally until
its window moves on. `MemoryBudget` counts exactly, one window operation per call:
for failed authentications and as the fallback while Redis is unreachable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from limits import RateLimitItem
from limits.util import WindowStats

from tragwerk.ratelimit.local_windows import LocalWindows


@dataclass(slots=True)  # not frozen: a frozen init costs three times as much, per request
class Decision:
    allowed: bool
    remaining: int
    reset_seconds: int  # until enough budget returns for another request
    unavailable: bool = False  # refused because the shared store is down (fail closed)


class Budget(Protocol):
    def take_local(self, limit: RateLimitItem, key: str, cost: int) -> Decision | None: ...

    async def take(self, limit: RateLimitItem, key: str, cost: int) -> Decision: ...


class MemoryBudget:
    """Counted in this process only (embedded profile, and the fallback without Redis)."""

    def __init__(self) -> None:
        self._limiter = LocalWindows()

    def take_local(self, limit: RateLimitItem, key: str, cost: int) -> Decision | None:
        return None  # every decision asks the store

    async def take(self, limit: RateLimitItem, key: str, cost: int) -> Decision:
        allowed = await self._limiter.hit(limit, key, cost=cost)
        stats = await self._limiter.get_window_stats(limit, key)
        reset = max(1, math.ceil(stats.reset_time - time.time()))
        return Decision(allowed, stats.remaining, reset)


@dataclass(slots=True)  # thousands of them, one touched per request
class _Reservation:
    limit: RateLimitItem  # the limit it was reserved under; a changed limit starts afresh
    last_used: float = 0.0
    tokens: int = 0  # reserved in Redis, not yet spent here
    grants: int = 0
    remaining: int = 0  # what Redis said was left after the last reservation
    blocked_until: float = 0.0
    reset_seconds: int = 1


class WindowLimiter(Protocol):
    """What a budget needs of its store: limits' sliding-window limiter, or LocalWindows."""

    async def hit(self, item: RateLimitItem, key: str, cost: int = 1) -> bool: ...

    async def get_window_stats(self, item: RateLimitItem, key: str) -> WindowStats: ...


@dataclass
class SharedBudget:
    """One budget for all instances, reserved from Redis in batches.

    A batch is an eighth of what the store last said was left, between `batch_share`
    and `max_batch_share` of the limit (and at least the request's cost): large while
    a client is far from its limit, so that it seldom asks the store, and small near
    the limit, where accuracy matters. Tokens reserved but unspent when a window ends
    are lost, so across N instances a client gets between limit - N x batch and the
    limit; with two instances within 4 % when it spreads its requests over both, and
    within 8 % even if it moves them all to one (docs/decisions/0005).
    """

    windows: WindowLimiter  # limits' SlidingWindowCounterRateLimiter over Redis, or LocalWindows
    batch_share: float = 0.02  # the smallest batch, as a share of the limit
    max_batch_share: float = 0.06  # the largest, while much of the budget is left
    clock: Callable[[], float] = time.monotonic
    _reserved: dict[str, _Reservation] = field(default_factory=dict)
    idle_seconds: float = 300.0  # reservations unused this long are forgotten
    _takes: int = 0

    def take_local(self, limit: RateLimitItem, key: str, cost: int) -> Decision | None:
        """Decide from this instance's reservation alone, or None if the store must be asked.

        Synchronous on purpose, and written flat: most requests end here, and a
        coroutine or even a helper call per request showed in profiles.
        """
        now = self.clock()
        slot = self._reserved.get(key)
        if slot is None or slot.limit is not limit:
            slot = self._reserved[key] = _Reservation(limit)
        slot.last_used = now
        self._takes += 1
        if not self._takes & 4095:
            self._forget_idle(now)
        if slot.tokens >= cost:
            slot.tokens -= cost
            return Decision(True, slot.remaining + slot.tokens, slot.reset_seconds)
        if now < slot.blocked_until:
            return Decision(False, 0, max(1, math.ceil(slot.blocked_until - now)))
        return None

    async def take(self, limit: RateLimitItem, key: str, cost: int) -> Decision:
        decided = self.take_local(limit, key, cost)
        if decided is not None:
            return decided
        slot = self._reserved[key]
        now = slot.last_used
        amount = limit.amount
        batch = max(
            cost,
            int(amount * self.batch_share),
            min(int(amount * self.max_batch_share), slot.remaining // 8),
        )
        granted = 0
        if await self.windows.hit(limit, key, cost=batch):
            granted = batch
        elif batch > cost:
            # The batch no longer fits: take what is left of the window in one go
            # (at most a batch), rather than a round trip per request to its end.
            left = min(batch, (await self.windows.get_window_stats(limit, key)).remaining)
            if left >= cost:
                if await self.windows.hit(limit, key, cost=left):
                    granted = left
                elif await self.windows.hit(limit, key, cost=cost):  # others took some
                    granted = cost
        if granted:
            slot.tokens += granted - cost
            slot.grants += 1
            if slot.grants % 8 == 1:
                # What is left in the store, asked now and then: every other time it is
                # estimated from our own spending (other instances' is not seen until
                # the next ask), which saves a round trip per batch.
                stats = await self.windows.get_window_stats(limit, key)
                slot.remaining = stats.remaining
                slot.reset_seconds = max(1, math.ceil(stats.reset_time - time.time()))
            else:
                slot.remaining = max(0, slot.remaining - granted)
            return Decision(True, slot.remaining + slot.tokens, slot.reset_seconds)
        stats = await self.windows.get_window_stats(limit, key)
        wait = max(1, math.ceil(stats.reset_time - time.time()))
        slot.blocked_until = now + wait
        slot.reset_seconds = wait
        return Decision(False, 0, wait)

    def _forget_idle(self, now: float) -> None:
        """Drop reservations of clients gone quiet, so that many addresses do not pile up."""
        idle = [k for k, slot in self._reserved.items() if now - slot.last_used > self.idle_seconds]
        for key in idle:
            del self._reserved[key]

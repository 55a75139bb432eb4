"""Budgets behind one interface: `take(limit, key, cost)` spends `cost` from the budget
of `key` under `limit` and returns a Decision with what is left.

`SharedBudget` serves every request: it reserves a batch from its windows (Redis,
shared by all instances, or this process's memory) and spends it locally, so only
one request in a batch would wait for the store; and before a batch runs out it
reserves the next one in the background, several clients in one round trip, so
that usually none waits. A refused key is refused locally until its window moves
on. `MemoryBudget` counts exactly, one window operation per call: for failed
authentications and as the fallback while Redis is unreachable.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from limits import RateLimitItem

from tragwerk.domain.observability import ModuleReporter, SilentReporter
from tragwerk.ratelimit.local_windows import LocalWindows
from tragwerk.ratelimit.windows import Grant, WindowStore

log = logging.getLogger(__name__)


@dataclass(slots=True)  # not frozen: a frozen init costs three times as much, per request
class Decision:
    allowed: bool
    remaining: int
    reset_seconds: int  # until enough budget returns for another request
    unavailable: bool = False  # refused because the shared store is down (fail closed)


class Budget(Protocol):
    def take_local(self, limit: RateLimitItem, key: str, cost: int) -> Decision | None: ...

    async def take(self, limit: RateLimitItem, key: str, cost: int) -> Decision: ...

    async def close(self) -> None: ...


class MemoryBudget:
    """Counted in this process only (embedded profile, and the fallback without Redis)."""

    def __init__(self) -> None:
        self._windows = LocalWindows()

    def take_local(self, limit: RateLimitItem, key: str, cost: int) -> Decision | None:
        return None  # every decision asks the store

    async def take(self, limit: RateLimitItem, key: str, cost: int) -> Decision:
        granted, left, wait = self._windows.reserve_now(limit, key, cost, cost)
        return Decision(granted > 0, left, max(1, math.ceil(wait)))

    async def close(self) -> None:
        await self._windows.close()


@dataclass(slots=True)  # thousands of them, one touched per request
class _Reservation:
    limit: RateLimitItem  # the limit it was reserved under; a changed limit starts afresh
    last_used: int = 0  # the sweep period it was last used in (see SharedBudget._sweep)
    tokens: int = 0  # reserved in the store, not yet spent here
    remaining: int = 0  # what the store said was left after the last reservation
    blocked_until: float = 0.0
    reset_seconds: int = 1
    low_water: int = 0  # below this many tokens, reserve the next batch in the background
    refilling: bool = False  # a background reservation is under way
    # What take_local returns when it allows: updated in place rather than built per
    # request (a Decision costs a Python-level __init__). The caller reads it at once.
    allowed: Decision = field(default_factory=lambda: Decision(True, 0, 1))


@dataclass
class SharedBudget:
    """One budget for all instances, reserved from the windows in batches.

    A batch is an eighth of what the store last said was left, between `batch_share`
    and `max_batch_share` of the limit (and at least the request's cost): large while
    a client is far from its limit, so that it seldom asks the store, and small near
    the limit, where accuracy matters. While much is left, a key whose tokens fall
    below a quarter of its last batch is queued for a background reservation; the
    queue is sent after `coalesce_seconds`, all its keys in one round trip. Near the
    limit nothing is reserved ahead, so accuracy there is that of plain batches.
    Tokens reserved but unspent when a window ends are lost, so across N instances a
    client gets between limit - N x batch and the limit (docs/decisions/0005).
    """

    windows: WindowStore  # RedisWindows (shared by all instances) or LocalWindows
    prefix: str = ""  # before every key in the store: deployments sharing a Redis keep apart
    batch_share: float = 0.02  # the smallest batch, as a share of the limit
    max_batch_share: float = 0.06  # the largest, while much of the budget is left
    clock: Callable[[], float] = time.monotonic
    idle_seconds: float = 300.0  # reservations unused this long are forgotten
    prefetch: bool = True  # reserve the next batch before this one runs out
    # How long background reservations gather: at 20 ms, two instances sharing a core
    # gathered 2.9 clients per round trip, at 100 ms 5.4 (decisions/0005).
    coalesce_seconds: float = 0.1
    on_store_error: Callable[[Exception], None] | None = None  # a background ask failed
    reporter: ModuleReporter = field(default_factory=SilentReporter)
    _reserved: dict[str, _Reservation] = field(default_factory=dict)
    _created: int = 0  # reservations created, for the sweep's cadence
    _period: int = 0  # sweep periods so far: a slot records the one it was last used in
    _period_ends: dict[int, float] = field(default_factory=dict)  # when each period ended
    _pending: list[tuple[str, _Reservation]] = field(default_factory=list)
    _flushing: bool = False
    _flush_task: asyncio.Task[None] | None = None
    _closed: bool = False
    _reserve_now: Callable[[RateLimitItem, str, int, int], Grant] | None = None
    _ahead: bool = True  # reserve ahead in the background (see __post_init__)

    def __post_init__(self) -> None:
        # Windows in this process's memory answer at once: take_local reserves from
        # them itself, so no request waits for a coroutine and nothing is reserved
        # ahead in the background (a task and a timer per batch, for nothing).
        if isinstance(self.windows, LocalWindows):
            self._reserve_now = self.windows.reserve_now
        self._ahead = self.prefetch and self._reserve_now is None

    def take_local(self, limit: RateLimitItem, key: str, cost: int) -> Decision | None:
        """Decide from this instance's reservation alone (or, with windows in memory,
        from a batch reserved right here), or None if the store must be asked.

        An allowing Decision is the key's own and changes with its next take: read it
        before anything else can run (no await in between).

        Synchronous on purpose, and written flat: most requests end here, and a
        coroutine or even a helper call per request showed in profiles.
        """
        slot = self._reserved.get(key)
        if slot is None or slot.limit is not limit:
            slot = self._new_slot(key, limit)
        slot.last_used = self._period  # not the clock: a clock read per request showed
        tokens = slot.tokens
        if tokens >= cost:
            slot.tokens = tokens = tokens - cost
            if tokens < slot.low_water and not slot.refilling:
                self._refill_soon(key, slot)
            decision = slot.allowed
            decision.remaining = slot.remaining + tokens
            decision.reset_seconds = slot.reset_seconds
            return decision
        now = self.clock()
        if now < slot.blocked_until:
            return Decision(False, 0, max(1, math.ceil(slot.blocked_until - now)))
        if self._reserve_now is not None:  # windows in this process: reserve right here
            grant = self._reserve_now(limit, self.prefix + key, self._batch(slot, cost), cost)
            return self._spend(slot, cost, now, grant)
        return None

    async def take(self, limit: RateLimitItem, key: str, cost: int) -> Decision:
        decided = self.take_local(limit, key, cost)
        if decided is not None:
            return decided
        slot = self._reserved[key]
        now = self.clock()
        (grant,) = await self.windows.reserve(
            [(limit, self.prefix + key, self._batch(slot, cost), cost)]
        )
        return self._spend(slot, cost, now, grant)

    def _spend(self, slot: _Reservation, cost: int, now: float, grant: Grant) -> Decision:
        """Credit a fresh reservation and spend `cost` from it, or note the refusal."""
        granted, left, wait = grant
        if granted:
            self._credit(slot, granted, left, wait)
            slot.tokens -= cost
            return Decision(True, slot.remaining + slot.tokens, slot.reset_seconds)
        slot.blocked_until = now + wait
        slot.remaining = slot.low_water = 0
        slot.reset_seconds = max(1, math.ceil(wait))
        return Decision(False, 0, slot.reset_seconds)

    def _new_slot(self, key: str, limit: RateLimitItem) -> _Reservation:
        """A fresh reservation; every 4,096 of them, a sweep. Counted here rather than
        per take: only new clients make the table grow, and a count per request
        showed in instruction counts."""
        slot = self._reserved[key] = _Reservation(limit)
        self._created += 1
        if not self._created & 4095:
            self._sweep()
        return slot

    def _batch(self, slot: _Reservation, cost: int) -> int:
        amount = slot.limit.amount
        return max(
            cost,
            int(amount * self.batch_share),
            min(int(amount * self.max_batch_share), slot.remaining // 8),
        )

    def _credit(self, slot: _Reservation, granted: int, left: int, wait: float) -> None:
        slot.tokens += granted
        slot.remaining = left
        slot.reset_seconds = max(1, math.ceil(wait))
        slot.blocked_until = 0.0
        # Reserve ahead only while the window has plenty left (four more batches):
        # near the limit a batch held ahead would be lost at the window's end.
        slot.low_water = granted // 4 if self._ahead and left >= 4 * granted else 0

    def _refill_soon(self, key: str, slot: _Reservation) -> None:
        slot.refilling = True
        self._pending.append((key, slot))
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_later(self.coalesce_seconds, self._start_flush)

    def _start_flush(self) -> None:
        if self._closed:  # scheduled before shutdown: the store is gone
            return
        self._flush_task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        """Reserve the queued keys' next batches, all in one ask of the store."""
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                asks = [
                    (slot.limit, self.prefix + key, self._batch(slot, 1), 1) for key, slot in batch
                ]
                try:
                    with self.reporter.operation("reserve_ahead"):  # one per round trip
                        grants = await self.windows.reserve(asks)
                except Exception as exc:  # noqa: BLE001 - the request path asks again and falls back
                    for _key, slot in batch:
                        slot.refilling = False
                    if self.on_store_error is not None:
                        self.on_store_error(exc)
                    else:
                        log.warning("background reservation failed: %r", exc)
                    return
                self.reporter.count("reserved_ahead", len(asks))
                for (_key, slot), (granted, left, wait) in zip(batch, grants, strict=True):
                    slot.refilling = False
                    if granted:
                        self._credit(slot, granted, left, wait)
                    else:  # the window is spent: no more asking ahead
                        slot.remaining = slot.low_water = 0
        finally:
            for _key, slot in self._pending:
                slot.refilling = False
            self._pending.clear()
            self._flushing = False

    async def close(self) -> None:
        """Stop reserving ahead and release the store's connections (at shutdown)."""
        self._closed = True
        if self._flush_task is not None:
            self._flush_task.cancel()
        await self.windows.close()

    def _sweep(self) -> None:
        """Every 4,096 new reservations: end a period, and drop the reservations of
        clients not seen in a period that ended over `idle_seconds` ago, so that many
        addresses do not pile up. A client is forgotten one period later at most than
        it went quiet; while no new clients come, nothing grows and nothing is swept.
        """
        now = self.clock()
        ends = self._period_ends
        ends[self._period] = now
        self._period += 1
        idle = [
            key
            for key, slot in self._reserved.items()
            if now - ends[slot.last_used] > self.idle_seconds
        ]
        for key in idle:
            del self._reserved[key]
        oldest = min((slot.last_used for slot in self._reserved.values()), default=self._period)
        for period in [p for p in ends if p < oldest]:  # no slot refers to them any more
            del ends[period]

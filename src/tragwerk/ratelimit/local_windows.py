"""Sliding-window counters in this process's memory, for budgets that need no Redis.

The same algorithm as the `limits` library's sliding-window counter (the previous
window's count, weighted by how much of it still overlaps, plus the current one), but
with expiry done lazily per key. `limits`' memory storage rescans every key after
each operation, which cost a quarter of a cached request's throughput with 1,000
clients (docs/decisions/0005).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from limits import RateLimitItem
from limits.util import WindowStats


@dataclass
class _Window:
    start: float  # start of the current window
    current: int = 0
    previous: int = 0


@dataclass
class LocalWindows:
    """`hit` and `get_window_stats` like limits' SlidingWindowCounterRateLimiter."""

    clock: Callable[[], float] = time.time
    _windows: dict[tuple[str, str], _Window] = field(default_factory=dict)
    _operations: int = 0

    def _window(self, limit: RateLimitItem, key: str, now: float) -> tuple[_Window, float]:
        length = float(limit.get_expiry())
        slot = (limit.key_for(), key)
        window = self._windows.get(slot)
        if window is None:
            window = self._windows[slot] = _Window(start=now - now % length)
        elapsed = now - window.start
        if elapsed >= length:  # move on one window, or two or more (then nothing is left)
            window.previous = window.current if elapsed < 2 * length else 0
            window.current = 0
            window.start = now - now % length
        self._operations += 1
        if self._operations % 10_000 == 0:
            self._forget_old(now)
        return window, length

    def _weighted(self, window: _Window, length: float, now: float) -> float:
        overlap = 1.0 - (now - window.start) / length
        return window.previous * overlap + window.current

    async def hit(self, limit: RateLimitItem, key: str, cost: int = 1) -> bool:
        now = self.clock()
        window, length = self._window(limit, key, now)
        if self._weighted(window, length, now) + cost > limit.amount:
            return False
        window.current += cost
        return True

    async def get_window_stats(self, limit: RateLimitItem, key: str) -> WindowStats:
        now = self.clock()
        window, length = self._window(limit, key, now)
        used = self._weighted(window, length, now)
        remaining = max(0, int(limit.amount - used))
        if remaining > 0 or window.previous == 0:
            reset = window.start + length
        else:  # wait until enough of the previous window has slid out
            excess = used - limit.amount + 1
            reset = now + length * excess / window.previous
        return WindowStats(reset, remaining)

    def _forget_old(self, now: float) -> None:
        stale = [
            slot
            for slot, window in self._windows.items()
            if now - window.start > 2 * 86_400 or (window.current == 0 and window.previous == 0)
        ]
        for slot in stale:
            del self._windows[slot]

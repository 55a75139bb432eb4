"""The database check behind /health/ready, run at most once a second per process.

Readiness is asked by every load balancer's health check and is never rate-limited;
a check per call took a pooled connection each time, so a flood of /health/ready
competed with real requests for the pool. The result of the last check is answered
while it is under a second old; calls that arrive while a check runs wait for that
one instead of starting their own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

MAX_AGE_SECONDS = 1.0


class ReadinessProbe:
    def __init__(
        self,
        check: Callable[[], Awaitable[str]],
        max_age: float = MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._check = check
        self._max_age = max_age
        self._clock = clock
        self._result: str | None = None
        self._checked_at = float("-inf")
        self._running: asyncio.Task[str] | None = None
        self.checks = 0  # how many checks really ran (tests, metrics)

    async def database(self) -> str:
        if self._result is not None and self._clock() - self._checked_at < self._max_age:
            return self._result
        if self._running is None:
            self._running = asyncio.ensure_future(self._run())
        # shield: a caller that gives up must not cancel the check the others wait for
        return await asyncio.shield(self._running)

    async def _run(self) -> str:
        try:
            self.checks += 1
            result = await self._check()
            self._result, self._checked_at = result, self._clock()
            return result
        finally:
            self._running = None

"""Admission control: a bound on requests in flight, with priority lanes.

Below the bound a request goes straight in. At the bound it waits in its lane's
queue; a finishing request hands its place to the oldest waiter of the most urgent
non-empty lane. A lane whose queue is full, or whose waiter has waited its lane's
longest, is shed (503 with Retry-After). Bulk has the shortest queue and patience,
so under overload it is shed first and the critical lane keeps being served.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum

from tragwerk.domain.observability import ModuleReporter, Tally


class Lane(IntEnum):
    CRITICAL = 0  # internal services (SLA monitoring, escalations, integrations)
    INTERACTIVE = 1  # people reading and changing single cases
    BULK = 2  # lists, exports, anonymous traffic


_LANES = tuple(Lane)  # iterating an Enum class costs ~0.6 µs; a tuple next to nothing


@dataclass(frozen=True)
class LaneLimits:
    queue: int  # waiters allowed in the lane
    wait_seconds: float  # longest a waiter waits before it is shed


DEFAULT_LANES: Mapping[Lane, LaneLimits] = {
    Lane.CRITICAL: LaneLimits(queue=512, wait_seconds=10.0),
    Lane.INTERACTIVE: LaneLimits(queue=128, wait_seconds=3.0),
    Lane.BULK: LaneLimits(queue=32, wait_seconds=1.0),
}


@dataclass
class Admission:
    max_in_flight: int
    reporter: ModuleReporter
    lanes: Mapping[Lane, LaneLimits] = field(default_factory=lambda: dict(DEFAULT_LANES))
    in_flight: int = 0
    _queued: int = 0  # waiters in all lanes
    _admitted: tuple[Tally, ...] = field(default=(), init=False)
    _waiting: dict[Lane, deque[asyncio.Future[None]]] = field(
        default_factory=lambda: {lane: deque() for lane in Lane}
    )

    def __post_init__(self) -> None:
        # Per lane, by the lane's number: counted on every request without a call.
        self._admitted = tuple(
            self.reporter.tally(f"admitted:{lane.name.lower()}") for lane in Lane
        )
        self.reporter.observe("in_flight", lambda: float(self.in_flight))
        for lane in Lane:
            self.reporter.observe(f"waiting_{lane.name.lower()}", self._waiting_reader(lane))

    def _waiting_reader(self, lane: Lane) -> Callable[[], float]:
        return lambda: float(len(self._waiting[lane]))

    def try_enter(self, lane: Lane) -> bool:
        """Take a free place without waiting, if there is one (no coroutine on the hot path)."""
        if self.in_flight < self.max_in_flight and not self._queued:
            self.in_flight += 1
            self._admitted[lane].n += 1
            return True
        return False

    async def enter(self, lane: Lane) -> bool:
        """Take a place (True), or be shed (False). Every True needs one `leave()`."""
        if self.try_enter(lane):
            return True
        limits = self.lanes[lane]
        queue = self._waiting[lane]
        if len(queue) >= limits.queue:
            self.reporter.count(f"shed:{lane.name.lower()}")
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        self._queued += 1
        try:
            with self.reporter.operation(f"queue_wait_{lane.name.lower()}"):
                await asyncio.wait_for(asyncio.shield(waiter), limits.wait_seconds)
        except TimeoutError:
            if waiter.done():  # handed a place in the same instant: keep it
                self._admitted[lane].n += 1
                return True
            queue.remove(waiter)
            self._queued -= 1
            waiter.cancel()
            self.reporter.count(f"shed:{lane.name.lower()}")
            return False
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.leave()  # the client went away after being handed a place
            else:
                queue.remove(waiter)
                self._queued -= 1
                waiter.cancel()
            raise
        self._admitted[lane].n += 1
        return True

    def leave(self) -> None:
        """Give the place to the most urgent waiter, or free it."""
        if not self._queued:  # the usual case
            self.in_flight -= 1
            return
        for lane in _LANES:
            queue = self._waiting[lane]
            while queue:
                waiter = queue.popleft()
                self._queued -= 1
                if not waiter.done():
                    waiter.set_result(None)  # the place passes on; in_flight stays
                    return
        self.in_flight -= 1

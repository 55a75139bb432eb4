"""Admission control's lanes, with no I/O."""

from __future__ import annotations

import asyncio

from tragwerk.domain.observability import SilentReporter
from tragwerk.ratelimit.admission import Admission, Lane, LaneLimits


def admission(max_in_flight: int = 1, **lanes: LaneLimits) -> Admission:
    limits = {
        Lane.CRITICAL: LaneLimits(queue=10, wait_seconds=5),
        Lane.INTERACTIVE: LaneLimits(queue=10, wait_seconds=5),
        Lane.BULK: LaneLimits(queue=2, wait_seconds=5),
    }
    limits.update({Lane[name.upper()]: value for name, value in lanes.items()})
    return Admission(max_in_flight, SilentReporter(), limits)


async def test_below_the_bound_requests_go_straight_in() -> None:
    a = admission(max_in_flight=3)
    assert all([await a.enter(Lane.BULK) for _ in range(3)])
    assert a.in_flight == 3


async def test_a_freed_place_goes_to_the_most_urgent_waiter() -> None:
    a = admission()
    assert await a.enter(Lane.INTERACTIVE)
    order: list[str] = []

    async def request(name: str, lane: Lane) -> None:
        assert await a.enter(lane)
        order.append(name)
        a.leave()

    waiters = [
        asyncio.ensure_future(request("bulk", Lane.BULK)),
        asyncio.ensure_future(request("interactive", Lane.INTERACTIVE)),
        asyncio.ensure_future(request("critical", Lane.CRITICAL)),
    ]
    await asyncio.sleep(0)
    a.leave()
    await asyncio.gather(*waiters)
    assert order == ["critical", "interactive", "bulk"]
    assert a.in_flight == 0


async def test_a_full_lane_is_shed_at_once_and_others_still_queue() -> None:
    a = admission()
    assert await a.enter(Lane.INTERACTIVE)
    bulk = [asyncio.ensure_future(a.enter(Lane.BULK)) for _ in range(2)]
    await asyncio.sleep(0)
    assert await a.enter(Lane.BULK) is False  # its queue of 2 is full
    critical = asyncio.ensure_future(a.enter(Lane.CRITICAL))
    await asyncio.sleep(0)
    a.leave()
    assert await critical is True
    a.leave()
    a.leave()
    assert await asyncio.gather(*bulk) == [True, True]


async def test_a_waiter_past_its_patience_is_shed() -> None:
    a = admission(bulk=LaneLimits(queue=5, wait_seconds=0.01))
    assert await a.enter(Lane.CRITICAL)
    assert await a.enter(Lane.BULK) is False
    a.leave()
    assert a.in_flight == 0


async def test_a_client_that_goes_away_while_waiting_leaks_no_place() -> None:
    a = admission()
    assert await a.enter(Lane.INTERACTIVE)
    gone = asyncio.ensure_future(a.enter(Lane.INTERACTIVE))
    await asyncio.sleep(0)
    gone.cancel()
    a.leave()  # perhaps handed to the leaving waiter, which must give it back
    for _ in range(5):
        await asyncio.sleep(0)
    assert gone.cancelled()
    assert a.in_flight == 0
    assert await a.enter(Lane.BULK)

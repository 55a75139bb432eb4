"""In-process sliding windows: the same arithmetic as the limits library's counter."""

from __future__ import annotations

from tragwerk.ratelimit.local_windows import LocalWindows
from tragwerk.ratelimit.policy import parse_limit


class Clock:
    now = 1_000_040.0  # 20 s into the minute window that starts at 1,000,020

    def __call__(self) -> float:
        return self.now


async def test_a_window_fills_and_then_slides() -> None:
    clock = Clock()
    windows = LocalWindows(clock=clock)
    limit = parse_limit("10/minute")
    assert [await windows.hit(limit, "k") for _ in range(11)] == [True] * 10 + [False]
    stats = await windows.get_window_stats(limit, "k")
    assert stats.remaining == 0
    clock.now += 40  # the next window starts: all ten still weigh fully
    assert await windows.hit(limit, "k") is False
    clock.now += 30  # half of the previous window has slid out
    assert [await windows.hit(limit, "k") for _ in range(6)] == [True] * 5 + [False]
    clock.now += 200  # long quiet: nothing is left
    assert (await windows.get_window_stats(limit, "k")).remaining == 10


async def test_costs_and_keys_are_separate() -> None:
    windows = LocalWindows(clock=Clock())
    limit = parse_limit("10/minute")
    assert await windows.hit(limit, "a", cost=7)
    assert not await windows.hit(limit, "a", cost=4)
    assert await windows.hit(limit, "b", cost=10)
    assert (await windows.get_window_stats(limit, "a")).remaining == 3

"""In-process sliding windows: the same arithmetic as the limits library's counter."""

from __future__ import annotations

import pytest

from tragwerk.ratelimit.local_windows import LocalWindows
from tragwerk.ratelimit.policy import parse_limit


class Clock:
    now = 1_000_040.0  # 20 s into the minute window that starts at 1,000,020

    def __call__(self) -> float:
        return self.now


def test_a_window_fills_and_then_slides() -> None:
    clock = Clock()
    windows = LocalWindows(clock=clock)
    limit = parse_limit("10/minute")
    assert [windows.reserve_now(limit, "k", 1, 1)[0] for _ in range(11)] == [1] * 10 + [0]
    granted, left, wait = windows.reserve_now(limit, "k", 1, 1)
    assert (granted, left) == (0, 0)
    assert wait == pytest.approx(40)  # nothing returns before this window ends
    clock.now += 40  # the next window starts: all ten still weigh fully
    granted, left, wait = windows.reserve_now(limit, "k", 1, 1)
    assert granted == 0
    assert wait == pytest.approx(6)  # a tenth of the previous window slides out in 6 s
    clock.now += 30  # half of the previous window has slid out
    assert [windows.reserve_now(limit, "k", 1, 1)[0] for _ in range(6)] == [1] * 5 + [0]
    clock.now += 200  # long quiet: nothing is left
    assert windows.reserve_now(limit, "k", 0, 0)[1] == 10


def test_costs_partial_grants_and_keys_are_separate() -> None:
    windows = LocalWindows(clock=Clock())
    limit = parse_limit("10/minute")
    assert windows.reserve_now(limit, "a", 7, 7)[:2] == (7, 3)
    assert windows.reserve_now(limit, "a", 4, 4)[:2] == (0, 3)  # all or nothing
    assert windows.reserve_now(limit, "a", 4, 1)[:2] == (3, 0)  # as many as are free
    assert windows.reserve_now(limit, "b", 10, 10)[:2] == (10, 0)


def test_windows_of_other_lengths_are_separate() -> None:
    windows = LocalWindows(clock=Clock())
    assert windows.reserve_now(parse_limit("10/minute"), "k", 10, 10)[0] == 10
    assert windows.reserve_now(parse_limit("10/hour"), "k", 10, 10)[0] == 10

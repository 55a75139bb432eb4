"""The autoscaler's decisions and its settings (tragwerk.domain.queue_scaling)."""

from __future__ import annotations

import pytest

from tragwerk.domain.queue_scaling import (
    DEFAULT_BUDGETS,
    ScaleRange,
    class_of,
    decide,
    parse_budgets,
)

RANGE = ScaleRange(1, 4)


def _decide(lag: dict[str, float], processes: int, idle_for: float = 0.0, since: float = 999.0):
    return decide(
        lag=lag,
        budgets=DEFAULT_BUDGETS,
        processes=processes,
        scale=RANGE,
        idle_for=idle_for,
        since_last_change=since,
        cooldown=60.0,
    )


def test_classes_follow_the_job_priorities() -> None:
    assert [class_of(p) for p in (1000, 900, 499, 300, 299, 200, 199, 100, 0)] == [
        "sla", "sla", "high", "high", "normal", "normal", "bulk", "bulk", "bulk",
    ]  # fmt: skip


def test_a_class_past_its_budget_adds_a_process_up_to_the_maximum() -> None:
    decision = _decide({"normal": 121.0}, processes=2)
    assert (decision.action, decision.late) == ("up", "normal")
    assert "normal jobs waited 121.0 s, over their budget of 120 s" in decision.reason
    assert _decide({"normal": 121.0}, processes=4).action == "hold"
    assert _decide({"normal": 119.0}, processes=2).action == "hold"


def test_the_class_furthest_past_its_budget_is_named() -> None:
    # bulk is 700/600 late, sla 6/5: sla is further past its budget
    assert _decide({"bulk": 700.0, "sla": 6.0}, processes=1).late == "sla"


def test_an_idle_queue_retires_one_after_the_cool_down() -> None:
    assert _decide({}, processes=3, idle_for=59.0).action == "hold"
    assert _decide({}, processes=3, idle_for=61.0, since=10.0).action == "hold"
    assert _decide({}, processes=3, idle_for=61.0).action == "down"
    assert _decide({}, processes=1, idle_for=600.0).action == "hold"  # the minimum stays


def test_below_the_minimum_always_adds() -> None:
    assert decide(
        lag={}, budgets=DEFAULT_BUDGETS, processes=1, scale=ScaleRange(2, 3),
        idle_for=999.0, since_last_change=0.0, cooldown=60.0,
    ).action == "up"  # fmt: skip


def test_budgets_and_ranges_are_parsed_or_refused_clearly() -> None:
    assert parse_budgets("sla=2, bulk=60") == {**DEFAULT_BUDGETS, "sla": 2.0, "bulk": 60.0}
    assert parse_budgets("") == DEFAULT_BUDGETS
    for bad in ("urgent=3", "sla", "sla=0", "sla=-1"):
        with pytest.raises(ValueError, match="queue budget"):
            parse_budgets(bad)
    assert ScaleRange.parse("1:4") == ScaleRange(1, 4)
    for bad in ("4", "0:2", "3:2", "a:b", ""):
        with pytest.raises(ValueError, match="--autoscale"):
            ScaleRange.parse(bad)

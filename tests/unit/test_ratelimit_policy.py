"""Rate-limit rules without I/O: route costs and header fields."""

from __future__ import annotations

import pytest

from tragwerk.ratelimit.policy import FailMode, Tier, TierPolicy, parse_limit, route_cost


@pytest.mark.parametrize(
    ("method", "path", "cost"),
    [
        ("GET", "/health/ready", 0),
        ("GET", "/metrics", 0),
        ("GET", "/v1/locations", 1),
        ("GET", "/v1/countries/DE", 1),
        ("GET", "/v1/cases/7", 2),
        ("GET", "/v1/cases", 5),
        ("GET", "/v1/cases/7/history", 5),
        ("POST", "/v1/cases", 5),
        ("PATCH", "/v1/cases/7", 5),
    ],
)
def test_route_costs(method: str, path: str, cost: int) -> None:
    assert route_cost(method, path) == cost


def test_policy_header_field() -> None:
    policy = TierPolicy(Tier.EXTERNAL, parse_limit("1200/minute"), FailMode.LOCAL)
    assert policy.header_policy == '"external";q=1200;w=60'


def test_unparseable_limit_is_named() -> None:
    with pytest.raises(ValueError, match="often"):
        parse_limit("often")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0/minute", "allows nothing"),
        ("1/0 second", "window of zero"),
        ("5 per 0 minutes", "window of zero"),
        ("10/minute;5/second", "not one rate"),
        ("10/minute, 5/second", "not one rate"),
        ("-1/minute", "not one rate"),
    ],
)
def test_only_one_positive_rate_is_a_limit(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_limit(text)


@pytest.mark.parametrize("text", ["1200/minute", "20/second", "100 per 10 minutes", "3/Hours"])
def test_usual_rates_are_read(text: str) -> None:
    assert parse_limit(text).amount >= 1

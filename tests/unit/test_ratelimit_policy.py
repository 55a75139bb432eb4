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

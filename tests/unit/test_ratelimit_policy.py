"""Rate-limit rules without I/O: costs, header fields, batched shared budgets."""

from __future__ import annotations

import pytest
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from tragwerk.ratelimit.budget import SharedBudget
from tragwerk.ratelimit.local_windows import LocalWindows
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


class CountingStorage(MemoryStorage):
    """The limits memory store, counting the calls a Redis store would get."""

    calls = 0

    async def acquire_sliding_window_entry(self, *args: object, **kw: object) -> bool:
        CountingStorage.calls += 1
        return await super().acquire_sliding_window_entry(*args, **kw)  # type: ignore[arg-type]


async def test_shared_budget_reserves_in_batches() -> None:
    storage = CountingStorage()
    CountingStorage.calls = 0
    budget = SharedBudget(SlidingWindowCounterRateLimiter(storage), batch_share=0.02)
    limit = parse_limit("1000/minute")
    allowed = [(await budget.take(limit, "k", 1)).allowed for _ in range(200)]
    assert all(allowed)
    # 200 requests: a first batch of 2 % (nothing known yet of what is left), then
    # 6 % ones while most of the budget is left: 20 + 60 + 60 + 60.
    assert CountingStorage.calls == 4


async def test_larger_batches_ask_the_store_less_and_still_grant_exactly_the_limit() -> None:
    limit = parse_limit("1000/minute")
    asks = {}
    for label, largest in (("fixed 2 %", 0.02), ("growing", 0.06)):
        CountingStorage.calls = 0
        windows = SlidingWindowCounterRateLimiter(CountingStorage())
        budget = SharedBudget(windows, batch_share=0.02, max_batch_share=largest)
        granted = sum([(await budget.take(limit, "k", 1)).allowed for _ in range(1200)])
        assert granted == 1000, label
        asks[label] = CountingStorage.calls
    # Both end in 2 % batches and single tokens near the limit; the growing one asks
    # far less often before that.
    assert asks["growing"] < asks["fixed 2 %"] * 0.75


async def test_a_client_moving_to_another_instance_loses_at_most_one_large_batch() -> None:
    windows = SlidingWindowCounterRateLimiter(MemoryStorage())
    one, two = SharedBudget(windows), SharedBudget(windows)
    limit = parse_limit("1000/minute")
    for _ in range(100):  # instance one holds a batch reserved while much was left
        await one.take(limit, "client", 1)
    granted = 100 + sum([(await two.take(limit, "client", 1)).allowed for _ in range(1500)])
    assert 1000 - 60 - 20 <= granted <= 1000


async def test_two_instances_share_one_budget_within_their_batches() -> None:
    storage = MemoryStorage()
    windows = SlidingWindowCounterRateLimiter(storage)
    one, two = SharedBudget(windows), SharedBudget(windows)
    limit = parse_limit("500/minute")
    granted = 0
    for i in range(2000):
        decision = await (one if i % 2 else two).take(limit, "client", 1)
        granted += decision.allowed
    # Never more than the limit; at most one unspent batch per instance less.
    assert 500 - 2 * 10 <= granted <= 500


async def test_a_refused_key_is_refused_locally_until_its_window_moves() -> None:
    storage = CountingStorage()
    budget = SharedBudget(SlidingWindowCounterRateLimiter(storage))
    limit = parse_limit("5/minute")
    results = [(await budget.take(limit, "k", 1)).allowed for _ in range(5)]
    assert all(results)
    CountingStorage.calls = 0
    for _ in range(100):
        decision = await budget.take(limit, "k", 1)
        assert not decision.allowed
        assert decision.reset_seconds >= 1
    assert CountingStorage.calls <= 2  # the first refusal asked the store; the rest did not


async def test_reservations_of_quiet_clients_are_forgotten() -> None:
    now = [0.0]
    budget = SharedBudget(LocalWindows(), clock=lambda: now[0], idle_seconds=60)
    limit = parse_limit("100/minute")
    for i in range(5000):
        now[0] = i * 0.1  # 5,000 one-off clients over 500 s
        await budget.take(limit, f"client-{i}", 1)
    keys = set(budget._reserved)
    assert "client-0" not in keys  # quiet for 500 s: forgotten at the 4,096th take
    assert len(keys) < 2000  # bounded by the sweep interval, not by clients ever seen

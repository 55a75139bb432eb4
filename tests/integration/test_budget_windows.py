"""Shared budgets over both window stores: memory and a real Redis pass the same tests.

Limits here are per day: Redis aligns windows on its own clock, and a test that ran
across a window's end would see the previous window's count slide.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence

import pytest
from redis.asyncio import Redis

from tests.services import require_service
from tragwerk.ratelimit.budget import SharedBudget
from tragwerk.ratelimit.local_windows import LocalWindows
from tragwerk.ratelimit.policy import parse_limit
from tragwerk.ratelimit.redis_windows import RedisWindows
from tragwerk.ratelimit.windows import Ask, Grant, WindowStore

REDIS_URL = "redis://127.0.0.1:6379/0"


class Counting:
    """A window store that counts its round trips (calls) and the asks in them."""

    def __init__(self, inner: WindowStore) -> None:
        self.inner = inner
        self.calls = 0
        self.asks = 0

    async def reserve(self, asks: Sequence[Ask]) -> list[Grant]:
        self.calls += 1
        self.asks += len(asks)
        return await self.inner.reserve(asks)

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture(params=["memory", "redis"])
async def windows(request: pytest.FixtureRequest) -> AsyncIterator[Counting]:
    if request.param == "memory":
        yield Counting(LocalWindows())
        return
    require_service("Redis", "127.0.0.1", 6379)
    store = RedisWindows(Redis.from_url(REDIS_URL))
    try:
        yield Counting(store)
    finally:
        await store.close()


def key() -> str:
    return f"test-budget:{uuid.uuid4().hex}"


def budget(windows: WindowStore, **options: object) -> SharedBudget:
    """Reserving ahead off unless asked for: the batch arithmetic is easier to follow."""
    return SharedBudget(windows, **{"prefetch": False, **options})  # type: ignore[arg-type]


async def test_a_budget_reserves_in_batches(windows: Counting) -> None:
    shared = budget(windows, batch_share=0.02)
    limit, k = parse_limit("1000/day"), key()
    allowed = [(await shared.take(limit, k, 1)).allowed for _ in range(200)]
    assert all(allowed)
    # A first batch of 2 % (nothing known yet of what is left), then 6 % ones while
    # most of the budget is left: 20 + 60 + 60 + 60.
    assert windows.calls == 4


async def test_larger_batches_ask_less_and_still_grant_exactly_the_limit(
    windows: Counting,
) -> None:
    limit = parse_limit("1000/day")
    calls = {}
    for label, largest in (("fixed 2 %", 0.02), ("growing", 0.06)):
        windows.calls = 0
        shared = budget(windows, batch_share=0.02, max_batch_share=largest)
        k = key()
        granted = sum([(await shared.take(limit, k, 1)).allowed for _ in range(1200)])
        assert granted == 1000, label
        calls[label] = windows.calls
    # Both end in small batches near the limit; the growing one asks far less before.
    assert calls["growing"] < calls["fixed 2 %"] * 0.75


async def test_a_client_moving_to_another_instance_loses_at_most_one_large_batch(
    windows: Counting,
) -> None:
    one, two = budget(windows), budget(windows)
    limit, k = parse_limit("1000/day"), key()
    for _ in range(100):  # instance one holds a batch reserved while much was left
        await one.take(limit, k, 1)
    granted = 100 + sum([(await two.take(limit, k, 1)).allowed for _ in range(1500)])
    assert 1000 - 60 - 20 <= granted <= 1000


async def test_two_instances_share_one_budget_within_their_batches(windows: Counting) -> None:
    one, two = budget(windows), budget(windows)
    limit, k = parse_limit("500/day"), key()
    granted = 0
    for i in range(2000):
        granted += (await (one if i % 2 else two).take(limit, k, 1)).allowed
    # Never more than the limit; at most one unspent batch per instance less.
    assert 500 - 2 * 10 <= granted <= 500


async def test_a_refused_key_is_refused_locally_until_its_window_moves(
    windows: Counting,
) -> None:
    shared = budget(windows)
    limit, k = parse_limit("5/day"), key()
    assert all([(await shared.take(limit, k, 1)).allowed for _ in range(5)])
    windows.calls = 0
    for _ in range(100):
        decision = await shared.take(limit, k, 1)
        assert not decision.allowed
        assert decision.reset_seconds >= 1
    assert windows.calls <= 1  # the first refusal asked the store; the rest did not


async def test_the_remaining_field_counts_down_to_zero(windows: Counting) -> None:
    shared = budget(windows)
    limit, k = parse_limit("100/day"), key()
    seen = [(await shared.take(limit, k, 1)).remaining for _ in range(100)]
    assert seen == list(range(99, -1, -1))  # one instance: exact


async def test_reserving_ahead_keeps_requests_from_waiting(windows: Counting) -> None:
    shared = budget(windows, prefetch=True, coalesce_seconds=0.0)
    limit, k = parse_limit("5000/day"), key()
    waited = 0
    for _ in range(1000):  # batches of 100, then 300: a fresh one when 75 are left
        before = windows.calls
        decision = shared.take_local(limit, k, 1) or await shared.take(limit, k, 1)
        assert decision.allowed
        waited += windows.calls > before  # this request asked the store itself
        await asyncio.sleep(0.0005)  # a busy client: 2,000 requests/s
    assert waited == 1  # only the very first request; every later batch came ahead
    assert windows.calls >= 4  # the batches were reserved, in the background


async def test_background_reservations_of_many_clients_share_one_round_trip(
    windows: Counting,
) -> None:
    shared = budget(windows, prefetch=True, coalesce_seconds=0.01)
    limit = parse_limit("10000/day")
    clients = [key() for _ in range(50)]
    for k in clients:  # a first batch each (200 tokens), asked for in the request path
        await shared.take(limit, k, 1)
    windows.calls = windows.asks = 0
    for k in clients:  # spend each below a quarter of its batch
        for _ in range(160):
            assert shared.take_local(limit, k, 1) is not None
    await asyncio.sleep(0.1)
    assert windows.asks == 50  # every client's next batch was reserved ...
    assert windows.calls == 1  # ... in one round trip


async def test_near_the_limit_nothing_is_reserved_ahead(windows: Counting) -> None:
    shared = budget(windows, prefetch=True, coalesce_seconds=0.0)
    limit, k = parse_limit("100/day"), key()
    granted = 0
    for _ in range(150):
        decision = shared.take_local(limit, k, 1) or await shared.take(limit, k, 1)
        granted += decision.allowed
        await asyncio.sleep(0)
    assert granted == 100  # one instance still gets its limit exactly


async def test_reservations_of_quiet_clients_are_forgotten() -> None:
    now = [0.0]
    shared = SharedBudget(LocalWindows(), clock=lambda: now[0], idle_seconds=60)
    limit = parse_limit("100/minute")
    for i in range(10_000):
        now[0] = i * 0.1  # 10,000 one-off clients over 1,000 s
        await shared.take(limit, f"client-{i}", 1)
    keys = set(shared._reserved)
    # A sweep every 4,096 new clients forgets those not seen in a period that ended
    # over 60 s ago: at the 8,192nd client, the first period's 4,096.
    assert "client-0" not in keys
    assert "client-4096" in keys  # its period ended at the last sweep, 0 s before
    assert len(keys) == 10_000 - 4096  # bounded by two sweep periods, not by all clients
    assert len(shared._period_ends) <= 2  # and so are the periods remembered


class Failing:
    """A store that fails from the n-th call on (pure logic: no service needed)."""

    def __init__(self, inner: WindowStore, works: int) -> None:
        self.inner, self.works = inner, works

    async def reserve(self, asks: Sequence[Ask]) -> list[Grant]:
        self.works -= 1
        if self.works < 0:
            raise ConnectionError("store down")
        return await self.inner.reserve(asks)

    async def close(self) -> None:
        await self.inner.close()


async def test_a_failed_background_reservation_is_reported_and_nothing_is_lost() -> None:
    errors: list[Exception] = []
    shared = SharedBudget(
        Failing(LocalWindows(), works=1), coalesce_seconds=0.0, on_store_error=errors.append
    )
    limit, k = parse_limit("10000/day"), key()
    await shared.take(limit, k, 1)  # the one call that works: a batch of 200
    spent = 1
    while not errors:
        assert shared.take_local(limit, k, 1) is not None
        spent += 1
        await asyncio.sleep(0)
    assert isinstance(errors[0], ConnectionError)
    # The batch in hand is still spent locally; when it is gone, the request path
    # asks the store itself (and its error reaches the limiter's fail modes).
    while shared.take_local(limit, k, 1) is not None:
        spent += 1
    assert spent == 200
    with pytest.raises(ConnectionError):
        await shared.take(limit, k, 1)


async def test_redis_windows_survive_a_script_flush() -> None:
    require_service("Redis", "127.0.0.1", 6379)
    redis = Redis.from_url(REDIS_URL)
    store = RedisWindows(redis)
    try:
        limit, k = parse_limit("10/day"), key()
        assert (await store.reserve([(limit, k, 4, 4)]))[0][:2] == (4, 6)
        await redis.script_flush()  # as after a Redis restart
        assert (await store.reserve([(limit, k, 9, 1)]))[0][:2] == (6, 0)
    finally:
        await store.close()


async def test_both_stores_compute_the_same_grants(windows: Counting) -> None:
    limit, k = parse_limit("10/day"), key()
    got = [
        (await windows.reserve([ask]))[0][:2]
        for ask in ((limit, k, 7, 7), (limit, k, 4, 4), (limit, k, 4, 1), (limit, k, 1, 1))
    ]
    assert got == [(7, 3), (0, 3), (3, 0), (0, 0)]
    ((_granted, _left, wait),) = await windows.reserve([(limit, k, 1, 1)])
    assert 0 < wait <= 86_400  # refused: until the day's window ends


async def test_a_reservation_scheduled_before_close_is_not_sent() -> None:
    windows = Counting(LocalWindows())
    shared = budget(windows, prefetch=True, coalesce_seconds=0.01)
    limit, k = parse_limit("10000/day"), key()
    await shared.take(limit, k, 1)  # a first batch of 200
    while shared.take_local(limit, k, 1) is not None and not shared._pending:
        pass  # spend until the next batch is queued
    calls = windows.calls
    await shared.close()
    await asyncio.sleep(0.05)  # past the moment the queue would have been sent
    assert windows.calls == calls


async def test_windows_in_memory_decide_every_request_without_waiting() -> None:
    # The embedded profile's budget: LocalWindows itself, not wrapped, so take_local
    # reserves its batches on the spot and never hands the request to `take`.
    shared = SharedBudget(LocalWindows())
    limit, k = parse_limit("1000/day"), key()
    decisions = [shared.take_local(limit, k, 1) for _ in range(1001)]
    assert all(d is not None for d in decisions)
    allowed = [d.allowed for d in decisions if d is not None]
    assert allowed == [True] * 1000 + [False]  # exactly the limit, in one process
    refused = decisions[-1]
    assert refused is not None
    assert refused.reset_seconds >= 1
    assert not shared._pending  # nothing reserved ahead in the background
    assert shared._flush_task is None


async def test_one_store_call_carries_many_clients_and_keeps_their_order(
    windows: Counting,
) -> None:
    # More clients than one Redis script call takes (256), so that the Redis store
    # splits them; every grant must come back to the ask it answers.
    small, large = parse_limit("3/day"), parse_limit("50/day")
    asks = [(small if i % 2 else large, key(), 1 + i % 7, 1) for i in range(300)]
    grants = await windows.reserve(asks)
    assert windows.calls == 1
    assert [g[0] for g in grants] == [min(want, lim.amount) for lim, _k, want, _f in asks]
    assert [g[1] for g in grants] == [lim.amount - min(w, lim.amount) for lim, _k, w, _f in asks]

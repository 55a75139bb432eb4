"""The tagged cache's rules, with fake loaders and a fake clock (no I/O)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from tragwerk.cache.tagged import ALL, Loaded, TaggedCache
from tragwerk.domain.observability import SilentReporter


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Loader:
    """Counts loads; each returns a fresh value, optionally after a gate opens."""

    tags: frozenset[tuple[str, object]] = frozenset({("locations", ALL)})
    calls: int = 0
    gate: asyncio.Event | None = None
    fail: bool = False
    values: list[str] = field(default_factory=list)

    async def __call__(self) -> Loaded[str]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise RuntimeError("database down")
        value = f"v{self.calls}"
        self.values.append(value)
        return Loaded(value, self.tags)


def cache(clock: FakeClock | None = None, ttl: float = 60.0) -> TaggedCache[str, str]:
    return TaggedCache(SilentReporter(), ttl, clock or FakeClock(), enabled=True)


async def test_second_read_is_a_hit() -> None:
    c, load = cache(), Loader()
    assert await c.get("locations", load) == "v1"
    assert await c.get("locations", load) == "v1"
    assert load.calls == 1


async def test_concurrent_misses_share_one_load() -> None:
    c, load = cache(), Loader(gate=asyncio.Event())
    readers = [asyncio.ensure_future(c.get("locations", load)) for _ in range(50)]
    await asyncio.sleep(0)
    load.gate.set()  # type: ignore[union-attr]
    assert set(await asyncio.gather(*readers)) == {"v1"}
    assert load.calls == 1


async def test_invalidation_drops_only_entries_of_those_rows() -> None:
    c = cache()
    alice = Loader(tags=frozenset({("api_tokens", 1), ("users", 10)}))
    bob = Loader(tags=frozenset({("api_tokens", 2), ("users", 20)}))
    await c.get("alice", alice)
    await c.get("bob", bob)
    c.invalidate("users", [10])
    await c.get("alice", alice)
    await c.get("bob", bob)
    assert (alice.calls, bob.calls) == (2, 1)
    c.invalidate("users", None)  # "all rows of users"
    await c.get("bob", bob)
    assert bob.calls == 2


async def test_a_whole_table_entry_goes_with_any_row_of_it() -> None:
    c, load = cache(), Loader()
    await c.get("locations", load)
    c.invalidate("roles", [1])
    await c.get("locations", load)
    assert load.calls == 1
    c.invalidate("locations", [42])
    await c.get("locations", load)
    assert load.calls == 2


async def test_a_load_that_raced_with_a_change_is_not_kept() -> None:
    c, load = cache(), Loader(gate=asyncio.Event())
    reader = asyncio.ensure_future(c.get("locations", load))
    await asyncio.sleep(0)
    c.invalidate("locations", [1])  # committed while the load was reading
    load.gate.set()  # type: ignore[union-attr]
    assert await reader == "v1"  # the caller gets what was read
    load.gate = None
    assert await c.get("locations", load) == "v2"  # but it was not kept


async def test_entries_expire_after_the_ttl() -> None:
    clock = FakeClock()
    c, load = cache(clock, ttl=30), Loader()
    await c.get("locations", load)
    clock.now += 29
    await c.get("locations", load)
    assert load.calls == 1
    assert c.oldest_age() == 29
    clock.now += 2
    await c.get("locations", load)
    assert load.calls == 2


async def test_disabled_cache_always_loads() -> None:
    c, load = cache(), Loader()
    await c.get("locations", load)
    c.set_enabled(False)
    await c.get("locations", load)
    await c.get("locations", load)
    assert load.calls == 3
    assert len(c) == 0
    c.set_enabled(True)
    await c.get("locations", load)
    await c.get("locations", load)
    assert load.calls == 4


async def test_a_failed_load_fails_every_waiter_and_is_retried() -> None:
    c, load = cache(), Loader(gate=asyncio.Event(), fail=True)
    readers = [asyncio.ensure_future(c.get("locations", load)) for _ in range(3)]
    await asyncio.sleep(0)
    load.gate.set()  # type: ignore[union-attr]
    results = await asyncio.gather(*readers, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    load.fail = False
    assert await c.get("locations", load) == "v2"


async def test_a_caller_that_goes_away_does_not_cancel_the_others() -> None:
    c, load = cache(), Loader(gate=asyncio.Event())
    first = asyncio.ensure_future(c.get("locations", load))
    second = asyncio.ensure_future(c.get("locations", load))
    await asyncio.sleep(0)
    first.cancel()
    load.gate.set()  # type: ignore[union-attr]
    assert await second == "v1"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await c.get("locations", load) == "v1"  # and the value was kept


async def test_peek_returns_cached_values_only() -> None:
    clock = FakeClock()
    c = cache(clock, ttl=60.0)
    assert c.peek("k") is None  # never loaded
    assert await c.get("k", Loader()) == "v1"
    assert c.peek("k") == "v1"
    clock.now += 61
    assert c.peek("k") is None  # past its TTL: the next get loads it again
    assert await c.get("k", Loader()) == "v1"
    c.set_enabled(False)
    assert c.peek("k") is None  # disabled: memory is not trusted

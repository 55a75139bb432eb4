"""The cache against real PostgreSQL: changes by any path reach it through NOTIFY."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg

from tests.conftest import Api, make_api
from tragwerk.settings import Settings
from tragwerk.store.changes import APPLICATION_NAME
from tragwerk.store.database import QueryCounter

CONVERGE_SECONDS = 1.0


async def _until(check: Callable[[], Awaitable[bool]], seconds: float = CONVERGE_SECONDS) -> float:
    """Poll `check` until it holds; return how long that took. Fails after `seconds`."""
    start = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - start
        if time.monotonic() - start > seconds:
            raise AssertionError(f"not seen within {seconds} s")
        await asyncio.sleep(0.005)


async def _location_name(api: Api, location_id: int) -> str:
    r = await api.get(f"/v1/locations/{location_id}")
    return str(r.json()["name"])


async def test_a_hit_touches_no_database(api: Api) -> None:
    for path in ("/v1/locations", "/v1/roles", "/v1/countries"):
        await api.get(path)  # the misses that fill the cache
    counter = QueryCounter().attach(api.services.engine)
    try:
        for path in ("/v1/locations", "/v1/roles", "/v1/countries", "/v1/countries/DE"):
            assert (await api.get(path)).status_code == 200
    finally:
        counter.detach(api.services.engine)
    assert counter.count == 0


async def test_raw_sql_update_reaches_the_cache(api: Api, sql: asyncpg.Connection) -> None:
    loc = await api.location()
    assert (await _location_name(api, loc)).startswith("Site")
    await sql.execute("UPDATE locations SET name = 'Renamed in psql' WHERE id = $1", loc)

    async def renamed() -> bool:
        return await _location_name(api, loc) == "Renamed in psql"

    took = await _until(renamed)
    print(f"converged after {took * 1000:.1f} ms")


async def test_bulk_update_of_every_row_reaches_the_cache(
    api: Api, sql: asyncpg.Connection
) -> None:
    await api.location()
    before = (await api.get("/v1/locations")).json()
    await sql.execute("UPDATE locations SET time_zone = 'Europe/Vienna'")

    async def all_vienna() -> bool:
        rows = (await api.get("/v1/locations")).json()
        return len(rows) == len(before) and all(r["time_zone"] == "Europe/Vienna" for r in rows)

    await _until(all_vienna)


async def test_rolled_back_change_does_not_invalidate(api: Api, sql: asyncpg.Connection) -> None:
    loc = await api.location()
    name = await _location_name(api, loc)
    tr = sql.transaction()
    await tr.start()
    await sql.execute("UPDATE locations SET name = 'never committed' WHERE id = $1", loc)
    await tr.rollback()
    await asyncio.sleep(0.2)
    assert await _location_name(api, loc) == name


async def test_revoked_token_is_refused_after_a_raw_sql_revoke(
    api: Api, sql: asyncpg.Connection
) -> None:
    user = await api.user()
    token = await api.token_for(user["id"])
    assert (await api.get("/v1/cases", token=token)).status_code == 200  # now cached
    await sql.execute("UPDATE api_tokens SET revoked_at = now() WHERE user_id = $1", user["id"])

    async def refused() -> bool:
        return (await api.get("/v1/cases", token=token)).status_code == 401

    await _until(refused)


async def test_deactivated_user_and_changed_role_take_effect(
    api: Api, sql: asyncpg.Connection
) -> None:
    user = await api.user()
    token = await api.token_for(user["id"])
    assert (await api.get("/v1/cases", token=token)).status_code == 200
    # A role losing a permission in psql takes it from every token of that role.
    role = await api.post("/v1/roles", {"name": f"temp{user['id']}", "permissions": ["cases:read"]})
    other = await api.user(role="agent")
    r = await api.client.patch(
        f"/v1/users/{other['id']}", json={"role_id": role.json()["id"]}, headers=api.auth()
    )
    assert r.status_code == 200
    other_token = await api.token_for(other["id"])
    assert (await api.get("/v1/cases", token=other_token)).status_code == 200
    await sql.execute("UPDATE roles SET permissions = '{}' WHERE id = $1", role.json()["id"])

    async def forbidden() -> bool:
        return (await api.get("/v1/cases", token=other_token)).status_code == 403

    await _until(forbidden)
    await sql.execute("UPDATE users SET active = false WHERE id = $1", user["id"])

    async def locked_out() -> bool:
        return (await api.get("/v1/cases", token=token)).status_code == 401

    await _until(locked_out)


async def test_read_your_writes_on_the_writing_instance(api: Api) -> None:
    loc = await api.location()
    for i in range(20):
        r = await api.client.patch(
            f"/v1/locations/{loc}", json={"name": f"name {i}"}, headers=api.auth()
        )
        assert r.status_code == 200
        # No waiting: the very next read on this instance sees the write.
        assert await _location_name(api, loc) == f"name {i}"
        assert any(x["name"] == f"name {i}" for x in (await api.get("/v1/locations")).json())


async def test_losing_the_listener_drops_the_cache_and_recovers(
    api: Api, sql: asyncpg.Connection
) -> None:
    feed = api.services.feed
    assert feed is not None
    assert feed.connected
    loc = await api.location()
    await _location_name(api, loc)
    terminated = await sql.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = $1 AND datname = current_database()",
        APPLICATION_NAME,
    )
    assert terminated >= 1

    async def noticed() -> bool:
        return not feed.connected

    await _until(noticed)
    # While the feed is down, reads go to the database: a change made now is seen.
    await sql.execute("UPDATE locations SET name = 'changed while down' WHERE id = $1", loc)
    assert await _location_name(api, loc) == "changed while down"
    ready = (await api.client.get("/health/ready")).json()
    assert ready["checks"]["cache_feed"].startswith("reconnecting")

    async def back() -> bool:
        return feed.connected

    await _until(back, seconds=10)
    assert (await api.client.get("/health/ready")).json()["checks"]["cache_feed"] == "ok"
    await _location_name(api, loc)  # cached again
    await sql.execute("UPDATE locations SET name = 'after recovery' WHERE id = $1", loc)

    async def fresh() -> bool:
        return await _location_name(api, loc) == "after recovery"

    await _until(fresh)
    metrics = (await api.client.get("/metrics")).text
    assert 'tragwerk_module_events_total{event="connected",module="change_feed"}' in metrics


async def test_cache_off_reads_the_database_every_time(database_url: str) -> None:
    instance, app = await make_api(
        database_url, Settings(database_url=database_url, cache_enabled=False)
    )
    async with app.router.lifespan_context(app):
        await instance.get("/v1/locations")
        counter = QueryCounter().attach(instance.services.engine)
        try:
            for _ in range(3):
                assert (await instance.get("/v1/locations")).status_code == 200
        finally:
            counter.detach(instance.services.engine)
        assert counter.count == 6  # token and locations, each time
        ready = (await instance.client.get("/health/ready")).json()
        assert ready["checks"]["cache_feed"] == "off"
    await instance.client.aclose()


async def test_cache_metrics_are_reported(api: Api) -> None:
    await api.get("/v1/roles")
    await api.get("/v1/roles")
    text = (await api.client.get("/metrics")).text
    for needle in (
        'tragwerk_module_events_total{event="hit",module="reference_cache"}',
        'tragwerk_module_events_total{event="miss",module="reference_cache"}',
        'tragwerk_module_events_total{event="hit",module="principal_cache"}',
        'tragwerk_module_value{module="reference_cache",name="entries"}',
        'tragwerk_module_value{module="reference_cache",name="oldest_entry_age_seconds"}',
        'tragwerk_module_up{module="change_feed"} 1.0',
    ):
        assert needle in text, needle


async def test_fast_path_answers_like_the_route(api: Api) -> None:
    """The reference fast path gives the route's answer, and defers every refusal to it."""
    for path in ("/v1/roles", "/v1/locations", "/v1/countries"):
        fast = await api.get(path)
        routed = await api.get(path, params={"_": "1"})  # a query string takes the route
        assert fast.status_code == routed.status_code == 200
        assert fast.json() == routed.json()
        assert fast.headers["content-type"] == "application/json"
        anonymous = await api.client.get(path)
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"] == "application/problem+json"
    role = await api.post("/v1/roles", {"name": f"blind{id(api) % 10000}x", "permissions": []})
    user = await api.user(role="viewer")
    await api.client.patch(
        f"/v1/users/{user['id']}", json={"role_id": role.json()["id"]}, headers=api.auth()
    )
    token = await api.token_for(user["id"])
    r = await api.get("/v1/locations", token=token)
    assert r.status_code == 403
    assert "reference:read" in r.json()["detail"]
    text = (await api.client.get("/metrics")).text
    assert 'tragwerk_http_requests_total{method="GET",route="/v1/locations",status="200"}' in text


async def test_concurrent_misses_cause_one_database_load(api: Api) -> None:
    await api.get("/v1/locations")  # the token is cached now
    api.services.caches.changed("locations", None)  # as if a change had just committed
    counter = QueryCounter().attach(api.services.engine)
    try:
        responses = await asyncio.gather(*(api.get("/v1/locations") for _ in range(50)))
    finally:
        counter.detach(api.services.engine)
    assert {r.status_code for r in responses} == {200}
    assert len({r.content for r in responses}) == 1
    assert counter.count == 1  # one load for fifty concurrent misses

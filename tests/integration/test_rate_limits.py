"""Rate limits through the HTTP API, on the memory and the Redis budget alike."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Api, make_api
from tests.services import free_port, in_ci, require_service
from tragwerk.settings import Settings

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def _settings(url: str, backend: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "limit_external": "20/minute",
        "limit_internal": "40/minute",
        "limit_anonymous": "15/minute",
        "limit_auth_failures": "1000/minute",
    }
    if backend == "redis":
        require_service("Redis", REDIS_HOST, REDIS_PORT)
        values["redis_url"] = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
        values["redis_namespace"] = f"test-{uuid.uuid4().hex}"  # test databases reuse ids
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(params=["memory", "redis"])
async def limited(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[Api]:
    instance, app = await make_api(database_url, _settings(database_url, request.param))
    async with app.router.lifespan_context(app):
        yield instance
    await instance.client.aclose()


def _field(response: httpx.Response) -> dict[str, str]:
    name, *params = response.headers["ratelimit"].split(";")
    return {"name": name.strip('"'), **dict(p.split("=") for p in params)}


# Set-up goes through the shared, generous `api`; only the measured requests go
# through `limited`, an app on the same database with small limits.


async def test_headers_count_down_and_the_limit_answers_429(api: Api, limited: Api) -> None:
    token = await api.token_for((await api.user())["id"])
    remaining = []
    for _ in range(10):  # /v1/cases/{id} costs 2: ten of them spend the 20
        r = await limited.get("/v1/cases/999999", token=token)
        assert r.status_code == 404
        assert r.headers["ratelimit-policy"] == '"external";q=20;w=60'
        remaining.append(int(_field(r)["r"]))
    assert remaining == sorted(remaining, reverse=True)
    assert remaining[-1] == 0
    r = await limited.get("/v1/cases/999999", token=token)
    assert r.status_code == 429
    assert r.headers["content-type"] == "application/problem+json"
    assert int(r.headers["retry-after"]) >= 1
    assert _field(r)["r"] == "0"
    assert "external limit of 20" in r.json()["detail"]
    # Health and metrics are never limited.
    assert (await limited.client.get("/health/ready")).status_code == 200
    assert (await limited.client.get("/metrics")).status_code == 200


async def test_each_token_and_tier_has_its_own_budget(api: Api, limited: Api) -> None:
    first = await api.token_for((await api.user())["id"])
    second = await api.token_for((await api.user())["id"])
    for _ in range(20):
        await limited.get("/v1/locations", token=first)
    assert (await limited.get("/v1/locations", token=first)).status_code == 429
    assert (await limited.get("/v1/locations", token=second)).status_code == 200
    svc_token = await api.internal_token()
    r = await limited.get("/v1/locations", token=svc_token)
    assert r.headers["ratelimit-policy"] == '"internal";q=40;w=60'


async def test_anonymous_traffic_is_limited_per_address(limited: Api) -> None:
    transport = httpx.ASGITransport(
        app=limited.client._transport.app,  # type: ignore[attr-defined]
        client=(f"10.9.{time.monotonic_ns() % 250}.7", 1234),
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as stranger:
        codes = [(await stranger.get("/v1/cases/1")).status_code for _ in range(8)]
        assert codes[:7] == [401] * 7  # 2 each: 14 of 15
        assert codes[7] == 429
        r = await stranger.get("/v1/cases/1")
        assert r.headers["ratelimit-policy"].startswith('"anonymous"')


async def test_failed_authentications_are_throttled_per_address(database_url: str) -> None:
    instance, app = await make_api(
        database_url,
        _settings(
            database_url,
            "memory",
            limit_auth_failures="5/minute",
            limit_anonymous="1000/minute",
            limit_external="1000/minute",
        ),
    )
    async with app.router.lifespan_context(app):
        assert (await instance.get("/v1/cases")).status_code == 200  # a user at work
        other = await instance.token_for((await instance.user())["id"])  # not used yet
        codes = [
            (
                await instance.client.get(
                    "/v1/cases", headers={"Authorization": f"Bearer tw_guess{i}"}
                )
            ).status_code
            for i in range(7)
        ]
        assert codes[:5] == [401] * 5
        assert codes[5:] == [429, 429]
        # A token not known to be valid is not looked up, so none can be guessed ...
        r = await instance.get("/v1/cases", other)
        assert r.status_code == 429
        assert r.json()["type"].endswith("/too-many-failed-authentications")
        # ... but the address's user whose token is known valid keeps working: the
        # failing attempts are throttled, not everybody behind the address.
        r = await instance.get("/v1/cases")
        assert r.status_code == 200, r.text
    await instance.client.aclose()


@pytest.fixture
def own_redis() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A Redis server of this test's own, so that stopping it disturbs nobody else."""
    binary = shutil.which("redis-server")
    if binary is None:
        if in_ci():
            pytest.fail("redis-server is not installed (CI=true)")
        pytest.skip("redis-server is not installed")
    port = free_port()
    workdir = tempfile.mkdtemp()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port, proc
    if proc.poll() is None:
        proc.kill()
    shutil.rmtree(workdir, ignore_errors=True)


def _on_redis_at(port: int, **values: Any) -> Settings:
    """Settings for an app on the test's own Redis, with room for every request."""
    return Settings(
        redis_url=f"redis://127.0.0.1:{port}/0",
        **{"limit_external": "1000/minute", "limit_auth_failures": "1000/minute", **values},
    )


async def test_redis_stopping_mid_way_falls_back_per_tier(
    database_url: str, own_redis: tuple[int, subprocess.Popen[bytes]]
) -> None:
    port, proc = own_redis
    instance, app = await make_api(
        database_url,
        _on_redis_at(
            port,
            database_url=database_url,
            fail_external="local",
            limit_anonymous="1000/minute",
            fail_anonymous="closed",
        ),
    )
    async with app.router.lifespan_context(app):
        assert (await instance.get("/v1/locations")).status_code == 200
        ready = (await instance.client.get("/health/ready")).json()
        assert ready["checks"]["rate_limit"] == "ok (redis)"
        proc.kill()
        proc.wait()
        await asyncio.sleep(0.1)
        # External users go on, counted locally; never a 500.
        codes = {(await instance.get("/v1/cases/999999999")).status_code for _ in range(60)}
        assert codes == {404}
        ready = (await instance.client.get("/health/ready")).json()
        assert ready["status"] == "ok"
        assert ready["checks"]["rate_limit"].startswith("failing")
        # The anonymous tier was configured to fail closed: 503, not 500.
        r = await instance.client.get("/v1/cases/1")
        assert r.status_code == 503
        assert r.json()["type"].endswith("/rate-limit-unavailable")
        text = (await instance.client.get("/metrics")).text
        assert 'tragwerk_module_up{module="ratelimit"} 0.0' in text
    await instance.client.aclose()


async def test_batches_are_reserved_ahead_and_a_failure_there_is_noticed(
    database_url: str, own_redis: tuple[int, subprocess.Popen[bytes]]
) -> None:
    port, proc = own_redis
    # External limit 1,000/minute: batches of 20, then 60, reserved ahead below 15.
    instance, app = await make_api(database_url, _on_redis_at(port, database_url=database_url))
    async with app.router.lifespan_context(app):
        for _ in range(60):
            assert (await instance.get("/v1/locations")).status_code == 200
        await asyncio.sleep(0.2)  # background reservations gather for 100 ms
        text = (await instance.client.get("/metrics")).text
        assert 'module="ratelimit",operation="reserve_ahead"' in text
        ahead = [
            line
            for line in text.splitlines()
            if 'event="reserved_ahead"' in line and line.startswith("tragwerk_module_events")
        ]
        assert ahead
        assert float(ahead[0].split()[-1]) >= 1
        proc.kill()
        proc.wait()
        # The tokens in hand are spent without Redis; the next background reservation
        # fails, and the limiter says so before any request had to wait for Redis.
        codes = set()
        for _ in range(80):
            codes.add((await instance.get("/v1/locations")).status_code)
            await asyncio.sleep(0.005)
        assert codes == {200}
        # The background reservation that failed was gathered for 100 ms after the
        # tokens ran low; the last requests may have come before it was sent.
        deadline = asyncio.get_running_loop().time() + 2
        while True:
            ready = (await instance.client.get("/health/ready")).json()
            if ready["checks"]["rate_limit"].startswith("failing"):
                break
            assert asyncio.get_running_loop().time() < deadline, ready
            await asyncio.sleep(0.05)
    await instance.client.aclose()


async def test_a_saturated_instance_serves_the_internal_lane_and_sheds_bulk(
    api: Api, database_url: str
) -> None:
    internal = await api.internal_token("sla")
    settings = Settings(
        database_url=database_url,
        max_in_flight=2,
        limit_external="1000000/minute",
        limit_internal="1000000/minute",
    )
    instance, app = await make_api(database_url, settings)
    async with app.router.lifespan_context(app):
        bulk = [instance.get("/v1/cases", params={"limit": 50}) for _ in range(150)]
        critical = [instance.get("/v1/cases/999999999", token=internal) for _ in range(30)]
        responses = await asyncio.gather(*bulk, *critical)
        bulk_codes = [r.status_code for r in responses[:150]]
        critical_codes = [r.status_code for r in responses[150:]]
        assert set(critical_codes) == {404}  # every internal request was served
        assert 503 in bulk_codes  # bulk was shed...
        assert 200 in bulk_codes  # ...but not all of it
        shed = next(r for r in responses[:150] if r.status_code == 503)
        assert shed.headers["retry-after"] == "1"
        assert shed.json()["type"].endswith("/overloaded")
        text = (await instance.client.get("/metrics")).text
        assert 'tragwerk_module_events_total{event="shed:bulk",module="admission"}' in text
    await instance.client.aclose()


async def test_limits_change_at_run_time_on_every_instance(api: Api, database_url: str) -> None:
    """An admin lowers the anonymous limit on instance A; B applies it without a restart."""
    other, other_app = await make_api(database_url)
    async with other_app.router.lifespan_context(other_app):
        r = await api.client.put(
            "/v1/admin/limits/anonymous", json={"rate": "3/minute"}, headers=api.auth()
        )
        assert r.status_code == 200, r.text
        assert r.json()["source"] == "override"
        assert r.json()["rate"] == "3/minute"

        async def limited_after(instance: Api, address: str) -> list[int]:
            transport = httpx.ASGITransport(
                app=instance.client._transport.app,  # type: ignore[attr-defined]
                client=(address, 1),
            )
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                return [(await c.get("/v1/locations")).status_code for _ in range(5)]

        assert await limited_after(api, "10.1.1.1") == [401, 401, 401, 429, 429]
        deadline = time.monotonic() + 5
        while await limited_after(other, f"10.2.2.{int(time.monotonic() * 10) % 250}") != [
            401,
            401,
            401,
            429,
            429,
        ]:
            assert time.monotonic() < deadline, "instance B did not apply the new limit"
            await asyncio.sleep(0.05)

        audit = (await api.get("/v1/admin/limits/audit")).json()
        assert audit[0]["tier"] == "anonymous"
        assert audit[0]["new_rate"] == "3/minute"
        assert audit[0]["changed_by"] is not None

        r = await api.client.delete("/v1/admin/limits/anonymous", headers=api.auth())
        assert r.json()["source"] == "setting"
        assert await limited_after(api, "10.3.3.3") == [401] * 5
        assert (await api.get("/v1/admin/limits/audit")).json()[0]["new_rate"] is None
    await other.client.aclose()


async def test_limit_changes_are_validated_and_guarded(api: Api) -> None:
    r = await api.client.put("/v1/admin/limits/external", json={"rate": "lots"}, headers=api.auth())
    assert r.status_code == 422
    # Each of these was taken before: 0/minute refused every request of the tier,
    # 1/0 second was applied as 1 per second, and of two limits only the first.
    for rate in ("0/minute", "1/0 second", "10/minute;1/second"):
        r = await api.client.put(
            "/v1/admin/limits/external", json={"rate": rate}, headers=api.auth()
        )
        assert r.status_code == 422, (rate, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    tiers = {t["tier"]: t for t in (await api.get("/v1/admin/limits")).json()}
    assert tiers["external"]["source"] == "setting"  # nothing was stored
    r = await api.client.put(
        "/v1/admin/limits/everyone", json={"rate": "1/minute"}, headers=api.auth()
    )
    assert r.status_code == 422
    viewer = await api.token_for((await api.user(role="viewer"))["id"])
    r = await api.client.put(
        "/v1/admin/limits/external", json={"rate": "1/minute"}, headers=api.auth(viewer)
    )
    assert r.status_code == 403
    tiers = {t["tier"]: t for t in (await api.get("/v1/admin/limits")).json()}
    assert set(tiers) == {"anonymous", "external", "internal"}

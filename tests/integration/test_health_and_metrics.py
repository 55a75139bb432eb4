"""Health probes and the module-reporting convention in /metrics."""

from __future__ import annotations

import asyncio
import re

import httpx

from tests.conftest import Api
from tragwerk.api.app import create_app
from tragwerk.bootstrap import build_services
from tragwerk.settings import Settings
from tragwerk.store.database import QueryCounter


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in metrics")


async def test_live_and_ready_need_no_token(api: Api) -> None:
    r = await api.client.get("/health/live")
    assert r.json() == {"status": "ok"}
    r = await api.client.get("/health/ready")
    assert r.status_code == 200
    assert r.json()["checks"] == {
        "database": "ok",
        "cache_feed": "ok",
        "rate_limit": "ok (memory)",
        "tasks": "ok",
    }


async def test_metrics_report_state_duration_and_errors_per_module(api: Api) -> None:
    loc = await api.location()
    await api.case(loc)
    await api.get("/v1/cases/999999999")  # a NotFound counts as an error of get_case
    text = (await api.client.get("/metrics")).text
    assert _sample(text, "tragwerk_module_up", module="cases") == 1
    assert (
        _sample(
            text, "tragwerk_module_operation_seconds_count", module="cases", operation="create_case"
        )
        >= 1
    )
    assert _sample(text, "tragwerk_module_errors_total", module="cases", operation="get_case") >= 1
    assert (
        _sample(
            text,
            "tragwerk_http_requests_total",
            route="/v1/cases/{case_id}",
            method="GET",
            status="404",
        )
        >= 1
    )
    assert re.search(r'tragwerk_http_request_seconds_bucket\{.*route="/v1/cases"', text)


async def test_cached_reference_reads_are_labelled_with_their_route(api: Api) -> None:
    """They are served outside FastAPI (fast_reference); they were counted as
    "unmatched" once FastAPI kept included routers as routers of their own."""
    for path in ("/v1/roles", "/v1/countries"):
        assert (await api.get(path)).status_code == 200
    text = (await api.client.get("/metrics")).text
    for route in ("/v1/roles", "/v1/countries"):
        count = _sample(
            text, "tragwerk_http_requests_total", route=route, method="GET", status="200"
        )
        assert count >= 1, route


async def test_every_response_carries_a_request_id(api: Api) -> None:
    r = await api.client.get("/health/live", headers={"X-Request-ID": "abc123"})
    assert r.headers["x-request-id"] == "abc123"
    ids = {(await api.client.get("/health/live")).headers["x-request-id"] for _ in range(50)}
    assert len(ids) == 50
    assert all(len(i) == 22 for i in ids)


async def test_ready_fails_when_the_database_is_unreachable() -> None:
    dead = "postgresql://postgres@127.0.0.1:1/nothing"
    services = build_services(Settings(database_url=dead), dead)
    app = create_app(services)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as client:
        r = await client.get("/health/ready")
        assert r.status_code == 503
        assert r.json()["checks"]["database"].startswith("failing")
        assert (await client.get("/health/live")).status_code == 200
        text = (await client.get("/metrics")).text
        assert _sample(text, "tragwerk_module_up", module="store") == 0
    await services.engine.dispose()


async def test_openapi_documents_every_route(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in (
        "/v1/cases",
        "/v1/cases/{case_id}",
        "/v1/cases/{case_id}/status",
        "/v1/cases/{case_id}/assignees",
        "/v1/cases/{case_id}/history",
        "/v1/users",
        "/v1/roles",
        "/v1/locations",
        "/v1/countries",
        "/v1/tokens",
        "/v1/webhook-subscriptions",
        "/v1/notifications",
        "/health/ready",
    ):
        assert path in paths, path
    case_list = paths["/v1/cases"]["get"]["responses"]["200"]["content"]["application/json"]
    assert case_list["schema"]["$ref"].endswith("/CasePage")


async def test_an_unexpected_error_is_a_500_problem_and_counted(database_url: str) -> None:
    from tests.conftest import make_api

    instance, app = await make_api(database_url)

    async def broken(_case_id: int) -> None:
        raise RuntimeError("a bug")

    instance.services.cases.get = broken  # type: ignore[method-assign,assignment]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        r = await client.get("/v1/cases/1", headers=instance.auth())
        assert r.status_code == 500
        assert r.headers["content-type"] == "application/problem+json"
        assert "a bug" not in r.text  # nothing internal leaks
        assert r.headers["x-request-id"]
        text = (await client.get("/metrics")).text
        assert (
            _sample(
                text,
                "tragwerk_http_requests_total",
                route="/v1/cases/{case_id}",
                method="GET",
                status="500",
            )
            == 1
        )
    await instance.client.aclose()


async def test_the_pool_is_open_before_the_first_burst(api: Api) -> None:
    # A burst after start-up must not wait for connections to be made (a flood's
    # first seconds did: docs/performance.md, "Flood").
    pool = api.services.engine.pool
    opened = pool.checkedin() + pool.checkedout()
    assert opened == api.services.settings.db_pool_size


async def test_warming_an_unreachable_database_neither_hangs_nor_raises() -> None:
    from tragwerk.store.database import create_engine, warm_pool

    engine = create_engine("postgresql://postgres@127.0.0.1:1/nothing", pool_size=3)
    try:
        assert await warm_pool(engine, 3) == 0
    finally:
        await engine.dispose()


async def test_a_burst_of_readiness_checks_asks_the_database_once(api: Api) -> None:
    """Health checks of every gateway, never rate-limited: answered from a probe result
    at most a second old rather than a pooled connection per call."""
    await asyncio.sleep(1.1)  # the previous test's result has aged out
    counter = QueryCounter().attach(api.services.engine)
    try:
        answers = await asyncio.gather(*(api.client.get("/health/ready") for _ in range(200)))
    finally:
        counter.detach(api.services.engine)
    assert {r.status_code for r in answers} == {200}
    assert counter.count == 1

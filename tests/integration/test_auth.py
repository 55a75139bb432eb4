"""Bearer tokens and role permissions, on every route."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import Api


async def test_missing_and_malformed_credentials_are_401(api: Api) -> None:
    for headers in (
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer tw_unknown"},
        {"Authorization": "Bearer " + "x" * 5000},
    ):
        # /v1/locations is answered by the reference fast path, /v1/cases by its route;
        # both first try the synchronous cached look-up.
        for path in ("/v1/cases", "/v1/locations"):
            r = await api.client.get(path, headers=headers)
            assert r.status_code == 401, (path, headers)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["type"].endswith("/unauthenticated")


async def test_scheme_is_case_insensitive_on_the_cached_path_too(api: Api) -> None:
    assert (await api.get("/v1/locations")).status_code == 200  # the token is cached now
    for scheme in ("Bearer", "bearer", "BEARER"):
        headers = {"Authorization": f"{scheme} {api.admin_token}"}
        for path in ("/v1/cases", "/v1/locations"):
            assert (await api.client.get(path, headers=headers)).status_code == 200


async def test_revoked_token_is_refused(api: Api) -> None:
    user = await api.user()
    token = await api.token_for(user["id"])
    assert (await api.get("/v1/cases", token=token)).status_code == 200
    tokens = (await api.get("/v1/tokens", token=token)).json()
    r = await api.client.delete(f"/v1/tokens/{tokens[0]['id']}", headers=api.auth(token))
    assert r.status_code == 200
    assert r.json()["revoked_at"] is not None
    assert (await api.get("/v1/cases", token=token)).status_code == 401


async def test_deactivated_user_is_refused(api: Api) -> None:
    user = await api.user()
    token = await api.token_for(user["id"])
    r = await api.client.patch(
        f"/v1/users/{user['id']}", json={"active": False}, headers=api.auth()
    )
    assert r.status_code == 200
    assert (await api.get("/v1/cases", token=token)).status_code == 401


async def test_expired_token_is_refused(api: Api) -> None:
    user = await api.user()
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    r = await api.post("/v1/tokens", {"name": "old", "user_id": user["id"], "expires_at": past})
    assert r.status_code == 201
    assert (await api.get("/v1/cases", token=r.json()["token"])).status_code == 401


async def test_token_expiring_while_cached_is_refused_on_every_path(api: Api) -> None:
    user = await api.user()
    soon = (datetime.now(UTC) + timedelta(seconds=1.5)).isoformat()
    r = await api.post("/v1/tokens", {"name": "short", "user_id": user["id"], "expires_at": soon})
    token = r.json()["token"]
    # Used once: cached for the limiter's and the reference fast path's synchronous look-up.
    assert (await api.get("/v1/locations", token=token)).status_code == 200
    await asyncio.sleep(2.0)
    assert (await api.get("/v1/locations", token=token)).status_code == 401
    assert (await api.get("/v1/cases", token=token)).status_code == 401


async def test_only_a_hash_of_the_token_is_stored(api: Api) -> None:
    from sqlalchemy import select

    from tragwerk.store.tables import api_tokens

    user = await api.user()
    token = await api.token_for(user["id"])
    async with api.services.engine.connect() as conn:
        stored = (await conn.execute(select(api_tokens.c.token_hash))).scalars().all()
    assert all(token.encode() not in value for value in stored)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/cases", {"title": "x", "location_id": 1}),
        ("POST", "/v1/locations", {"name": "x", "country_code": "DE", "time_zone": "UTC"}),
        ("POST", "/v1/users", {"email": "a@b.cd", "name": "x", "role_id": 1}),
        ("POST", "/v1/roles", {"name": "boss", "permissions": []}),
        ("GET", "/v1/webhook-subscriptions", None),
        ("POST", "/v1/service-clients", {"name": "x", "role_id": 1}),
    ],
)
async def test_viewer_cannot_write(api: Api, method: str, path: str, body: object) -> None:
    viewer = await api.user(role="viewer")
    token = await api.token_for(viewer["id"])
    r = await api.client.request(method, path, json=body, headers=api.auth(token))
    assert r.status_code == 403, r.text
    assert "lacks" in r.json()["detail"]


async def test_viewer_reads_and_cannot_make_tokens_for_others(api: Api) -> None:
    viewer = await api.user(role="viewer")
    token = await api.token_for(viewer["id"])
    for path in (
        "/v1/cases",
        "/v1/roles",
        "/v1/locations",
        "/v1/countries",
        "/v1/users",
        "/v1/users/me",
        "/v1/notifications",
    ):
        assert (await api.get(path, token=token)).status_code == 200, path
    other = await api.user()
    r = await api.post("/v1/tokens", {"name": "steal", "user_id": other["id"]}, token=token)
    assert r.status_code == 403


async def test_every_v1_route_requires_authentication(api: Api) -> None:
    from fastapi.routing import APIRoute

    app = api.client._transport.app  # type: ignore[attr-defined]
    for route in app.routes:
        if not isinstance(route, APIRoute) or not route.path.startswith("/v1"):
            continue
        path = route.path.replace("{case_id}", "1").replace("{user_id}", "1")
        path = path.replace("{code}", "DE").replace("{location_id}", "1").replace("{role_id}", "1")
        path = path.replace("{token_id}", "1").replace("{subscription_id}", "1")
        path = path.replace("{notification_id}", "1")
        for method in route.methods:
            r = await api.client.request(method, path, json={})
            assert r.status_code == 401, (method, path, r.status_code)

"""Bearer tokens and role permissions, on every route."""

from __future__ import annotations

import asyncio
import uuid
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


async def _service_client(api: Api, role: str, *, internal: bool) -> tuple[int, str]:
    """A new service client with `role` and one token of its own: (id, token)."""
    roles = {r["name"]: r["id"] for r in (await api.get("/v1/roles")).json()}
    name = f"svc-{role}-{uuid.uuid4().hex[:8]}"
    created = await api.post(
        "/v1/service-clients", {"name": name, "role_id": roles[role], "internal": internal}
    )
    assert created.status_code == 201, created.text
    client_id = int(created.json()["id"])
    r = await api.post("/v1/tokens", {"name": "own", "service_client_id": client_id})
    assert r.status_code == 201, r.text
    return client_id, str(r.json()["token"])


async def test_a_service_client_cannot_mint_tokens_for_another(api: Api) -> None:
    """Reproduced escalation: a viewer service client made a token for an internal admin
    client (both have no user id, and only user ids were compared), then one for the
    admin user."""
    viewer_id, viewer = await _service_client(api, "viewer", internal=False)
    admin_client_id, _admin_client = await _service_client(api, "admin", internal=True)
    r = await api.post("/v1/tokens", {"name": "x", "service_client_id": admin_client_id}, viewer)
    assert r.status_code == 403, r.text
    me = (await api.get("/v1/users/me")).json()
    r = await api.post("/v1/tokens", {"name": "x", "user_id": me["id"]}, viewer)
    assert r.status_code == 403, r.text
    # For itself it still may, with or without naming itself.
    r = await api.post("/v1/tokens", {"name": "mine", "service_client_id": viewer_id}, viewer)
    assert r.status_code == 201, r.text
    r = await api.post("/v1/tokens", {"name": "mine too"}, viewer)
    assert r.status_code == 201, r.text
    assert r.json()["service_client_id"] == viewer_id
    assert r.json()["user_id"] is None


async def test_a_service_client_cannot_revoke_or_list_another_clients_tokens(api: Api) -> None:
    _one_id, one = await _service_client(api, "agent", internal=False)
    two_id, two = await _service_client(api, "agent", internal=False)
    two_tokens = (await api.get("/v1/tokens", two)).json()
    assert [t["service_client_id"] for t in two_tokens] == [two_id]
    r = await api.client.delete(f"/v1/tokens/{two_tokens[0]['id']}", headers=api.auth(one))
    assert r.status_code == 404
    mine = (await api.get("/v1/tokens", one)).json()
    assert all(t["service_client_id"] != two_id for t in mine)
    assert all(t["user_id"] is None for t in mine)  # no user's token either
    r = await api.get(f"/v1/tokens?service_client_id={two_id}", one)
    assert r.status_code == 403
    r = await api.get("/v1/tokens?all=true", one)
    assert r.status_code == 403


async def test_admins_see_every_token_and_deactivate_service_clients(api: Api) -> None:
    client_id, token = await _service_client(api, "agent", internal=True)
    everyone = (await api.get("/v1/tokens?all=true")).json()
    assert any(t["service_client_id"] == client_id for t in everyone)
    assert any(t["user_id"] is not None for t in everyone)
    theirs = (await api.get(f"/v1/tokens?service_client_id={client_id}")).json()
    assert [t["service_client_id"] for t in theirs] == [client_id]
    assert (await api.get("/v1/cases", token)).status_code == 200
    r = await api.client.patch(
        f"/v1/service-clients/{client_id}", json={"active": False}, headers=api.auth()
    )
    assert r.status_code == 200, r.text
    assert r.json()["active"] is False
    assert (await api.get("/v1/cases", token)).status_code == 401  # at once, cache or not
    r = await api.client.patch(
        f"/v1/service-clients/{client_id}", json={"active": True}, headers=api.auth()
    )
    assert (await api.get("/v1/cases", token)).status_code == 200
    r = await api.client.patch(
        "/v1/service-clients/999999", json={"active": False}, headers=api.auth()
    )
    assert r.status_code == 404
    _other, agent = await _service_client(api, "agent", internal=False)
    r = await api.client.patch(
        f"/v1/service-clients/{client_id}", json={"active": False}, headers=api.auth(agent)
    )
    assert r.status_code == 403


async def test_limit_changes_by_a_service_client_name_it(api: Api) -> None:
    client_id, token = await _service_client(api, "admin", internal=True)
    r = await api.client.put(
        "/v1/admin/limits/internal", json={"rate": "50000/minute"}, headers=api.auth(token)
    )
    assert r.status_code == 200, r.text
    assert r.json()["updated_by"] is None
    assert r.json()["updated_by_service_client"] == client_id
    audit = (await api.get("/v1/admin/limits/audit")).json()[0]
    assert (audit["changed_by"], audit["changed_by_service_client"]) == (None, client_id)
    r = await api.client.delete("/v1/admin/limits/internal", headers=api.auth(token))
    assert r.status_code == 200

"""The authorization matrix: every route, called by every kind of principal.

ROUTES below is the one declarative statement of who may call what: each route's
required permission, or PUBLIC (no token), or ANY_TOKEN (any valid token; ownership
rules decide the rest, checked separately below). It is compared with the app's real
route table, so a new route without an entry fails this suite.

Every route is called by users of the admin, agent and viewer roles and of a role
without permissions; by internal and external service clients of each of those
roles; and with no token, an expired token, a revoked token and a deactivated user's
token. The outcome class (401, 403, or let through) must match what the table and the
caller's role (as the database states it) imply. Calls that are let through use
ids that do not exist or empty bodies where a call would change something, so they
end in 404 or 422 after the permission check; the check runs first because FastAPI
resolves a route's dependencies before it validates the body.

Every status seen must also be listed for that route in the OpenAPI document.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import Api
from tragwerk.domain.directory import Permission

PUBLIC = "public"
ANY_TOKEN = "any token"
Rule = Permission | str

P = Permission
ROUTES: dict[tuple[str, str], Rule] = {
    ("GET", "/health/live"): PUBLIC,
    ("GET", "/health/ready"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    # The page and its script hold no data; what they show comes from admin routes.
    ("GET", "/"): PUBLIC,
    ("GET", "/ops"): PUBLIC,
    ("GET", "/ops.js"): PUBLIC,
    ("GET", "/v1/admin/overview"): P.JOBS_MANAGE,
    ("GET", "/v1/webhook-subscriptions/{subscription_id}/deliveries"): P.WEBHOOKS_READ,
    (
        "POST",
        "/v1/webhook-subscriptions/{subscription_id}/deliveries/{delivery_id}/redeliver",
    ): P.WEBHOOKS_WRITE,
    ("GET", "/v1/cases"): P.CASES_READ,
    ("POST", "/v1/cases"): P.CASES_WRITE,
    ("GET", "/v1/cases/{case_id}"): P.CASES_READ,
    ("PATCH", "/v1/cases/{case_id}"): P.CASES_WRITE,
    ("POST", "/v1/cases/{case_id}/status"): P.CASES_WRITE,
    ("POST", "/v1/cases/{case_id}/assignees"): P.CASES_WRITE,
    ("DELETE", "/v1/cases/{case_id}/assignees/{user_id}"): P.CASES_WRITE,
    ("GET", "/v1/cases/{case_id}/history"): P.CASES_READ,
    ("GET", "/v1/countries"): P.REFERENCE_READ,
    ("GET", "/v1/countries/{code}"): P.REFERENCE_READ,
    ("GET", "/v1/locations"): P.REFERENCE_READ,
    ("GET", "/v1/locations/{location_id}"): P.REFERENCE_READ,
    ("POST", "/v1/locations"): P.REFERENCE_WRITE,
    ("PATCH", "/v1/locations/{location_id}"): P.REFERENCE_WRITE,
    ("GET", "/v1/roles"): P.REFERENCE_READ,
    ("POST", "/v1/roles"): P.USERS_WRITE,
    ("PUT", "/v1/roles/{role_id}"): P.USERS_WRITE,
    ("GET", "/v1/users"): P.USERS_READ,
    ("GET", "/v1/users/me"): ANY_TOKEN,  # a service client gets 404 (no user)
    ("GET", "/v1/users/{user_id}"): P.USERS_READ,
    ("POST", "/v1/users"): P.USERS_WRITE,
    ("PATCH", "/v1/users/{user_id}"): P.USERS_WRITE,
    ("GET", "/v1/service-clients"): P.TOKENS_WRITE,
    ("POST", "/v1/service-clients"): P.TOKENS_WRITE,
    ("PATCH", "/v1/service-clients/{client_id}"): P.TOKENS_WRITE,
    ("GET", "/v1/tokens"): ANY_TOKEN,  # one's own; others' need tokens:write
    ("POST", "/v1/tokens"): ANY_TOKEN,  # for oneself; for others needs tokens:write
    ("DELETE", "/v1/tokens/{token_id}"): ANY_TOKEN,  # one's own; others' need tokens:write
    ("GET", "/v1/webhook-subscriptions"): P.WEBHOOKS_READ,
    ("GET", "/v1/webhook-subscriptions/{subscription_id}"): P.WEBHOOKS_READ,
    ("POST", "/v1/webhook-subscriptions"): P.WEBHOOKS_WRITE,
    ("PATCH", "/v1/webhook-subscriptions/{subscription_id}"): P.WEBHOOKS_WRITE,
    ("DELETE", "/v1/webhook-subscriptions/{subscription_id}"): P.WEBHOOKS_WRITE,
    ("GET", "/v1/notifications"): P.NOTIFICATIONS_READ,  # service clients: 404
    ("POST", "/v1/notifications/{notification_id}/read"): P.NOTIFICATIONS_READ,
    ("GET", "/v1/admin/limits"): P.LIMITS_WRITE,
    ("PUT", "/v1/admin/limits/{tier}"): P.LIMITS_WRITE,
    ("DELETE", "/v1/admin/limits/{tier}"): P.LIMITS_WRITE,
    ("GET", "/v1/admin/limits/audit"): P.LIMITS_WRITE,
    ("GET", "/v1/admin/jobs"): P.JOBS_MANAGE,
    ("POST", "/v1/admin/jobs/requeue"): P.JOBS_MANAGE,
    ("GET", "/v1/admin/instances"): P.JOBS_MANAGE,
}

MISSING = 999_999_999  # an id no record has: a call let through ends in 404 or 422


@dataclass
class Caller:
    name: str
    token: str | None
    permissions: frozenset[str]  # empty for the invalid tokens
    valid: bool
    is_user: bool


@dataclass
class World:
    api: Api
    callers: list[Caller]
    ids: dict[str, Any]  # path parameter values for read routes
    document: dict[str, Any]


def concrete(method: str, path: str, ids: dict[str, Any]) -> str:
    """The route's path with ids: real ones for reads, missing ones for changes."""
    values = ids if method == "GET" else dict.fromkeys(ids, MISSING)
    values = {**values, "tier": "anonymous", "code": ids["code"] if method == "GET" else "ZZ"}
    return path.format(**values)


async def make_world(api: Api) -> World:
    roles = {r["name"]: r for r in (await api.get("/v1/roles")).json()}
    r = await api.post("/v1/roles", {"name": f"none-{uuid.uuid4().hex[:8]}", "permissions": []})
    assert r.status_code == 201, r.text
    roles["none"] = r.json()
    location = await api.location()
    callers: list[Caller] = []
    for role_name in ("admin", "agent", "viewer", "none"):
        role = roles[role_name]
        permissions = frozenset(role["permissions"])
        user = await api.user(role["name"])
        callers.append(
            Caller(f"{role_name} user", await api.token_for(user["id"]), permissions, True, True)
        )
        for internal in (True, False):
            r = await api.post(
                "/v1/service-clients",
                {
                    "name": f"{role_name}-{internal}-{uuid.uuid4().hex[:8]}",
                    "role_id": role["id"],
                    "internal": internal,
                },
            )
            assert r.status_code == 201, r.text
            r = await api.post("/v1/tokens", {"name": "m", "service_client_id": r.json()["id"]})
            assert r.status_code == 201, r.text
            kind = "internal" if internal else "external"
            callers.append(
                Caller(f"{kind} {role_name} client", r.json()["token"], permissions, True, False)
            )

    # The invalid ones, all of an admin user, so that only their invalidity refuses them.
    expired_owner = await api.user("admin")
    expired, _ = await api.services.directory.create_token(
        name="expired",
        user_id=expired_owner["id"],
        service_client_id=None,
        expires_at=datetime.now(UTC) - timedelta(minutes=1),
    )
    revoked_owner = await api.user("admin")
    r = await api.post("/v1/tokens", {"name": "revoked", "user_id": revoked_owner["id"]})
    revoked = r.json()["token"]
    assert (await api.client.delete(f"/v1/tokens/{r.json()['id']}", headers=api.auth())).is_success
    gone_owner = await api.user("admin")
    gone = await api.token_for(gone_owner["id"])
    r = await api.client.patch(
        f"/v1/users/{gone_owner['id']}", json={"active": False}, headers=api.auth()
    )
    assert r.status_code == 200, r.text
    for name, token in (
        ("no token", None),
        ("expired token", expired),
        ("revoked token", revoked),
        ("deactivated user's token", gone),
    ):
        callers.append(Caller(name, token, frozenset(), False, False))

    case = await api.case(location)
    subscription = await api.subscribe("https://receiver.example.test/hook", "s" * 20)
    ids = {
        "case_id": case["id"],
        "user_id": expired_owner["id"],
        "location_id": location,
        "code": "DE",
        "role_id": roles["viewer"]["id"],
        "client_id": MISSING,
        "token_id": MISSING,
        "subscription_id": subscription,
        "notification_id": MISSING,
        "delivery_id": MISSING,  # authorised callers get 404 (no worker fans anything out)
    }
    document = (await api.client.get("/openapi.json")).json()
    return World(api, callers, ids, document)


@pytest.fixture
async def world(api: Api) -> World:
    return await make_world(api)


async def call(api: Api, caller: Caller, method: str, path: str) -> int:
    headers = {} if caller.token is None else {"Authorization": f"Bearer {caller.token}"}
    kw: dict[str, Any] = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    r = await api.client.request(method, path, headers=headers, **kw)
    return r.status_code


def expected(rule: Rule, caller: Caller) -> str:
    if rule == PUBLIC:
        return "let through"
    if not caller.valid:
        return "401"
    if rule == ANY_TOKEN or str(rule) in caller.permissions:
        return "let through"
    return "403"


def outcome(status: int) -> str:
    return str(status) if status in (401, 403) else "let through"


async def test_the_table_names_every_route_of_the_app(api: Api) -> None:
    app = api.client._transport.app  # type: ignore[attr-defined]
    served = {(m, r.path) for r in app.state.api_routes for m in r.methods}
    assert served - set(ROUTES) == set(), "routes without an authorization rule"
    assert set(ROUTES) - served == set(), "rules for routes that do not exist"


async def test_every_route_by_every_principal(world: World) -> None:
    api, wrong, undocumented = world.api, [], []
    for (method, template), rule in ROUTES.items():
        path = concrete(method, template, world.ids)
        # The pages (/, /ops, /ops.js) are not API operations and not in the document.
        operation = world.document["paths"].get(template, {}).get(method.lower())
        documented = set(operation["responses"]) if operation else {"200"}
        for caller in world.callers:
            status = await call(api, caller, method, path)
            assert status < 500, (method, path, caller.name, status)
            want = expected(rule, caller)
            if outcome(status) != want:
                wrong.append(f"{method} {path} by {caller.name}: {status}, expected {want}")
            if str(status) not in documented:
                undocumented.append(f"{method} {template}: {status} ({caller.name})")
    assert wrong == []
    assert sorted(set(undocumented)) == []


async def test_ownership_rules_for_tokens_users_and_notifications(world: World) -> None:
    api = world.api
    admin = next(c for c in world.callers if c.name == "admin user")
    r = await api.get("/v1/tokens", token=admin.token)
    own_token_id = r.json()[0]["id"]
    internal_admin = next(c for c in world.callers if c.name == "internal admin client")
    admin_client_id = (await api.get("/v1/tokens", token=internal_admin.token)).json()[0][
        "service_client_id"
    ]
    for caller in world.callers:
        if not caller.valid:
            continue
        may = Permission.TOKENS_WRITE.value in caller.permissions
        for body in ({"user_id": world.ids["user_id"]}, {"service_client_id": admin_client_id}):
            r = await api.post("/v1/tokens", {"name": "other", **body}, token=caller.token)
            assert r.status_code == (201 if may else 403), (caller.name, body, r.text)
        r = await api.get("/v1/tokens?all=true", token=caller.token)
        assert r.status_code == (200 if may else 403), caller.name
        r = await api.get("/v1/tokens", token=caller.token)
        assert r.status_code == 200
        owners = {(t["user_id"], t["service_client_id"]) for t in r.json()}
        assert len(owners) == 1, caller.name  # its own tokens only, whoever asks
        if not may:  # someone else's token looks like no token at all
            headers = {"Authorization": f"Bearer {caller.token}"}
            r = await api.client.delete(f"/v1/tokens/{own_token_id}", headers=headers)
            assert r.status_code == 404, caller.name
        r = await api.get("/v1/users/me", token=caller.token)
        assert r.status_code == (200 if caller.is_user else 404), caller.name
        if Permission.NOTIFICATIONS_READ.value in caller.permissions:
            r = await api.get("/v1/notifications", token=caller.token)
            assert r.status_code == (200 if caller.is_user else 404), caller.name
    # The admin's token survived every attempt above.
    assert (await api.get("/v1/users/me", token=admin.token)).status_code == 200

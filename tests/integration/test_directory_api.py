"""Reference data and directory routes: countries, locations, roles, users, webhooks."""

from __future__ import annotations

from tests.conftest import Api


async def test_countries_come_from_iso_3166(api: Api) -> None:
    countries = (await api.get("/v1/countries")).json()
    codes = {c["code"] for c in countries}
    assert {"DE", "AT", "CH", "US", "JP"} <= codes
    assert len(countries) >= 249
    assert (await api.get("/v1/countries/at")).json()["name"] == "Austria"
    assert (await api.get("/v1/countries/XX")).status_code == 404


async def test_locations_validate_country_and_time_zone(api: Api) -> None:
    ok = await api.post(
        "/v1/locations", {"name": "Vienna", "country_code": "at", "time_zone": "Europe/Vienna"}
    )
    assert ok.status_code == 201
    assert ok.json()["country_code"] == "AT"
    bad_country = await api.post(
        "/v1/locations", {"name": "x", "country_code": "QQ", "time_zone": "UTC"}
    )
    assert bad_country.status_code == 422
    bad_zone = await api.post(
        "/v1/locations", {"name": "x", "country_code": "DE", "time_zone": "Mars/Olympus"}
    )
    assert bad_zone.status_code == 422
    loc_id = ok.json()["id"]
    r = await api.client.patch(f"/v1/locations/{loc_id}", json={"name": "Wien"}, headers=api.auth())
    assert r.json()["name"] == "Wien"
    assert any(loc["name"] == "Wien" for loc in (await api.get("/v1/locations")).json())


async def test_roles_refuse_unknown_permissions_and_duplicates(api: Api) -> None:
    r = await api.post("/v1/roles", {"name": "auditor", "permissions": ["cases:read"]})
    assert r.status_code in (201, 409)
    r = await api.post("/v1/roles", {"name": "auditor", "permissions": ["cases:read"]})
    assert r.status_code == 409
    r = await api.post("/v1/roles", {"name": "boss", "permissions": ["everything"]})
    assert r.status_code == 422
    assert "everything" in r.json()["detail"]


async def test_users_unique_email_and_keyset_listing(api: Api) -> None:
    user = await api.user()
    dup = await api.post(
        "/v1/users", {"email": user["email"].upper(), "name": "Twin", "role_id": user["role_id"]}
    )
    assert dup.status_code == 409
    bad = await api.post("/v1/users", {"email": "not-an-email", "name": "x", "role_id": 1})
    assert bad.status_code == 422
    seen: list[int] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        body = (await api.get("/v1/users", params=params)).json()
        seen += [u["id"] for u in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(set(seen))
    assert user["id"] in seen


async def test_webhook_subscriptions_hide_their_secret(api: Api) -> None:
    r = await api.post(
        "/v1/webhook-subscriptions",
        {
            "url": "https://hooks.example.test/tragwerk",
            "secret": "s" * 32,
            "event_types": ["case.created"],
        },
    )
    assert r.status_code == 201, r.text
    sub = r.json()
    assert "secret" not in sub
    r = await api.client.patch(
        f"/v1/webhook-subscriptions/{sub['id']}", json={"active": False}, headers=api.auth()
    )
    assert r.json()["active"] is False
    bad = await api.post(
        "/v1/webhook-subscriptions",
        {"url": "ftp://x", "secret": "s" * 32, "event_types": ["case.created"]},
    )
    assert bad.status_code == 422
    r = await api.client.delete(f"/v1/webhook-subscriptions/{sub['id']}", headers=api.auth())
    assert r.status_code == 204
    assert (await api.get(f"/v1/webhook-subscriptions/{sub['id']}")).status_code == 404


async def test_notifications_of_the_current_user(api: Api) -> None:
    from tragwerk.store.tables import notifications

    user = await api.user()
    token = await api.token_for(user["id"])
    async with api.services.engine.begin() as conn:
        await conn.execute(
            notifications.insert(),
            [
                {"user_id": user["id"], "kind": "case.assigned", "title": f"n{i}", "body": ""}
                for i in range(3)
            ],
        )
    items = (await api.get("/v1/notifications", token=token)).json()["items"]
    assert [n["title"] for n in items] == ["n2", "n1", "n0"]
    r = await api.post(f"/v1/notifications/{items[0]['id']}/read", None, token=token)
    assert r.json()["read_at"] is not None
    unread = (await api.get("/v1/notifications", token=token, params={"unread": "true"})).json()
    assert [n["title"] for n in unread["items"]] == ["n1", "n0"]
    # Someone else's notification does not exist for you.
    assert (await api.post(f"/v1/notifications/{items[0]['id']}/read", None)).status_code == 404


async def test_unknown_route_is_a_problem(api: Api) -> None:
    r = await api.get("/v1/nothing-here")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    r = await api.client.put("/v1/cases", headers=api.auth())
    assert r.status_code == 405


async def test_the_admin_role_cannot_lose_permissions(api: Api) -> None:
    roles = {r["name"]: r for r in (await api.get("/v1/roles")).json()}
    admin = roles["admin"]
    r = await api.client.put(
        f"/v1/roles/{admin['id']}", json={"permissions": []}, headers=api.auth()
    )
    assert r.status_code == 409
    assert (await api.get("/v1/roles")).status_code == 200  # still an admin
    r = await api.client.put(
        f"/v1/roles/{admin['id']}", json={"permissions": admin["permissions"]}, headers=api.auth()
    )
    assert r.status_code == 200

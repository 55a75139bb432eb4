"""Cases through the HTTP API on real PostgreSQL (service and embedded)."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api


async def _history_len(api: Api, case_id: int) -> int:
    r = await api.get(f"/v1/cases/{case_id}/history", params={"limit": 200})
    return len(r.json()["items"])


async def _unchanged(api: Api, case: dict[str, Any]) -> None:
    """The stored case still equals `case` and its history did not grow."""
    expected = dict(case)
    history = expected.pop("_history")
    r = await api.get(f"/v1/cases/{case['id']}")
    assert r.json() == expected
    assert await _history_len(api, case["id"]) == history


async def _snapshot(api: Api, case_id: int) -> dict[str, Any]:
    case = (await api.get(f"/v1/cases/{case_id}")).json()
    return {**case, "_history": await _history_len(api, case_id)}


async def test_create_read_and_history(api: Api) -> None:
    loc = await api.location()
    agent = await api.user()
    r = await api.post(
        "/v1/cases",
        {
            "title": "VPN drops",
            "description": "every hour",
            "priority": "critical",
            "location_id": loc,
            "assignee_ids": [agent["id"], agent["id"]],
        },
    )
    assert r.status_code == 201, r.text
    case = r.json()
    assert case["number"].startswith("C-")
    assert case["status"] == "open"
    assert case["version"] == 1
    assert r.headers["etag"] == '"1"'
    assert r.headers["location"] == f"/v1/cases/{case['id']}"
    assert [a["user_id"] for a in case["assignees"]] == [agent["id"]]
    # SLA: critical = 4 hours from creation by default.
    from datetime import datetime, timedelta

    created = datetime.fromisoformat(case["created_at"])
    assert datetime.fromisoformat(case["sla_due_at"]) - created == timedelta(hours=4)

    got = await api.get(f"/v1/cases/{case['id']}")
    assert got.json() == case
    history = (await api.get(f"/v1/cases/{case['id']}/history")).json()["items"]
    assert [h["action"] for h in history] == ["created"]


async def test_update_status_and_assignees_bump_version_and_write_history(api: Api) -> None:
    loc = await api.location()
    agent, other = await api.user(), await api.user()
    case = await api.case(loc)
    cid = case["id"]

    r = await api.client.patch(
        f"/v1/cases/{cid}",
        json={"title": "New title", "priority": "high", "version": 1},
        headers=api.auth(),
    )
    assert r.status_code == 200, r.text
    updated = r.json()
    assert updated["version"] == 2
    assert updated["title"] == "New title"
    created = updated["created_at"]
    from datetime import datetime, timedelta

    due = datetime.fromisoformat(updated["sla_due_at"]) - datetime.fromisoformat(created)
    assert due == timedelta(hours=24)  # deadline follows the new priority

    r = await api.post(
        f"/v1/cases/{cid}/status", {"status": "in_progress"}, headers={"If-Match": '"2"'}
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "in_progress"
    assert r.json()["version"] == 3

    r = await api.post(f"/v1/cases/{cid}/assignees", {"user_ids": [agent["id"], other["id"]]})
    assert r.status_code == 200, r.text
    assert {a["user_id"] for a in r.json()["assignees"]} == {agent["id"], other["id"]}
    assert r.json()["version"] == 4

    r = await api.client.delete(f"/v1/cases/{cid}/assignees/{agent['id']}", headers=api.auth())
    assert r.status_code == 200, r.text
    assert [a["user_id"] for a in r.json()["assignees"]] == [other["id"]]

    history = (await api.get(f"/v1/cases/{cid}/history")).json()["items"]
    assert [h["action"] for h in history] == [
        "created",
        "updated",
        "status_changed",
        "assigned",
        "unassigned",
    ]
    assert history[1]["changes"]["title"] == ["Broken printer", "New title"]
    assert history[2]["changes"] == {"status": ["open", "in_progress"]}


async def test_stale_version_is_refused_and_nothing_is_lost(api: Api) -> None:
    loc = await api.location()
    case = await api.case(loc)
    cid = case["id"]
    first = await api.client.patch(
        f"/v1/cases/{cid}", json={"title": "Alice's", "version": 1}, headers=api.auth()
    )
    assert first.status_code == 200
    before = await _snapshot(api, cid)
    # Bob read version 1 too; his write must not overwrite Alice's.
    bob = await api.client.patch(
        f"/v1/cases/{cid}", json={"title": "Bob's", "version": 1}, headers=api.auth()
    )
    assert bob.status_code == 409
    assert bob.headers["content-type"] == "application/problem+json"
    assert bob.json()["current_version"] == 2
    await _unchanged(api, before)
    # With If-Match the same conflict is a failed precondition.
    r = await api.client.patch(
        f"/v1/cases/{cid}", json={"title": "Bob's"}, headers={**api.auth(), "If-Match": '"1"'}
    )
    assert r.status_code == 412
    await _unchanged(api, before)
    # Without any version the write is refused rather than risking a lost update.
    r = await api.client.patch(f"/v1/cases/{cid}", json={"title": "Bob's"}, headers=api.auth())
    assert r.status_code == 428
    await _unchanged(api, before)


async def test_concurrent_writers_one_wins(api: Api) -> None:
    import asyncio

    loc = await api.location()
    case = await api.case(loc)
    results = await asyncio.gather(
        *(
            api.client.patch(
                f"/v1/cases/{case['id']}",
                json={"title": f"writer {i}", "version": 1},
                headers=api.auth(),
            )
            for i in range(8)
        )
    )
    codes = sorted(r.status_code for r in results)
    assert codes == [200] + [409] * 7
    final = (await api.get(f"/v1/cases/{case['id']}")).json()
    assert final["version"] == 2
    assert await _history_len(api, case["id"]) == 2


async def test_bad_input_gets_a_clear_4xx_and_changes_nothing(api: Api) -> None:
    loc = await api.location()
    case = await api.case(loc)
    cid = case["id"]
    before = await _snapshot(api, cid)
    headers = {**api.auth(), "Content-Type": "application/json"}
    patch = f"/v1/cases/{cid}"
    cases: list[tuple[str, str, bytes, int, str]] = [
        ("PATCH", patch, b'{"title": "x", "version": 1', 400, "malformed-json"),
        ("PATCH", patch, b'{"title": "x", "version": 1, "owner": 3}', 422, "validation-failed"),
        ("PATCH", patch, b'{"title": 5, "version": 1}', 422, "validation-failed"),
        ("PATCH", patch, b'{"version": "1", "title": "x"}', 422, "validation-failed"),
        ("PATCH", patch, b'{"priority": "urgent", "version": 1}', 422, "validation-failed"),
        ("PATCH", patch, b'{"title": "", "version": 1}', 422, "validation-failed"),
        ("PATCH", patch, b'{"title": null, "version": 1}', 422, "invalid-input"),
        ("PATCH", patch, b'{"location_id": 999999999, "version": 1}', 422, "invalid-reference"),
        ("PATCH", patch, b"[1, 2]", 422, "validation-failed"),
        (
            "POST",
            f"{patch}/status",
            b'{"status": "closed", "version": 1}',
            409,
            "invalid-transition",
        ),
        ("POST", f"{patch}/status", b'{"status": "done", "version": 1}', 422, "validation-failed"),
        ("POST", f"{patch}/assignees", b'{"user_ids": [999999999]}', 422, "invalid-reference"),
        ("POST", f"{patch}/assignees", b'{"user_ids": []}', 422, "validation-failed"),
        ("DELETE", f"{patch}/assignees/999999999", b"", 404, "not-found"),
        ("PATCH", "/v1/cases/999999999", b'{"title": "x", "version": 1}', 404, "not-found"),
        ("PATCH", "/v1/cases/abc", b'{"title": "x", "version": 1}', 422, "validation-failed"),
        (
            "PATCH",
            "/v1/cases/99999999999999999999",
            b'{"title": "x", "version": 1}',
            422,
            "validation-failed",
        ),
    ]
    for method, path, body, status, code in cases:
        r = await api.client.request(method, path, content=body, headers=headers)
        assert r.status_code == status, (path, body, r.text)
        problem = r.json()
        assert problem["type"].endswith("/" + code), (body, problem)
        assert problem["status"] == status
        assert problem["detail"]
        assert r.headers["content-type"] == "application/problem+json"
        await _unchanged(api, before)


async def test_creating_with_bad_references_writes_no_case(api: Api) -> None:
    loc = await api.location()
    inactive = await api.user(active=False)
    first = (await api.get("/v1/cases", params={"location_id": loc})).json()["items"]
    for body in (
        {"title": "x", "location_id": 999999999},
        {"title": "x", "location_id": loc, "assignee_ids": [999999999]},
        {"title": "x", "location_id": loc, "assignee_ids": [inactive["id"]]},
        {"title": "x" * 301, "location_id": loc},
    ):
        r = await api.post("/v1/cases", body)
        assert r.status_code == 422, r.text
    assert (await api.get("/v1/cases", params={"location_id": loc})).json()["items"] == first


async def test_oversize_and_non_json_bodies_are_refused_before_any_work(api: Api) -> None:
    limit = api.services.settings.max_body_bytes
    loc = await api.location()
    big = b'{"title": "' + b"x" * limit + b'", "location_id": %d}' % loc
    r = await api.client.post(
        "/v1/cases", content=big, headers={**api.auth(), "Content-Type": "application/json"}
    )
    assert r.status_code == 413
    assert str(limit) in r.json()["detail"]

    async def chunks():  # no Content-Length: the guard counts as it reads
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536

    r = await api.client.post(
        "/v1/cases", content=chunks(), headers={**api.auth(), "Content-Type": "application/json"}
    )
    assert r.status_code == 413
    r = await api.client.post(
        "/v1/cases",
        content=b"title=x",
        headers={**api.auth(), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 415
    assert (await api.get("/v1/cases", params={"location_id": loc})).json()["items"] == []


async def test_service_client_creates_cases_for_a_reporter(api: Api) -> None:
    roles = {r["name"]: r["id"] for r in (await api.get("/v1/roles")).json()}
    client = (
        await api.post(
            "/v1/service-clients",
            {
                "name": f"intake-{id(api)}-{roles['agent']}x",
                "role_id": roles["agent"],
                "internal": True,
            },
        )
    ).json()
    token = (
        await api.post("/v1/tokens", {"name": "svc", "service_client_id": client["id"]})
    ).json()
    loc = await api.location()
    r = await api.post(
        "/v1/cases", {"title": "From intake", "location_id": loc}, token=token["token"]
    )
    assert r.status_code == 422
    assert "reporter_id" in r.json()["detail"]
    reporter = await api.user()
    r = await api.post(
        "/v1/cases",
        {"title": "From intake", "location_id": loc, "reporter_id": reporter["id"]},
        token=token["token"],
    )
    assert r.status_code == 201, r.text
    history = (await api.get(f"/v1/cases/{r.json()['id']}/history")).json()["items"]
    assert history[0]["actor_service_client_id"] == client["id"]
    assert history[0]["actor_user_id"] is None


async def test_text_postgresql_cannot_store_is_refused_not_crashed_on(api: Api) -> None:
    loc = await api.location()
    headers = {**api.auth(), "Content-Type": "application/json"}
    bodies = [
        ("/v1/cases", b'{"title": "a\\u0000b", "location_id": %d}' % loc),
        ("/v1/cases", b'{"title": "\\ud800", "location_id": %d}' % loc),
        (
            "/v1/webhook-subscriptions",
            b'{"url": "https://x.example/", "secret": "ssssssssssssssss", '
            b'"event_types": ["\\udc00"]}',
        ),
        ("/v1/users", b'{"email": "a@b.cd", "name": "x", "role_id": 1540772}'),
        ("/v1/service-clients", b'{"name": "x", "role_id": 40000}'),
    ]
    for path, body in bodies:
        r = await api.client.post(path, content=body, headers=headers)
        assert r.status_code == 422, (path, body, r.text)
    r = await api.get("/v1/cases", params={"q": "ab\x00c"})
    assert r.status_code == 422

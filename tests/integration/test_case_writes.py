"""Case writes: the round trips of each path, counted, and what each path returns.

The statements are named from store.queries.case_writes, so a later change that adds
a round trip to a write fails here with the list of what it sent. Error cases and
"nothing written half" are in test_cases_api.py.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx

from tests.conftest import Api
from tragwerk.store.database import QueryCounter
from tragwerk.store.outbox import ENQUEUE_SQL
from tragwerk.store.queries import case_writes

NAMES = {
    case_writes.CREATE.sql: "create",
    case_writes.LOCK.sql: "lock",
    case_writes.READ.sql: "read",
    case_writes.ADD_ASSIGNEES.sql: "add assignees",
    case_writes.REMOVE_ASSIGNEE.sql: "remove assignee",
    ENQUEUE_SQL: "enqueue",
    "BEGIN": "BEGIN",
    "COMMIT": "COMMIT",
    "ROLLBACK": "ROLLBACK",
}


def _name(sql: str) -> str:
    if sql in NAMES:
        return NAMES[sql]
    if sql.lstrip().startswith("WITH changed AS"):
        return "bump"
    return sql.strip().split("\n")[0][:60]


async def _sent(api: Api, call: Callable[[], Awaitable[httpx.Response]]) -> tuple[Any, list[str]]:
    """The response of `call` and the statements it sent, by name."""
    counter = QueryCounter().attach(api.services.engine)
    try:
        response = await call()
    finally:
        counter.detach(api.services.engine)
    return response, [_name(sql) for sql in counter.statements]


async def test_each_write_path_sends_only_its_statements(api: Api) -> None:
    loc = await api.location()
    agent, other = await api.user(), await api.user()
    await api.get("/v1/locations")  # the admin token is in the cache from here on
    r, sent = await _sent(
        api,
        lambda: api.post(
            "/v1/cases", {"title": "Printer", "location_id": loc, "assignee_ids": [agent["id"]]}
        ),
    )
    assert r.status_code == 201, r.text
    assert sent == ["BEGIN", "create", "enqueue", "COMMIT"]
    cid = r.json()["id"]

    r, sent = await _sent(
        api, lambda: api.post(f"/v1/cases/{cid}/status", {"status": "in_progress", "version": 1})
    )
    assert r.status_code == 200, r.text
    assert sent == ["BEGIN", "lock", "bump", "enqueue", "COMMIT"]

    r, sent = await _sent(
        api,
        lambda: api.client.patch(
            f"/v1/cases/{cid}",
            json={"title": "Printer on fire", "priority": "high", "version": 2},
            headers=api.auth(),
        ),
    )
    assert r.status_code == 200, r.text
    assert sent == ["BEGIN", "lock", "bump", "enqueue", "COMMIT"]

    r, sent = await _sent(
        api, lambda: api.post(f"/v1/cases/{cid}/assignees", {"user_ids": [other["id"]]})
    )
    assert r.status_code == 200, r.text
    assert sent == ["BEGIN", "lock", "add assignees", "bump", "enqueue", "COMMIT"]

    r, sent = await _sent(
        api,
        lambda: api.client.delete(f"/v1/cases/{cid}/assignees/{agent['id']}", headers=api.auth()),
    )
    assert r.status_code == 200, r.text
    assert sent == ["BEGIN", "lock", "remove assignee", "bump", "enqueue", "COMMIT"]

    # Changes that change nothing write nothing: no history, no event.
    r, sent = await _sent(
        api, lambda: api.post(f"/v1/cases/{cid}/assignees", {"user_ids": [other["id"]]})
    )
    assert r.status_code == 200, r.text
    assert sent == ["BEGIN", "lock", "add assignees", "read", "COMMIT"]
    assert r.json()["version"] == 5


async def test_a_refused_create_says_why_in_one_more_query_and_writes_nothing(api: Api) -> None:
    loc = await api.location()
    inactive = await api.user(active=False)
    await api.get("/v1/locations")
    body = {"title": "x", "location_id": loc, "assignee_ids": [inactive["id"]]}
    r, sent = await _sent(api, lambda: api.post("/v1/cases", body))
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == f"users [{inactive['id']}] are deactivated and cannot be assigned"
    assert sent[:2] == ["BEGIN", "create"]
    assert sent[-1] == "ROLLBACK"
    assert len(sent) == 4


async def test_the_order_of_checks_is_location_reporter_assignees(api: Api) -> None:
    """What the write path reports first when several references are bad at once."""
    loc = await api.location()
    inactive, active = await api.user(active=False), await api.user()
    svc = await api.internal_token()
    missing = 999_999_999
    expectations = [
        ({"location_id": missing, "reporter_id": missing}, f"location {missing} does not exist"),
        (
            {"location_id": loc, "reporter_id": missing, "assignee_ids": [inactive["id"]]},
            f"users [{missing}] do not exist",
        ),
        (
            {"location_id": loc, "reporter_id": inactive["id"]},
            f"users [{inactive['id']}] are deactivated and cannot be assigned",
        ),
        (
            {
                "location_id": loc,
                "reporter_id": active["id"],
                "assignee_ids": [missing, inactive["id"]],
            },
            f"users [{missing}] do not exist",
        ),
    ]
    for fields, detail in expectations:
        r = await api.post("/v1/cases", {"title": "x", **fields}, token=svc)
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == detail


async def test_what_a_write_returns_is_what_a_read_returns(api: Api) -> None:
    loc = await api.location()
    first, second = await api.user(), await api.user()
    created = await api.case(loc, assignee_ids=[second["id"], first["id"], second["id"]])
    assert [a["user_id"] for a in created["assignees"]] == sorted([first["id"], second["id"]])
    read = (await api.get(f"/v1/cases/{created['id']}")).json()
    assert created == read
    changed = (
        await api.post(f"/v1/cases/{created['id']}/status", {"status": "waiting", "version": 1})
    ).json()
    assert changed == (await api.get(f"/v1/cases/{created['id']}")).json()
    assert changed["status"] == "waiting"
    assert changed["version"] == 2


async def test_history_and_event_are_written_with_the_change(
    api: Api, sql: asyncpg.Connection
) -> None:
    loc = await api.location()
    case = await api.case(loc, priority="low")
    r = await api.client.patch(
        f"/v1/cases/{case['id']}",
        json={"priority": "critical", "version": 1},
        headers=api.auth(),
    )
    assert r.status_code == 200, r.text
    updated = r.json()
    hours = api.services.settings.sla_policy.hours
    due = datetime.fromisoformat(updated["sla_due_at"])
    created_at = datetime.fromisoformat(updated["created_at"])
    assert due - created_at == timedelta(hours=float(hours["critical"]))
    rows = await sql.fetch(
        "SELECT action, changes, event_id, event_type FROM case_history"
        " WHERE case_id = $1 ORDER BY id",
        case["id"],
    )
    assert [r["action"] for r in rows] == ["created", "updated"]
    assert json.loads(rows[1]["changes"]) == {"priority": ["low", "critical"]}
    assert [r["event_type"] for r in rows] == ["case.created", "case.updated"]
    assert all(r["event_id"] for r in rows)

"""Case listing: filters, both sorts, keyset pages, and a constant query count."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import Api
from tragwerk.store.database import QueryCounter


async def _walk(api: Api, params: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(1000):
        page_params = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        r = await api.get("/v1/cases", params=page_params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) <= limit
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("pagination did not end")


@pytest.fixture(scope="module")
async def listing(api: Api) -> dict[str, Any]:
    """23 cases in a location of their own, with mixed status, priority and assignees."""
    loc = await api.location()
    agents = [await api.user(), await api.user()]
    priorities = ["low", "normal", "high", "critical"]
    created = []
    for i in range(23):
        case = await api.case(
            loc,
            title=f"Invoice {i} missing" if i % 3 == 0 else f"Laptop {i}",
            priority=priorities[i % 4],
            assignee_ids=[agents[i % 2]["id"]] if i % 5 else [],
        )
        if i % 4 == 0:
            r = await api.post(
                f"/v1/cases/{case['id']}/status", {"status": "in_progress", "version": 1}
            )
            case = r.json()
        created.append(case)
    return {"location": loc, "agents": agents, "cases": created}


@pytest.mark.parametrize("limit", [1, 4, 50])
async def test_pages_cover_every_case_once_in_order(
    api: Api, listing: dict[str, Any], limit: int
) -> None:
    items = await _walk(api, {"location_id": listing["location"]}, limit)
    ids = [c["id"] for c in items]
    assert sorted(ids) == sorted(c["id"] for c in listing["cases"])
    keys = [(c["created_at"], c["id"]) for c in items]
    assert keys == sorted(keys, reverse=True)


async def test_sla_sort_pages_in_deadline_order(api: Api, listing: dict[str, Any]) -> None:
    items = await _walk(api, {"location_id": listing["location"], "sort": "sla_due"}, 5)
    keys = [(datetime.fromisoformat(c["sla_due_at"]), c["id"]) for c in items]
    assert keys == sorted(keys)
    assert len(items) == 23


async def test_filters_match_the_data(api: Api, listing: dict[str, Any]) -> None:
    loc = listing["location"]
    cases = listing["cases"]
    agent = listing["agents"][1]

    def ids(rows: list[dict[str, Any]]) -> set[int]:
        return {r["id"] for r in rows}

    got = await _walk(api, {"location_id": loc, "status": "in_progress"}, 3)
    assert ids(got) == {c["id"] for c in cases if c["status"] == "in_progress"}
    got = await _walk(
        api,
        {"location_id": loc, "status": ["open", "in_progress"], "priority": ["critical", "high"]},
        3,
    )
    assert ids(got) == {c["id"] for c in cases if c["priority"] in ("critical", "high")}
    got = await _walk(api, {"location_id": loc, "assignee_id": agent["id"]}, 3)
    assert ids(got) == {
        c["id"] for c in cases if any(a["user_id"] == agent["id"] for a in c["assignees"])
    }
    got = await _walk(api, {"location_id": loc, "q": "invoice"}, 3)
    assert ids(got) == {c["id"] for c in cases if "Invoice" in c["title"]}
    soon = (datetime.now(UTC) + timedelta(hours=5)).isoformat()
    got = await _walk(api, {"location_id": loc, "sla_due_before": soon}, 3)
    assert ids(got) == {c["id"] for c in cases if c["priority"] == "critical"}


async def test_listing_parameters_are_validated(api: Api) -> None:
    for params in (
        {"status": "lost"},
        {"priority": "meh"},
        {"sort": "title"},
        {"limit": 0},
        {"limit": 100000},
        {"q": "ab"},
        {"location_id": "x"},
        {"sla_due_before": "tomorrow"},
        {"sla_due_before": "2026-01-01T00:00:00"},
    ):
        r = await api.get("/v1/cases", params=params)
        assert r.status_code == 422, (params, r.text)
    r = await api.get("/v1/cases", params={"cursor": "not-a-cursor"})
    assert r.status_code == 400
    created_cursor = (await api.get("/v1/cases", params={"limit": 1})).json()["next_cursor"]
    if created_cursor:
        r = await api.get("/v1/cases", params={"cursor": created_cursor, "sort": "sla_due"})
        assert r.status_code == 400


async def test_query_count_does_not_grow_with_page_size(api: Api, listing: dict[str, Any]) -> None:
    counts = {}
    for limit in (1, 5, 23):
        counter = QueryCounter().attach(api.services.engine)
        try:
            r = await api.get(
                "/v1/cases", params={"location_id": listing["location"], "limit": limit}
            )
        finally:
            counter.detach(api.services.engine)
        assert r.status_code == 200
        assert len(r.json()["items"]) == limit
        counts[limit] = counter.count
    # the page of cases + all their assignees in one batch (the token comes from the cache)
    assert counts == {1: 2, 5: 2, 23: 2}

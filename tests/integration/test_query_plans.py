"""Every list query shape on 200,000 seeded cases uses an index, never a sequential scan."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import ADMIN_URL_OF, create_database, drop_database
from tragwerk.domain.cases import Priority, SlaPolicy, Status
from tragwerk.store import cursor
from tragwerk.store.database import create_engine
from tragwerk.store.migrate import upgrade
from tragwerk.store.queries.cases import CaseFilter, list_query
from tragwerk.store.seed import seed

pytestmark = pytest.mark.slow

SEEDED_CASES = 200_000


@pytest.fixture(scope="module")
async def seeded(database_url: str) -> AsyncIterator[Any]:
    admin = ADMIN_URL_OF[database_url]
    url = await create_database(admin, prefix="tragwerk_plans")
    engine = create_engine(url, pool_size=2, max_overflow=0)
    try:
        await upgrade(engine)
        await seed(engine, SEEDED_CASES, sla=SlaPolicy())
        yield engine
    finally:
        await engine.dispose()
        await drop_database(admin, url)


async def _plan(engine: Any, query: tuple[str, list[Any]]) -> dict[str, Any]:
    sql, args = query
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        result = await raw.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
    # The connection's json codec may already have decoded the plan.
    decoded = json.loads(result) if isinstance(result, str) else result
    plan: dict[str, Any] = decoded[0]["Plan"]
    return plan


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


async def _middle_cursor(engine: Any, sort: str) -> str:
    column = "created_at" if sort == "created" else "sla_due_at"
    order = "DESC" if sort == "created" else "ASC"
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        row = await raw.fetchrow(
            f"SELECT {column} AS key, id FROM cases ORDER BY {column} {order}, id {order} "
            f"OFFSET {SEEDED_CASES // 2} LIMIT 1"
        )
    return cursor.encode(sort, row["key"], row["id"])


SHAPES: list[tuple[str, CaseFilter, str]] = [
    ("everything, newest first", CaseFilter(), "created"),
    ("by status", CaseFilter(status=(Status.OPEN,)), "created"),
    ("by status and location", CaseFilter(status=(Status.OPEN,), location_id=3), "created"),
    ("by location", CaseFilter(location_id=5), "created"),
    ("by priority", CaseFilter(priority=(Priority.CRITICAL,)), "created"),
    ("by two statuses", CaseFilter(status=(Status.OPEN, Status.IN_PROGRESS)), "created"),
    ("by assignee", CaseFilter(assignee_id=7), "created"),
    ("by assignee and status", CaseFilter(assignee_id=7, status=(Status.OPEN,)), "created"),
    ("title text", CaseFilter(title_contains="Printer does"), "created"),
    (
        "title text and status",
        CaseFilter(title_contains="VPN", status=(Status.WAITING,)),
        "created",
    ),
    ("due soon", CaseFilter(sla_due_before=datetime.now(UTC) - timedelta(days=600)), "created"),
    ("everything by deadline", CaseFilter(), "sla_due"),
    ("open by deadline", CaseFilter(status=(Status.OPEN,)), "sla_due"),
    ("open here by deadline", CaseFilter(status=(Status.OPEN,), location_id=3), "sla_due"),
    (
        "critical here by deadline",
        CaseFilter(priority=(Priority.CRITICAL,), location_id=4),
        "sla_due",
    ),
    ("assignee by deadline", CaseFilter(assignee_id=9), "sla_due"),
    ("everything", CaseFilter(status=tuple(Status), priority=tuple(Priority)), "sla_due"),
]


@pytest.mark.parametrize(("name", "flt", "sort"), SHAPES, ids=[s[0] for s in SHAPES])
@pytest.mark.parametrize("depth", ["first page", "deep page"])
async def test_list_shape_uses_an_index(
    seeded: Any, name: str, flt: CaseFilter, sort: str, depth: str
) -> None:
    after = await _middle_cursor(seeded, sort) if depth == "deep page" else None
    plan = await _plan(seeded, list_query(flt, sort, after, 50))
    on_cases = [n for n in _nodes(plan) if n.get("Relation Name") == "cases"]
    assert on_cases, f"{name}: the plan does not read cases at all"
    kinds = {n["Node Type"] for n in on_cases}
    assert "Seq Scan" not in kinds, f"{name}: sequential scan of cases\n{json.dumps(plan)}"
    assert kinds <= {"Index Scan", "Index Only Scan", "Bitmap Heap Scan"}, (name, kinds)
    used = {n.get("Index Name") for n in _nodes(plan) if n.get("Index Name")}
    assert used, f"{name}: no index named in the plan"
    assert "OFFSET" not in list_query(flt, sort, after, 50)[0]


@pytest.mark.parametrize(("name", "flt", "sort"), SHAPES, ids=[s[0] for s in SHAPES])
async def test_generic_plans_use_an_index_too(
    seeded: Any, name: str, flt: CaseFilter, sort: str
) -> None:
    """Prepared statements may switch to a generic plan after five runs: check that one too."""
    after = await _middle_cursor(seeded, sort)
    sql, args = list_query(flt, sort, after, 50)
    async with seeded.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        # EXECUTE takes literals; PostgreSQL coerces each to the prepared parameter's type.
        texts = [
            "{" + ",".join(a) + "}"
            if isinstance(a, list)
            else a.isoformat()
            if hasattr(a, "isoformat")
            else str(a)
            for a in args
        ]
        literals = [await raw.fetchval("SELECT quote_literal($1::text)", t) for t in texts]
        await raw.execute(f"PREPARE shape AS {sql}")
        try:
            await raw.execute("SET plan_cache_mode = force_generic_plan")
            result = await raw.fetchval(
                f"EXPLAIN (FORMAT JSON) EXECUTE shape({', '.join(literals)})"
            )
        finally:
            await raw.execute("RESET plan_cache_mode")
            await raw.execute("DEALLOCATE shape")
    decoded = json.loads(result) if isinstance(result, str) else result
    plan: dict[str, Any] = decoded[0]["Plan"]
    assert "$1" in json.dumps(plan), "not a generic plan: the conditions name values"
    kinds = {n["Node Type"] for n in _nodes(plan) if n.get("Relation Name") == "cases"}
    assert kinds, f"{name}: the plan does not read cases at all"
    assert "Seq Scan" not in kinds, f"{name}: generic plan scans cases\n{json.dumps(plan)}"


async def test_seed_restores_every_index(seeded: Any) -> None:
    async with seeded.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        names = {
            r["indexname"]
            for r in await raw.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'cases'")
        }
        count = await raw.fetchval("SELECT count(*) FROM cases")
        assignees = await raw.fetchval("SELECT count(*) FROM case_assignees")
    assert count == SEEDED_CASES
    assert assignees >= SEEDED_CASES
    assert {
        "cases_created_idx",
        "cases_sla_idx",
        "cases_status_created_idx",
        "cases_status_sla_idx",
        "cases_status_location_created_idx",
        "cases_location_created_idx",
        "cases_priority_created_idx",
        "cases_title_trgm_idx",
        "cases_reporter_idx",
    } <= names

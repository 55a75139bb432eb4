"""Cases: the list query with keyset pagination, and every write in one transaction.

Relation data is fetched separately: a page of cases is one query, the assignees of
the whole page one more (`assignees_of`), so the query count does not grow with the
page size.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    DateTime,
    Interval,
    Select,
    Text,
    and_,
    any_,
    bindparam,
    func,
    literal,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tragwerk.domain.cases import Priority, SlaPolicy, Status, check_transition
from tragwerk.domain.directory import Principal
from tragwerk.domain.errors import InvalidReference, NotFound, StaleVersion
from tragwerk.domain.events import EventType
from tragwerk.domain.observability import ModuleReporter
from tragwerk.store import cursor
from tragwerk.store.hot import CompiledQuery, fetch
from tragwerk.store.outbox import case_event, enqueue
from tragwerk.store.queries import Page, Row, page_by_id, read_only
from tragwerk.store.tables import case_assignees, case_history, cases, locations, users

SORTS = ("created", "sla_due")

SUMMARY_COLUMNS = (
    cases.c.id,
    cases.c.number,
    cases.c.title,
    cases.c.status,
    cases.c.priority,
    cases.c.sla_due_at,
    cases.c.location_id,
    cases.c.reporter_id,
    cases.c.created_at,
    cases.c.updated_at,
    cases.c.version,
)
DETAIL_COLUMNS = (*SUMMARY_COLUMNS, cases.c.description)


@dataclass(frozen=True)
class CaseFilter:
    status: Sequence[Status] = ()
    priority: Sequence[Priority] = ()
    location_id: int | None = None
    assignee_id: int | None = None
    sla_due_before: datetime | None = None
    title_contains: str | None = None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class ListShape(NamedTuple):
    """Which filters a listing uses: one compiled statement per shape."""

    status: bool
    priority: bool
    location: bool
    assignee: bool
    due_before: bool
    title: bool
    sort: str
    after: bool


@lru_cache(maxsize=512)
def list_statement(shape: ListShape) -> Select[Any]:
    """The page query for one shape. Indexes (migration 0001), chosen per filter:

    sort=created  -> cases_status_location_created_idx, cases_status_created_idx,
                     cases_location_created_idx, cases_priority_created_idx, cases_created_idx
    sort=sla_due  -> cases_status_sla_idx, cases_sla_idx
    assignee      -> case_assignees_user_idx, then the cases primary key
    title text    -> cases_title_trgm_idx (pg_trgm GIN) when it is selective
    tests/integration/test_query_plans.py reads the plan of every shape on 200,000 cases.
    """
    query = select(*SUMMARY_COLUMNS)
    conditions: list[Any] = []
    if shape.status:
        conditions.append(cases.c.status == any_(bindparam("status", type_=ARRAY(Text))))
    if shape.priority:
        conditions.append(cases.c.priority == any_(bindparam("priority", type_=ARRAY(Text))))
    if shape.location:
        conditions.append(cases.c.location_id == bindparam("location_id", type_=BigInteger))
    if shape.assignee:
        assigned = select(case_assignees.c.case_id).where(
            case_assignees.c.user_id == bindparam("assignee_id", type_=BigInteger)
        )
        conditions.append(cases.c.id.in_(assigned))
    if shape.due_before:
        conditions.append(cases.c.sla_due_at < bindparam("due_before", type_=DateTime(True)))
    if shape.title:
        conditions.append(cases.c.title.ilike(bindparam("title_pattern", type_=Text), escape="\\"))
    key = cases.c.created_at if shape.sort == "created" else cases.c.sla_due_at
    if shape.after:
        after = tuple_(bindparam("after_key", type_=DateTime(True)), bindparam("after_id"))
        conditions.append(
            tuple_(key, cases.c.id) < after
            if shape.sort == "created"
            else tuple_(key, cases.c.id) > after
        )
    if conditions:
        query = query.where(and_(*conditions))
    if shape.sort == "created":
        query = query.order_by(key.desc(), cases.c.id.desc())
    else:
        query = query.order_by(key.asc(), cases.c.id.asc())
    return query.limit(bindparam("limit", type_=BigInteger))


@lru_cache(maxsize=512)
def _compiled_list(shape: ListShape) -> CompiledQuery:
    return CompiledQuery(list_statement(shape))


def list_parameters(
    flt: CaseFilter, sort: str, after: str | None, limit: int
) -> tuple[ListShape, dict[str, Any]]:
    """The shape of a listing and its parameter values; the cursor is checked here."""
    params: dict[str, Any] = {"limit": limit + 1}  # one more row tells whether a next page exists
    if flt.status:
        params["status"] = [s.value for s in flt.status]
    if flt.priority:
        params["priority"] = [p.value for p in flt.priority]
    if flt.location_id is not None:
        params["location_id"] = flt.location_id
    if flt.assignee_id is not None:
        params["assignee_id"] = flt.assignee_id
    if flt.sla_due_before is not None:
        params["due_before"] = flt.sla_due_before
    if flt.title_contains:
        params["title_pattern"] = "%" + _escape_like(flt.title_contains) + "%"
    if after is not None:
        params["after_key"], params["after_id"] = cursor.decode_timestamp(after, sort)
    shape = ListShape(
        status=bool(flt.status),
        priority=bool(flt.priority),
        location=flt.location_id is not None,
        assignee=flt.assignee_id is not None,
        due_before=flt.sla_due_before is not None,
        title=bool(flt.title_contains),
        sort=sort,
        after=after is not None,
    )
    return shape, params


def list_query(flt: CaseFilter, sort: str, after: str | None, limit: int) -> tuple[str, list[Any]]:
    """The SQL and arguments of one listing (what `CaseStore.list` sends; used by EXPLAIN tests)."""
    shape, params = list_parameters(flt, sort, after, limit)
    compiled = _compiled_list(shape)
    return compiled.sql, compiled.args(params)


# All assignees of many cases in one query (case_assignees_pkey, users_pkey).
ASSIGNEES_OF = CompiledQuery(
    select(
        case_assignees.c.case_id,
        case_assignees.c.user_id,
        users.c.name,
        case_assignees.c.assigned_at,
    )
    .join(users, users.c.id == case_assignees.c.user_id)
    .where(case_assignees.c.case_id == any_(bindparam("case_ids", type_=ARRAY(BigInteger))))
    .order_by(case_assignees.c.case_id, case_assignees.c.assigned_at, case_assignees.c.user_id)
)


async def assignees_of(conn: AsyncConnection, case_ids: Sequence[int]) -> dict[int, list[Row]]:
    """The assignees of every case in `case_ids`, in one query whatever their number."""
    result: dict[int, list[Row]] = {case_id: [] for case_id in case_ids}
    if not case_ids:
        return result
    for case_id, user_id, name, assigned_at in await fetch(
        conn, ASSIGNEES_OF, {"case_ids": list(case_ids)}
    ):
        result[case_id].append({"user_id": user_id, "name": name, "assigned_at": assigned_at})
    return result


# One case by id (cases_pkey).
CASE_BY_ID = CompiledQuery(
    select(*SUMMARY_COLUMNS, cases.c.description).where(
        cases.c.id == bindparam("case_id", type_=BigInteger)
    )
)


def _event(event_id: str | None, event_type: EventType) -> dict[str, str | None]:
    """The history row's event columns (tragwerk reconcile compares them with the queue)."""
    return {"event_id": event_id, "event_type": event_type.value if event_id else None}


def _actor(principal: Principal | None) -> dict[str, int | None]:
    if principal is None:
        return {"actor_user_id": None, "actor_service_client_id": None}
    return {
        "actor_user_id": principal.user_id,
        "actor_service_client_id": principal.service_client_id,
    }


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


class CaseStore:
    """Reads and writes of cases. Every write is one transaction including its history row."""

    def __init__(
        self,
        engine: AsyncEngine,
        reporter: ModuleReporter,
        sla: SlaPolicy,
        *,
        emit_events: bool = True,
    ) -> None:
        self._engine = engine
        # Off only to measure what recording events adds to a write (bench/jobs.py).
        self._emit_events = emit_events
        self._reader = read_only(engine)
        self._reporter = reporter
        self._sla = sla

    def _sla_interval(self, priority: Priority) -> Any:
        # The deadline is computed in SQL from the database clock, like created_at.
        return literal(timedelta(hours=float(self._sla.hours[priority])), Interval)

    async def list(self, flt: CaseFilter, sort: str, after: str | None, limit: int) -> Page:
        shape, params = list_parameters(flt, sort, after, limit)
        query = _compiled_list(shape)
        with self._reporter.operation("list_cases"):
            async with self._reader.connect() as conn:
                rows = [dict(r) for r in await fetch(conn, query, params)]
                more = len(rows) > limit
                rows = rows[:limit]
                by_case = await assignees_of(conn, [r["id"] for r in rows])
        for row in rows:
            row["assignees"] = by_case[row["id"]]
        next_cursor = None
        if more and rows:
            last = rows[-1]
            key = last["created_at"] if sort == "created" else last["sla_due_at"]
            next_cursor = cursor.encode(sort, key, last["id"])
        return Page(rows, next_cursor)

    async def get(self, case_id: int) -> Row:
        with self._reporter.operation("get_case"):
            async with self._reader.connect() as conn:
                return await self._get(conn, case_id)

    async def _get(self, conn: AsyncConnection, case_id: int) -> Row:
        row = (
            (await conn.execute(select(*DETAIL_COLUMNS).where(cases.c.id == case_id)))
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound(f"case {case_id} does not exist")
        case = dict(row)
        case["assignees"] = (await assignees_of(conn, [case_id]))[case_id]
        return case

    async def read_in(self, conn: AsyncConnection, case_id: int) -> Row | None:
        """The case as the API shows it, in the caller's transaction; None if it is gone
        (reconciliation builds a lost event from it)."""
        try:
            return await self._get(conn, case_id)
        except NotFound:
            return None

    async def _check_location(self, conn: AsyncConnection, location_id: int) -> None:
        found = await conn.scalar(select(locations.c.id).where(locations.c.id == location_id))
        if found is None:
            raise InvalidReference(f"location {location_id} does not exist")

    async def _check_assignable(self, conn: AsyncConnection, user_ids: Sequence[int]) -> None:
        if not user_ids:
            return
        rows = await conn.execute(
            select(users.c.id, users.c.active).where(users.c.id.in_(list(user_ids)))
        )
        found: dict[int, bool] = dict(rows.all())
        missing = sorted(set(user_ids) - set(found))
        if missing:
            raise InvalidReference(f"users {missing} do not exist")
        inactive = sorted(uid for uid, active in found.items() if not active)
        if inactive:
            raise InvalidReference(f"users {inactive} are deactivated and cannot be assigned")

    async def create(
        self,
        *,
        title: str,
        description: str,
        priority: Priority,
        location_id: int,
        reporter_id: int,
        assignee_ids: Sequence[int],
        principal: Principal | None,
    ) -> Row:
        with self._reporter.operation("create_case"):
            async with self._engine.begin() as conn:
                await self._check_location(conn, location_id)
                await self._check_assignable(conn, [reporter_id])
                await self._check_assignable(conn, assignee_ids)
                due = func.now() + self._sla_interval(priority)
                case_id = await conn.scalar(
                    cases.insert()
                    .values(
                        title=title,
                        description=description,
                        priority=priority.value,
                        location_id=location_id,
                        reporter_id=reporter_id,
                        sla_due_at=due,
                    )
                    .returning(cases.c.id)
                )
                assert case_id is not None
                unique_assignees = list(dict.fromkeys(assignee_ids))
                if unique_assignees:
                    await conn.execute(
                        case_assignees.insert(),
                        [{"case_id": case_id, "user_id": u} for u in unique_assignees],
                    )
                event_id = self._event_id()
                await conn.execute(
                    case_history.insert().values(
                        case_id=case_id,
                        action="created",
                        changes={
                            "title": title,
                            "priority": priority.value,
                            "location_id": location_id,
                            "assignees": unique_assignees,
                        },
                        **_actor(principal),
                        **_event(event_id, EventType.CASE_CREATED),
                    )
                )
                case = await self._get(conn, case_id)
                await self._emit(conn, EventType.CASE_CREATED, case, event_id=event_id)
                return case

    async def _lock(self, conn: AsyncConnection, case_id: int, version: int | None) -> Row:
        row = (
            (
                await conn.execute(
                    select(*DETAIL_COLUMNS).where(cases.c.id == case_id).with_for_update()
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound(f"case {case_id} does not exist")
        if version is not None and row["version"] != version:
            raise StaleVersion(
                f"case {case_id} is at version {row['version']}, not {version}; "
                "fetch it again and reapply your change",
                current_version=row["version"],
            )
        return dict(row)

    def _event_id(self) -> str | None:
        """The id of the event a change will queue (named in its history row), if any."""
        return str(uuid.uuid4()) if self._emit_events else None

    async def _emit(
        self,
        conn: AsyncConnection,
        event_type: EventType,
        case: Row,
        recipients: Sequence[int] | None = None,
        *,
        event_id: str | None,
    ) -> None:
        """Record the event in this transaction: it exists exactly when the change does."""
        if event_id is not None:
            job = case_event(event_type, case, case["updated_at"], recipients, event_id)
            await enqueue(conn, [job])

    async def _bump(
        self,
        conn: AsyncConnection,
        case_id: int,
        values: dict[str, Any],
        action: str,
        changes: dict[str, Any],
        principal: Principal | None,
        event: EventType,
        recipients: Sequence[int] | None = None,
    ) -> Row:
        await conn.execute(
            cases.update()
            .where(cases.c.id == case_id)
            .values(**values, version=cases.c.version + 1, updated_at=func.now())
        )
        event_id = self._event_id()
        await conn.execute(
            case_history.insert().values(
                case_id=case_id,
                action=action,
                changes=changes,
                **_actor(principal),
                **_event(event_id, event),
            )
        )
        case = await self._get(conn, case_id)
        await self._emit(conn, event, case, recipients, event_id=event_id)
        return case

    async def update(
        self, case_id: int, version: int, fields: dict[str, Any], principal: Principal | None
    ) -> Row:
        """Change title, description, priority or location. The deadline follows the priority."""
        with self._reporter.operation("update_case"):
            async with self._engine.begin() as conn:
                current = await self._lock(conn, case_id, version)
                values: dict[str, Any] = {}
                changes: dict[str, Any] = {}
                for name, value in fields.items():
                    new = value.value if isinstance(value, Priority) else value
                    if current[name] != new:
                        values[name] = new
                        changes[name] = [_jsonable(current[name]), _jsonable(new)]
                if "location_id" in values:
                    await self._check_location(conn, values["location_id"])
                if "priority" in values:
                    values["sla_due_at"] = cases.c.created_at + self._sla_interval(
                        Priority(values["priority"])
                    )
                if not values:
                    return await self._get(conn, case_id)
                return await self._bump(
                    conn, case_id, values, "updated", changes, principal, EventType.CASE_UPDATED
                )

    async def change_status(
        self, case_id: int, version: int, target: Status, principal: Principal | None
    ) -> Row:
        with self._reporter.operation("change_status"):
            async with self._engine.begin() as conn:
                current = await self._lock(conn, case_id, version)
                check_transition(Status(current["status"]), target)
                return await self._bump(
                    conn,
                    case_id,
                    {"status": target.value},
                    "status_changed",
                    {"status": [current["status"], target.value]},
                    principal,
                    EventType.CASE_STATUS_CHANGED,
                )

    async def add_assignees(
        self,
        case_id: int,
        user_ids: Sequence[int],
        version: int | None,
        principal: Principal | None,
    ) -> Row:
        with self._reporter.operation("add_assignees"):
            async with self._engine.begin() as conn:
                await self._lock(conn, case_id, version)
                await self._check_assignable(conn, user_ids)
                added = (
                    (
                        await conn.execute(
                            pg_insert(case_assignees)
                            .values([{"case_id": case_id, "user_id": u} for u in user_ids])
                            .on_conflict_do_nothing()
                            .returning(case_assignees.c.user_id)
                        )
                    )
                    .scalars()
                    .all()
                )
                if not added:
                    return await self._get(conn, case_id)
                return await self._bump(
                    conn,
                    case_id,
                    {},
                    "assigned",
                    {"added": sorted(added)},
                    principal,
                    EventType.CASE_ASSIGNED,
                    recipients=sorted(added),
                )

    async def remove_assignee(
        self, case_id: int, user_id: int, version: int | None, principal: Principal | None
    ) -> Row:
        with self._reporter.operation("remove_assignee"):
            async with self._engine.begin() as conn:
                await self._lock(conn, case_id, version)
                removed = await conn.scalar(
                    case_assignees.delete()
                    .where(case_assignees.c.case_id == case_id, case_assignees.c.user_id == user_id)
                    .returning(case_assignees.c.user_id)
                )
                if removed is None:
                    raise NotFound(f"user {user_id} is not assigned to case {case_id}")
                return await self._bump(
                    conn,
                    case_id,
                    {},
                    "unassigned",
                    {"removed": [user_id]},
                    principal,
                    EventType.CASE_UPDATED,
                )

    async def history(self, case_id: int, after: str | None, limit: int) -> Page:
        """History of one case, oldest first (case_history_case_idx)."""
        with self._reporter.operation("case_history"):
            async with self._reader.connect() as conn:
                exists = await conn.scalar(select(cases.c.id).where(cases.c.id == case_id))
                if exists is None:
                    raise NotFound(f"case {case_id} does not exist")
                query = select(
                    case_history.c.id,
                    case_history.c.action,
                    case_history.c.changes,
                    case_history.c.actor_user_id,
                    case_history.c.actor_service_client_id,
                    case_history.c.at,
                ).where(case_history.c.case_id == case_id)
                if after is not None:
                    query = query.where(case_history.c.id > cursor.decode_id(after, "history"))
                rows = [
                    dict(r)
                    for r in (
                        await conn.execute(query.order_by(case_history.c.id).limit(limit + 1))
                    ).mappings()
                ]
        return page_by_id(rows, limit, "history")

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
from typing import Any, NamedTuple, NoReturn

import asyncpg
import orjson
from sqlalchemy import (
    BigInteger,
    DateTime,
    Select,
    Text,
    and_,
    any_,
    bindparam,
    select,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tragwerk.domain.cases import Priority, SlaPolicy, Status, check_transition
from tragwerk.domain.directory import Principal
from tragwerk.domain.errors import InvalidReference, NotFound, StaleVersion
from tragwerk.domain.events import EventType
from tragwerk.domain.observability import ModuleReporter
from tragwerk.store import cursor
from tragwerk.store.hot import CompiledQuery, Tx, fetch, transaction
from tragwerk.store.outbox import case_event, enqueue_in
from tragwerk.store.queries import Page, Row, case_writes, page_by_id, read_only
from tragwerk.store.tables import case_assignees, case_history, cases, users

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


def _history(
    action: str,
    changes: dict[str, Any],
    principal: Principal | None,
    event_id: str | None,
    event_type: EventType,
) -> dict[str, Any]:
    """The history row's parameters (case_writes): who did what, and the event it queued,
    which tragwerk reconcile compares with the queue."""
    return {
        "action": action,
        "changes": orjson.dumps(changes).decode(),
        "actor_user_id": principal.user_id if principal else None,
        "actor_service_client_id": principal.service_client_id if principal else None,
        "event_id": event_id,
        "event_type": event_type.value if event_id else None,
    }


async def _refuse_create(
    tx: Tx, location_id: int, reporter_id: int, assignees: Sequence[int]
) -> NoReturn:
    """Raise what CREATE's checks refused, in the order they are documented: the
    location, then the reporter, then the assignees."""
    found = await tx.fetchrow(
        case_writes.DIAGNOSE,
        {"location_id": location_id, "people": [reporter_id, *assignees]},
    )
    if not found["location"]:
        raise InvalidReference(f"location {location_id} does not exist")
    _refuse(found, [reporter_id])
    _refuse(found, assignees)
    # Checked in this transaction a moment ago: something changed in between.
    raise InvalidReference("a user or the location changed while the case was written; retry")


async def _refuse_users(tx: Tx, user_ids: Sequence[int]) -> NoReturn:
    """Raise which of `user_ids` do not exist or are deactivated."""
    # No location to check here: 0 is no location id.
    found = await tx.fetchrow(case_writes.DIAGNOSE, {"location_id": 0, "people": list(user_ids)})
    _refuse(found, user_ids)
    raise InvalidReference("a user changed while the case was written; retry")


def _refuse(found: Any, user_ids: Sequence[int]) -> None:
    missing = sorted(set(user_ids) - set(found["found"]))
    if missing:
        raise InvalidReference(f"users {missing} do not exist")
    inactive = sorted(set(user_ids) & set(found["inactive"]))
    if inactive:
        raise InvalidReference(f"users {inactive} are deactivated and cannot be assigned")


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

    def _sla_of(self, priority: Priority) -> timedelta:
        # The deadline is computed in SQL from the database clock, like created_at.
        return timedelta(hours=float(self._sla.hours[priority]))

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
        """One statement writes the case, its assignees and history (checks folded in),
        one more its event: BEGIN, CREATE, enqueue, COMMIT (case_writes)."""
        assignees = list(dict.fromkeys(assignee_ids))
        people = list(dict.fromkeys([reporter_id, *assignees]))
        event_id = self._event_id()
        changes = {
            "title": title,
            "priority": priority.value,
            "location_id": location_id,
            "assignees": assignees,
        }
        params = {
            "people": people,
            "location_id": location_id,
            "title": title,
            "description": description,
            "priority": priority.value,
            "reporter_id": reporter_id,
            "sla": self._sla_of(priority),
            "assignees": assignees,
            **_history("created", changes, principal, event_id, EventType.CASE_CREATED),
        }
        with self._reporter.operation("create_case"):
            async with transaction(self._engine) as tx:
                record = await tx.fetchrow(case_writes.CREATE, params)
                if record is None:
                    await _refuse_create(tx, location_id, reporter_id, assignees)
                case = case_writes.created_row(record, assignees)
                await self._emit(tx, EventType.CASE_CREATED, case, event_id=event_id)
                return case

    async def _lock(self, tx: Tx, case_id: int, version: int | None) -> Row:
        row = await tx.fetchrow(case_writes.LOCK, {"case_id": case_id})
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
        tx: Tx,
        event_type: EventType,
        case: Row,
        recipients: Sequence[int] | None = None,
        *,
        event_id: str | None,
    ) -> None:
        """Record the event in this transaction: it exists exactly when the change does."""
        if event_id is not None:
            job = case_event(event_type, case, case["updated_at"], recipients, event_id)
            await enqueue_in(tx, [job])

    async def _bump(
        self,
        tx: Tx,
        case_id: int,
        values: dict[str, Any],
        action: str,
        changes: dict[str, Any],
        principal: Principal | None,
        event: EventType,
        recipients: Sequence[int] | None = None,
    ) -> Row:
        """Set `values` on the locked case, count its version up, write the history row
        and queue the event: two statements (case_writes.bump, enqueue)."""
        event_id = self._event_id()
        params = {
            "case_id": case_id,
            **values,
            **_history(action, changes, principal, event_id, event),
        }
        record = await tx.fetchrow(case_writes.bump(frozenset(values)), params)
        assert record is not None, "the case is locked by this transaction"
        case = case_writes.case_row(record)
        await self._emit(tx, event, case, recipients, event_id=event_id)
        return case

    async def _unchanged(self, tx: Tx, case_id: int) -> Row:
        case = await case_writes.read(tx, case_id)
        assert case is not None, "the case is locked by this transaction"
        return case

    async def update(
        self, case_id: int, version: int, fields: dict[str, Any], principal: Principal | None
    ) -> Row:
        """Change title, description, priority or location. The deadline follows the priority."""
        with self._reporter.operation("update_case"):
            async with transaction(self._engine) as tx:
                current = await self._lock(tx, case_id, version)
                values: dict[str, Any] = {}
                changes: dict[str, Any] = {}
                for name, value in fields.items():
                    new = value.value if isinstance(value, Priority) else value
                    if current[name] != new:
                        values[name] = new
                        changes[name] = [_jsonable(current[name]), _jsonable(new)]
                if not values:
                    return await self._unchanged(tx, case_id)
                if "priority" in values:
                    # The new deadline: this long after the case's creation (case_writes).
                    values["sla_due_at"] = self._sla_of(Priority(values["priority"]))
                try:
                    return await self._bump(
                        tx, case_id, values, "updated", changes, principal, EventType.CASE_UPDATED
                    )
                except asyncpg.ForeignKeyViolationError:
                    # The only reference an update can change is the location.
                    raise InvalidReference(
                        f"location {values['location_id']} does not exist"
                    ) from None

    async def change_status(
        self, case_id: int, version: int, target: Status, principal: Principal | None
    ) -> Row:
        with self._reporter.operation("change_status"):
            async with transaction(self._engine) as tx:
                current = await self._lock(tx, case_id, version)
                check_transition(Status(current["status"]), target)
                return await self._bump(
                    tx,
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
            async with transaction(self._engine) as tx:
                await self._lock(tx, case_id, version)
                wanted = list(dict.fromkeys(user_ids))
                result = await tx.fetchrow(
                    case_writes.ADD_ASSIGNEES, {"case_id": case_id, "user_ids": wanted}
                )
                if not result["ok"]:
                    await _refuse_users(tx, wanted)
                added = list(result["added"])
                if not added:
                    return await self._unchanged(tx, case_id)
                return await self._bump(
                    tx,
                    case_id,
                    {},
                    "assigned",
                    {"added": added},
                    principal,
                    EventType.CASE_ASSIGNED,
                    recipients=added,
                )

    async def remove_assignee(
        self, case_id: int, user_id: int, version: int | None, principal: Principal | None
    ) -> Row:
        with self._reporter.operation("remove_assignee"):
            async with transaction(self._engine) as tx:
                await self._lock(tx, case_id, version)
                removed = await tx.fetchrow(
                    case_writes.REMOVE_ASSIGNEE, {"case_id": case_id, "user_id": user_id}
                )
                if removed is None:
                    raise NotFound(f"user {user_id} is not assigned to case {case_id}")
                return await self._bump(
                    tx,
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

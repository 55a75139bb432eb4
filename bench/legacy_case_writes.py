"""The case writes as they were before they moved to asyncpg (decisions/0012), kept only
so that bench/case_writes.py can run them beside today's in the same run.

`LegacyCaseStore` is today's CaseStore with its five writes replaced by the earlier
ones: a statement per check, the insert, the assignees, the history row and a
read-back, each built and executed through SQLAlchemy. `app_from_env` is a granian
factory serving tragwerk's app with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Interval, func, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from tragwerk.domain.cases import Priority, Status, check_transition
from tragwerk.domain.directory import Principal
from tragwerk.domain.errors import InvalidReference, NotFound, StaleVersion
from tragwerk.domain.events import EventType
from tragwerk.store.outbox import case_event, enqueue
from tragwerk.store.queries import Row
from tragwerk.store.queries.cases import DETAIL_COLUMNS, CaseStore, assignees_of
from tragwerk.store.tables import case_assignees, case_history, cases, locations, users


def _jsonable(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


class LegacyCaseStore(CaseStore):
    def _sla_interval(self, priority: Priority) -> Any:
        return literal(timedelta(hours=float(self._sla.hours[priority])), Interval)

    async def _get_sa(self, conn: AsyncConnection, case_id: int) -> Row:
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

    async def _emit_sa(
        self,
        conn: AsyncConnection,
        event_type: EventType,
        case: Row,
        recipients: Sequence[int] | None,
        event_id: str | None,
    ) -> None:
        if event_id is not None:
            job = case_event(event_type, case, case["updated_at"], recipients, event_id)
            await enqueue(conn, [job])

    def _history(
        self,
        case_id: int,
        action: str,
        changes: Any,
        principal: Any,
        event_id: Any,
        event: EventType,
    ) -> Any:
        actor = {
            "actor_user_id": principal.user_id if principal else None,
            "actor_service_client_id": principal.service_client_id if principal else None,
        }
        return case_history.insert().values(
            case_id=case_id,
            action=action,
            changes=changes,
            event_id=event_id,
            event_type=event.value if event_id else None,
            **actor,
        )

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
            unique = list(dict.fromkeys(assignee_ids))
            if unique:
                await conn.execute(
                    case_assignees.insert(), [{"case_id": case_id, "user_id": u} for u in unique]
                )
            event_id = self._event_id()
            changes = {
                "title": title,
                "priority": priority.value,
                "location_id": location_id,
                "assignees": unique,
            }
            await conn.execute(
                self._history(
                    case_id, "created", changes, principal, event_id, EventType.CASE_CREATED
                )
            )
            case = await self._get_sa(conn, case_id)
            await self._emit_sa(conn, EventType.CASE_CREATED, case, None, event_id)
            return case

    async def _lock_sa(self, conn: AsyncConnection, case_id: int, version: int | None) -> Row:
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

    async def _bump_sa(
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
        await conn.execute(self._history(case_id, action, changes, principal, event_id, event))
        case = await self._get_sa(conn, case_id)
        await self._emit_sa(conn, event, case, recipients, event_id)
        return case

    async def update(
        self, case_id: int, version: int, fields: dict[str, Any], principal: Principal | None
    ) -> Row:
        async with self._engine.begin() as conn:
            current = await self._lock_sa(conn, case_id, version)
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
                return await self._get_sa(conn, case_id)
            return await self._bump_sa(
                conn, case_id, values, "updated", changes, principal, EventType.CASE_UPDATED
            )

    async def change_status(
        self, case_id: int, version: int, target: Status, principal: Principal | None
    ) -> Row:
        async with self._engine.begin() as conn:
            current = await self._lock_sa(conn, case_id, version)
            check_transition(Status(current["status"]), target)
            return await self._bump_sa(
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
        async with self._engine.begin() as conn:
            await self._lock_sa(conn, case_id, version)
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
                return await self._get_sa(conn, case_id)
            return await self._bump_sa(
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
        async with self._engine.begin() as conn:
            await self._lock_sa(conn, case_id, version)
            removed = await conn.scalar(
                case_assignees.delete()
                .where(case_assignees.c.case_id == case_id, case_assignees.c.user_id == user_id)
                .returning(case_assignees.c.user_id)
            )
            if removed is None:
                raise NotFound(f"user {user_id} is not assigned to case {case_id}")
            return await self._bump_sa(
                conn,
                case_id,
                {},
                "unassigned",
                {"removed": [user_id]},
                principal,
                EventType.CASE_UPDATED,
            )


def app_from_env() -> FastAPI:
    """granian factory: tragwerk's app, its case writes replaced by the earlier ones."""
    from tragwerk.bootstrap import app_from_env as tragwerk_app

    app = tragwerk_app()
    services = app.state.services
    services.cases = LegacyCaseStore(
        services.engine, services.metrics.module("cases"), services.settings.sla_policy
    )
    return app

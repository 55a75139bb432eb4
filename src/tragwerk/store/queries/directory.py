"""The directory: countries, locations, roles, users, service clients and API tokens."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tragwerk.domain.directory import ALL_PERMISSIONS, Principal
from tragwerk.domain.errors import Conflict, InvalidReference, NotFound
from tragwerk.domain.observability import ModuleReporter
from tragwerk.store import cursor
from tragwerk.store.hot import CompiledQuery, fetch
from tragwerk.store.queries import Page, Row, page_by_id, read_only
from tragwerk.store.tables import (
    api_tokens,
    countries,
    locations,
    roles,
    service_clients,
    users,
)

ADMIN_ROLE = "admin"
TOKEN_PREFIX = "tw_"  # noqa: S105 - a marker that makes leaked tokens easy to find, not a secret

# One round trip per request: token -> owner -> role -> permissions (api_tokens_token_hash_key).
AUTHENTICATE = CompiledQuery(
    text(
        """
    SELECT t.id AS token_id, t.user_id, t.service_client_id,
           coalesce(sc.internal, false) AS internal, r.id AS role_id, r.permissions,
           t.expires_at
    FROM api_tokens t
    LEFT JOIN users u ON u.id = t.user_id
    LEFT JOIN service_clients sc ON sc.id = t.service_client_id
    JOIN roles r ON r.id = coalesce(u.role_id, sc.role_id)
    WHERE t.token_hash = :token_hash
      AND t.revoked_at IS NULL
      AND (t.expires_at IS NULL OR t.expires_at > now())
      AND coalesce(u.active, sc.active)
    """
    )
)


def principal_of(row: Row) -> Principal:
    return Principal(
        token_id=row["token_id"],
        user_id=row["user_id"],
        service_client_id=row["service_client_id"],
        internal=row["internal"],
        permissions=frozenset(row["permissions"]),
    )


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def check_permissions(permissions: Iterable[str]) -> list[str]:
    names = sorted(set(permissions))
    unknown = [p for p in names if p not in ALL_PERMISSIONS]
    if unknown:
        known = ", ".join(sorted(ALL_PERMISSIONS))
        raise InvalidReference(f"unknown permissions {unknown}; known: {known}")
    return names


def check_time_zone(name: str) -> None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidReference(
            f"unknown time zone {name!r}; use an IANA name such as Europe/Berlin"
        ) from None


def _rows(result: Any) -> list[Row]:
    return [dict(r) for r in result.mappings()]


USER_COLUMNS = (
    users.c.id,
    users.c.email,
    users.c.name,
    users.c.role_id,
    users.c.location_id,
    users.c.active,
    users.c.created_at,
)


class DirectoryStore:
    def __init__(self, engine: AsyncEngine, reporter: ModuleReporter) -> None:
        self._engine = engine
        self._reader = read_only(engine)
        self._reporter = reporter

    # -- authentication -------------------------------------------------------------
    async def token_owner(self, token_hash: bytes) -> Row | None:
        """The live token with this hash and its owner's role, or None."""
        with self._reporter.operation("authenticate"):
            async with self._reader.connect() as conn:
                rows = await fetch(conn, AUTHENTICATE, {"token_hash": token_hash})
        return dict(rows[0]) if rows else None

    async def authenticate(self, token: str) -> Principal | None:
        row = await self.token_owner(hash_token(token))
        return None if row is None else principal_of(row)

    # -- countries and locations ----------------------------------------------------
    async def countries(self) -> list[Row]:
        async with self._reader.connect() as conn:
            return _rows(await conn.execute(select(countries).order_by(countries.c.code)))

    async def country(self, code: str) -> Row:
        async with self._reader.connect() as conn:
            row = (
                (await conn.execute(select(countries).where(countries.c.code == code.upper())))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"country {code!r} does not exist (use an ISO 3166 alpha-2 code)")
        return dict(row)

    async def locations(self) -> list[Row]:
        async with self._reader.connect() as conn:
            return _rows(await conn.execute(select(locations).order_by(locations.c.id)))

    async def location(self, location_id: int) -> Row:
        async with self._reader.connect() as conn:
            row = (
                (await conn.execute(select(locations).where(locations.c.id == location_id)))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"location {location_id} does not exist")
        return dict(row)

    async def _check_country(self, conn: AsyncConnection, code: str) -> None:
        if await conn.scalar(select(countries.c.code).where(countries.c.code == code)) is None:
            raise InvalidReference(f"country {code!r} does not exist (ISO 3166 alpha-2)")

    async def create_location(self, name: str, country_code: str, time_zone: str) -> Row:
        check_time_zone(time_zone)
        async with self._engine.begin() as conn:
            await self._check_country(conn, country_code.upper())
            row = (
                (
                    await conn.execute(
                        locations.insert()
                        .values(name=name, country_code=country_code.upper(), time_zone=time_zone)
                        .returning(*locations.c)
                    )
                )
                .mappings()
                .one()
            )
            return dict(row)

    async def update_location(self, location_id: int, fields: dict[str, Any]) -> Row:
        if "time_zone" in fields:
            check_time_zone(fields["time_zone"])
        if "country_code" in fields:
            fields = {**fields, "country_code": fields["country_code"].upper()}
        async with self._engine.begin() as conn:
            if "country_code" in fields:
                await self._check_country(conn, fields["country_code"])
            row = (
                (
                    await conn.execute(
                        locations.update()
                        .where(locations.c.id == location_id)
                        .values(**fields)
                        .returning(*locations.c)
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"location {location_id} does not exist")
        return dict(row)

    # -- roles ----------------------------------------------------------------------
    async def roles(self) -> list[Row]:
        async with self._reader.connect() as conn:
            return _rows(await conn.execute(select(roles).order_by(roles.c.id)))

    async def create_role(self, name: str, permissions: Iterable[str]) -> Row:
        names = check_permissions(permissions)
        try:
            async with self._engine.begin() as conn:
                row = (
                    (
                        await conn.execute(
                            roles.insert().values(name=name, permissions=names).returning(*roles.c)
                        )
                    )
                    .mappings()
                    .one()
                )
        except IntegrityError:
            raise Conflict(f"a role named {name!r} exists already") from None
        return dict(row)

    async def update_role(self, role_id: int, permissions: Iterable[str]) -> Row:
        names = check_permissions(permissions)
        async with self._engine.begin() as conn:
            name = await conn.scalar(select(roles.c.name).where(roles.c.id == role_id))
            if name == ADMIN_ROLE and set(names) != set(ALL_PERMISSIONS):
                # Otherwise one request could lock every administrator out for good.
                raise Conflict("the admin role keeps every permission; create a new role instead")
            row = (
                (
                    await conn.execute(
                        roles.update()
                        .where(roles.c.id == role_id)
                        .values(permissions=names)
                        .returning(*roles.c)
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"role {role_id} does not exist")
        return dict(row)

    async def role_id(self, conn: AsyncConnection, name: str) -> int:
        role = await conn.scalar(select(roles.c.id).where(roles.c.name == name))
        if role is None:
            raise InvalidReference(f"role {name!r} does not exist")
        return int(role)

    # -- users ----------------------------------------------------------------------
    async def users(
        self, *, after: str | None, limit: int, role_id: int | None, active: bool | None
    ) -> Page:
        """Users by id (users_pkey; users_role_idx when filtered by role)."""
        query = select(*USER_COLUMNS)
        if after is not None:
            query = query.where(users.c.id > cursor.decode_id(after, "users"))
        if role_id is not None:
            query = query.where(users.c.role_id == role_id)
        if active is not None:
            query = query.where(users.c.active == active)
        async with self._reader.connect() as conn:
            rows = _rows(await conn.execute(query.order_by(users.c.id).limit(limit + 1)))
        return page_by_id(rows, limit, "users")

    async def user(self, user_id: int) -> Row:
        async with self._reader.connect() as conn:
            row = (
                (await conn.execute(select(*USER_COLUMNS).where(users.c.id == user_id)))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"user {user_id} does not exist")
        return dict(row)

    async def _check_user_refs(self, conn: AsyncConnection, fields: dict[str, Any]) -> None:
        if "role_id" in fields and (
            await conn.scalar(select(roles.c.id).where(roles.c.id == fields["role_id"])) is None
        ):
            raise InvalidReference(f"role {fields['role_id']} does not exist")
        location_id = fields.get("location_id")
        if location_id is not None and (
            await conn.scalar(select(locations.c.id).where(locations.c.id == location_id)) is None
        ):
            raise InvalidReference(f"location {location_id} does not exist")

    async def _email_taken(self, conn: AsyncConnection, email: str, user_id: int | None) -> bool:
        query = select(users.c.id).where(func.lower(users.c.email) == email.lower())
        if user_id is not None:
            query = query.where(users.c.id != user_id)
        return await conn.scalar(query) is not None

    async def create_user(self, fields: dict[str, Any], conn: AsyncConnection | None = None) -> Row:
        async def run(c: AsyncConnection) -> Row:
            await self._check_user_refs(c, fields)
            if await self._email_taken(c, fields["email"], None):
                raise Conflict(f"a user with email {fields['email']!r} exists already")
            row = (
                (await c.execute(users.insert().values(**fields).returning(*USER_COLUMNS)))
                .mappings()
                .one()
            )
            return dict(row)

        if conn is not None:
            return await run(conn)
        try:
            async with self._engine.begin() as c:
                return await run(c)
        except IntegrityError:  # two creates raced past the check above
            raise Conflict(f"a user with email {fields['email']!r} exists already") from None

    async def update_user(self, user_id: int, fields: dict[str, Any]) -> Row:
        try:
            async with self._engine.begin() as conn:
                await self._check_user_refs(conn, fields)
                if "email" in fields and await self._email_taken(conn, fields["email"], user_id):
                    raise Conflict(f"a user with email {fields['email']!r} exists already")
                row = (
                    (
                        await conn.execute(
                            users.update()
                            .where(users.c.id == user_id)
                            .values(**fields)
                            .returning(*USER_COLUMNS)
                        )
                    )
                    .mappings()
                    .first()
                )
        except IntegrityError:
            raise Conflict("the change conflicts with another user") from None
        if row is None:
            raise NotFound(f"user {user_id} does not exist")
        return dict(row)

    # -- service clients and tokens -------------------------------------------------
    async def service_clients(self) -> list[Row]:
        async with self._reader.connect() as conn:
            return _rows(await conn.execute(select(service_clients).order_by(service_clients.c.id)))

    async def create_service_client(self, name: str, role_id: int, internal: bool) -> Row:
        try:
            async with self._engine.begin() as conn:
                await self._check_user_refs(conn, {"role_id": role_id})
                row = (
                    (
                        await conn.execute(
                            service_clients.insert()
                            .values(name=name, role_id=role_id, internal=internal)
                            .returning(*service_clients.c)
                        )
                    )
                    .mappings()
                    .one()
                )
        except IntegrityError:
            raise Conflict(f"a service client named {name!r} exists already") from None
        return dict(row)

    async def set_service_client_active(self, client_id: int, active: bool) -> Row:
        async with self._engine.begin() as conn:
            row = (
                (
                    await conn.execute(
                        service_clients.update()
                        .where(service_clients.c.id == client_id)
                        .values(active=active)
                        .returning(*service_clients.c)
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"service client {client_id} does not exist")
        return dict(row)

    async def create_token(
        self,
        *,
        name: str,
        user_id: int | None,
        service_client_id: int | None,
        expires_at: datetime | None,
        conn: AsyncConnection | None = None,
    ) -> tuple[str, Row]:
        """Create a token; the plain value is returned once and only its hash is stored."""
        token = new_token()

        async def run(c: AsyncConnection) -> Row:
            if (
                user_id is not None
                and await c.scalar(select(users.c.id).where(users.c.id == user_id)) is None
            ):
                raise InvalidReference(f"user {user_id} does not exist")
            if (
                service_client_id is not None
                and await c.scalar(
                    select(service_clients.c.id).where(service_clients.c.id == service_client_id)
                )
                is None
            ):
                raise InvalidReference(f"service client {service_client_id} does not exist")
            row = (
                (
                    await c.execute(
                        api_tokens.insert()
                        .values(
                            token_hash=hash_token(token),
                            name=name,
                            user_id=user_id,
                            service_client_id=service_client_id,
                            expires_at=expires_at,
                        )
                        .returning(*TOKEN_COLUMNS)
                    )
                )
                .mappings()
                .one()
            )
            return dict(row)

        if conn is not None:
            return token, await run(conn)
        async with self._engine.begin() as c:
            return token, await run(c)

    async def tokens(
        self, *, user_id: int | None, service_client_id: int | None, every_owner: bool = False
    ) -> list[Row]:
        """The tokens of one owner (a user or a service client), or of every owner."""
        query = select(*TOKEN_COLUMNS).order_by(api_tokens.c.id)
        if not every_owner:
            # Both conditions, also when an id is None: a service client's listing must
            # not include users' tokens, whose service_client_id is NULL too.
            query = query.where(
                api_tokens.c.user_id == user_id
                if user_id is not None
                else api_tokens.c.user_id.is_(None),
                api_tokens.c.service_client_id == service_client_id
                if service_client_id is not None
                else api_tokens.c.service_client_id.is_(None),
            )
        async with self._reader.connect() as conn:
            return _rows(await conn.execute(query))

    async def token(self, token_id: int) -> Row:
        async with self._reader.connect() as conn:
            row = (
                (await conn.execute(select(*TOKEN_COLUMNS).where(api_tokens.c.id == token_id)))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"token {token_id} does not exist")
        return dict(row)

    async def revoke_token(self, token_id: int) -> Row:
        async with self._engine.begin() as conn:
            row = (
                (
                    await conn.execute(
                        api_tokens.update()
                        .where(api_tokens.c.id == token_id)
                        .values(revoked_at=func.coalesce(api_tokens.c.revoked_at, func.now()))
                        .returning(*TOKEN_COLUMNS)
                    )
                )
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"token {token_id} does not exist")
        return dict(row)


TOKEN_COLUMNS = (
    api_tokens.c.id,
    api_tokens.c.name,
    api_tokens.c.user_id,
    api_tokens.c.service_client_id,
    api_tokens.c.created_at,
    api_tokens.c.expires_at,
    api_tokens.c.revoked_at,
)

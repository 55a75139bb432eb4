"""Hot reads: statements built with SQLAlchemy Core, compiled once, run on asyncpg directly.

The requests every user makes (authenticate, list cases, read a case) spend most of
their CPU in SQLAlchemy's per-execution machinery (cache keys, result rows), not in
PostgreSQL. Here a statement is compiled once per shape, and each execution is one
`fetch` on the driver connection returning plain records. Measured in
docs/decisions/0002-hot-reads-on-asyncpg.md. Writes keep the full SQLAlchemy path.

Executions still reach SQLAlchemy's `before_cursor_execute` listeners (with no
cursor or context), so statement counting sees them like any other query.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import Executable

_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]


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
    sync = conn.sync_connection
    if sync is not None and sync.dispatch.before_cursor_execute:
        for listener in sync.dispatch.before_cursor_execute:
            listener(sync, None, query.sql, args, None, False)
    raw = (await conn.get_raw_connection()).driver_connection
    assert raw is not None
    records: Sequence[Any] = await raw.fetch(query.sql, *args)
    return records

"""The hot queries, one module per area. Each names the index it relies on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from tragwerk.store import cursor

Row = dict[str, Any]


@dataclass(frozen=True)
class Page:
    items: list[Row]
    next_cursor: str | None


def page_by_id(rows: list[Row], limit: int, listing: str) -> Page:
    """Cut a `limit + 1` fetch to a page whose cursor is the last row's id."""
    if len(rows) <= limit:
        return Page(rows, None)
    rows = rows[:limit]
    return Page(rows, cursor.encode(listing, None, rows[-1]["id"]))


def read_only(engine: AsyncEngine) -> AsyncEngine:
    """The same pool, without BEGIN and ROLLBACK around reads.

    Under READ COMMITTED every statement takes its own snapshot anyway, so a read
    gains nothing from a transaction but pays two extra round trips for one.
    """
    return engine.execution_options(isolation_level="AUTOCOMMIT")

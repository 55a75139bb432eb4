"""The hot queries, one module per area. Each names the index it relies on."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

Row = dict[str, Any]


def read_only(engine: AsyncEngine) -> AsyncEngine:
    """The same pool, without BEGIN and ROLLBACK around reads.

    Under READ COMMITTED every statement takes its own snapshot anyway, so a read
    gains nothing from a transaction but pays two extra round trips for one.
    """
    return engine.execution_options(isolation_level="AUTOCOMMIT")

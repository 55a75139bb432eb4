"""Alert notifications claimed in PostgreSQL, so that of several processes one sends each."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

# Inserted, or taken over once the previous claim ran out; RETURNING says who won.
_CLAIM = text(
    """
    INSERT INTO alert_claims (key, claimed_until)
    VALUES (:key, now() + CAST(:hold AS interval))
    ON CONFLICT (key) DO UPDATE SET claimed_until = excluded.claimed_until
        WHERE alert_claims.claimed_until <= now()
    RETURNING key
    """
)
_RELEASE = text("DELETE FROM alert_claims WHERE key = :key")
_PRUNE = text("DELETE FROM alert_claims WHERE claimed_until < now() - interval '1 day'")


class DatabaseClaims:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def claim(self, key: str, seconds: float) -> bool:
        async with self._engine.connect() as conn:
            hold = timedelta(seconds=seconds)
            row = (await conn.execute(_CLAIM, {"key": key, "hold": hold})).first()
        return row is not None

    async def release(self, key: str) -> None:
        async with self._engine.connect() as conn:
            await conn.execute(_RELEASE, {"key": key})

    async def prune(self) -> int:
        async with self._engine.connect() as conn:
            return int((await conn.execute(_PRUNE)).rowcount)

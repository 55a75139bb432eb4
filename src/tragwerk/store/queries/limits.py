"""Run-time overrides of rate-limit tiers and their audit trail."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tragwerk.store.queries import Row, read_only

OVERRIDES = text(
    "SELECT tier, rate, fail_mode, updated_at, updated_by, updated_by_service_client "
    "FROM rate_limit_tiers"
)

UPSERT = text(
    """
    WITH old AS (SELECT rate, fail_mode FROM rate_limit_tiers WHERE tier = :tier FOR UPDATE),
    saved AS (
        INSERT INTO rate_limit_tiers (tier, rate, fail_mode, updated_by,
                                      updated_by_service_client, updated_at)
        VALUES (:tier, :rate, :fail_mode, :user_id, :client_id, now())
        ON CONFLICT (tier) DO UPDATE
            SET rate = excluded.rate, fail_mode = excluded.fail_mode,
                updated_by = excluded.updated_by,
                updated_by_service_client = excluded.updated_by_service_client,
                updated_at = now()
        RETURNING tier, rate, fail_mode, updated_at, updated_by, updated_by_service_client
    ),
    audited AS (
        INSERT INTO rate_limit_audit (tier, old_rate, new_rate, old_fail_mode, new_fail_mode,
                                      changed_by, changed_by_service_client)
        SELECT :tier, (SELECT rate FROM old), :rate, (SELECT fail_mode FROM old), :fail_mode,
               :user_id, :client_id
    )
    SELECT * FROM saved
    """
)

REMOVE = text(
    """
    WITH gone AS (DELETE FROM rate_limit_tiers WHERE tier = :tier RETURNING rate, fail_mode)
    INSERT INTO rate_limit_audit (tier, old_rate, new_rate, old_fail_mode, new_fail_mode,
                                  changed_by, changed_by_service_client)
    SELECT :tier, rate, NULL, fail_mode, NULL, :user_id, :client_id FROM gone
    RETURNING id
    """
)

AUDIT = text(
    """
    SELECT id, tier, old_rate, new_rate, old_fail_mode, new_fail_mode, changed_by,
           changed_by_service_client, changed_at
    FROM rate_limit_audit ORDER BY id DESC LIMIT :limit
    """
)


Actor = tuple[int | None, int | None]  # (user id, service client id) of who changed it


def _actor(actor: Actor) -> dict[str, int | None]:
    return {"user_id": actor[0], "client_id": actor[1]}


class LimitStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reader = read_only(engine)

    async def overrides(self) -> list[Row]:
        async with self._reader.connect() as conn:
            return [dict(r) for r in (await conn.execute(OVERRIDES)).mappings()]

    async def set(self, tier: str, rate: str, fail_mode: str, actor: Actor) -> Row:
        """Store an override and its audit row in one transaction."""
        async with self._engine.begin() as conn:
            row = (
                (
                    await conn.execute(
                        UPSERT,
                        {"tier": tier, "rate": rate, "fail_mode": fail_mode, **_actor(actor)},
                    )
                )
                .mappings()
                .one()
            )
        return dict(row)

    async def remove(self, tier: str, actor: Actor) -> bool:
        async with self._engine.begin() as conn:
            removed = (await conn.execute(REMOVE, {"tier": tier, **_actor(actor)})).first()
        return removed is not None

    async def audit(self, limit: int) -> list[Row]:
        async with self._reader.connect() as conn:
            return [dict(r) for r in (await conn.execute(AUDIT, {"limit": limit})).mappings()]

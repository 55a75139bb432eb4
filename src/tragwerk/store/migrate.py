"""Run the Alembic migrations from code, without an alembic.ini on disk."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate the database to `revision`. Safe to run concurrently: one waits on a lock."""
    async with engine.connect() as conn:
        # Several instances may start at once; the advisory lock makes the second wait
        # and then find nothing left to do.
        await conn.execute(text("SELECT pg_advisory_lock(7215000001)"))
        try:
            await conn.run_sync(_upgrade, revision)
            await conn.commit()
        except BaseException:
            await conn.rollback()
            raise
        finally:
            await conn.execute(text("SELECT pg_advisory_unlock(7215000001)"))
            await conn.commit()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        exists = await conn.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
        if not exists:
            return None
        value = await conn.scalar(text("SELECT version_num FROM alembic_version"))
        return str(value) if value is not None else None

"""Migrations: they create what tables.py describes, and run down and up again."""

from __future__ import annotations

from sqlalchemy import text

from tests.conftest import ADMIN_URL_OF, create_database, drop_database
from tragwerk.store.database import create_engine
from tragwerk.store.migrate import alembic_config, current_revision, upgrade
from tragwerk.store.tables import metadata


async def test_migrated_schema_matches_the_table_definitions(database_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:

            def diff(sync_conn):  # type: ignore[no-untyped-def]
                context = MigrationContext.configure(sync_conn)
                return compare_metadata(context, metadata)

            changes = await conn.run_sync(diff)
    finally:
        await engine.dispose()
    # Indexes live in the migration only (tables.py would duplicate them); compare the rest.
    # The job queue's tables are pgqueuer's (migration 0005), read through its own queries.
    relevant = [
        c
        for c in changes
        if not (isinstance(c, tuple) and "index" in c[0])
        and not (c[0] == "remove_table" and c[1].name.startswith("pgqueuer"))
    ]
    assert relevant == []


async def test_down_and_up_again(database_url: str) -> None:
    from alembic import command

    admin = ADMIN_URL_OF[database_url]
    url = await create_database(admin)
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        await upgrade(engine)
        assert await current_revision(engine) == "0010"
        await upgrade(engine)  # a second run has nothing to do
        async with engine.connect() as conn:

            def down(sync_conn):  # type: ignore[no-untyped-def]
                config = alembic_config()
                config.attributes["connection"] = sync_conn
                command.downgrade(config, "base")

            await conn.run_sync(down)
            await conn.commit()
            remaining = await conn.scalar(
                text(
                    "SELECT count(*) FROM information_schema.tables "
                    "WHERE table_schema = 'public' AND table_name <> 'alembic_version'"
                )
            )
            assert remaining == 0
        await upgrade(engine)
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT count(*) FROM countries")) >= 249
            assert await conn.scalar(text("SELECT count(*) FROM roles")) == 3
    finally:
        await engine.dispose()
        await drop_database(admin, url)

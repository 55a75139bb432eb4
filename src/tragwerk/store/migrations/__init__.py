"""Alembic migrations. Run with `tragwerk migrate` (see tragwerk.store.migrate)."""

"""Tell every listening instance which rows of the cached tables changed.

Statement-level triggers with transition tables send one NOTIFY per statement on
channel `tragwerk_changes`, delivered when the transaction commits (and never if it
rolls back), whoever made the change: the API, a bulk UPDATE in psql, a migration.
Payload: {"table": ..., "ids": [...]} or {"table": ..., "ids": null} meaning "all"
(TRUNCATE, or more ids than fit).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Past this many ids the payload says "all": NOTIFY payloads must stay under 8,000 bytes.
MAX_IDS = 500

FUNCTION = f"""
CREATE FUNCTION tragwerk_notify_changes() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    key_column text := TG_ARGV[0];
    ids jsonb;
    total bigint;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        ids := NULL;
    ELSIF TG_OP = 'DELETE' THEN
        EXECUTE format('SELECT count(*), jsonb_agg(k) FROM (SELECT %I AS k FROM old_rows) s',
                       key_column) INTO total, ids;
    ELSE
        EXECUTE format('SELECT count(*), jsonb_agg(k) FROM (SELECT %I AS k FROM new_rows) s',
                       key_column) INTO total, ids;
    END IF;
    IF TG_OP <> 'TRUNCATE' AND total = 0 THEN
        RETURN NULL;  -- an UPDATE that matched nothing changes nothing
    END IF;
    IF total > {MAX_IDS} THEN
        ids := NULL;
    END IF;
    PERFORM pg_notify('tragwerk_changes',
                      jsonb_build_object('table', TG_TABLE_NAME, 'ids', ids)::text);
    RETURN NULL;
END
$$
"""

# table -> the column whose values the caches are keyed by
WATCHED = {
    "countries": "code",
    "locations": "id",
    "roles": "id",
    "users": "id",
    "service_clients": "id",
    "api_tokens": "id",
}


def upgrade() -> None:
    op.execute(FUNCTION)
    for table, key in WATCHED.items():
        op.execute(
            f"CREATE TRIGGER {table}_changed_ins AFTER INSERT ON {table} "
            f"REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
            f"EXECUTE FUNCTION tragwerk_notify_changes('{key}')"
        )
        op.execute(
            f"CREATE TRIGGER {table}_changed_upd AFTER UPDATE ON {table} "
            f"REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT "
            f"EXECUTE FUNCTION tragwerk_notify_changes('{key}')"
        )
        op.execute(
            f"CREATE TRIGGER {table}_changed_del AFTER DELETE ON {table} "
            f"REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT "
            f"EXECUTE FUNCTION tragwerk_notify_changes('{key}')"
        )
        op.execute(
            f"CREATE TRIGGER {table}_changed_trunc AFTER TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION tragwerk_notify_changes('{key}')"
        )


def downgrade() -> None:
    for table in WATCHED:
        for suffix in ("ins", "upd", "del", "trunc"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_changed_{suffix} ON {table}")
    op.execute("DROP FUNCTION IF EXISTS tragwerk_notify_changes()")

"""The job queue, and what makes its work idempotent.

- pgqueuer's schema (tables pgqueuer, pgqueuer_log, pgqueuer_statistics,
  pgqueuer_schedules and the NOTIFY trigger), frozen here as pgqueuer 1.6.0 wrote it
  (0005_pgqueuer_1_6_0.sql), so that upgrading the library never changes what this
  migration did; a later pgqueuer schema change comes as a new migration.
- notifications.event_id: the event a notification came from; unique per recipient,
  so a fan-out that runs twice (after a worker crash) inserts nothing twice.
- sla_alerts: one row per case and threshold that has been raised; the SLA monitor
  inserts here and enqueues in one transaction, so several workers scanning at once
  raise each alert once.
- cases_sla_open_idx: the monitor's scan reads only open cases near their deadline.
- the admin role gains jobs:manage (list and requeue held jobs).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

PGQUEUER_SQL = Path(__file__).with_name("0005_pgqueuer_1_6_0.sql")

STATEMENTS = [
    "ALTER TABLE notifications ADD COLUMN event_id uuid",
    """
    CREATE UNIQUE INDEX notifications_event_user_idx
        ON notifications (event_id, user_id) WHERE event_id IS NOT NULL
    """,
    """
    CREATE TABLE sla_alerts (
        case_id    bigint NOT NULL REFERENCES cases (id) ON DELETE CASCADE,
        threshold  text NOT NULL CHECK (threshold IN ('at_risk', 'breached')),
        due_at     timestamptz NOT NULL,
        raised_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (case_id, threshold, due_at)
    )
    """,
    """
    UPDATE roles SET permissions = array_append(permissions, 'jobs:manage')
    WHERE name = 'admin' AND NOT ('jobs:manage' = ANY (permissions))
    """,
    """
    CREATE INDEX cases_sla_open_idx ON cases (sla_due_at, id)
        WHERE status IN ('open', 'in_progress', 'waiting')
    """,
]


def _pgqueuer_statements() -> list[str]:
    """The file's statements: split at semicolons that end a line outside $$ bodies."""
    lines = [
        line
        for line in PGQUEUER_SQL.read_text(encoding="utf-8").splitlines()
        if not line.startswith("--")
    ]
    statements: list[str] = []
    current: list[str] = []
    in_body = False
    for line in lines:
        current.append(line)
        in_body ^= line.count("$$") % 2 == 1
        if not in_body and line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip().rstrip(";"))
            current = []
    return [s for s in statements if s]


def upgrade() -> None:
    for statement in _pgqueuer_statements():
        op.execute(statement)
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("UPDATE roles SET permissions = array_remove(permissions, 'jobs:manage')")
    op.execute("DROP INDEX cases_sla_open_idx")
    op.execute("DROP TABLE sla_alerts")
    op.execute("DROP INDEX notifications_event_user_idx")
    op.execute("ALTER TABLE notifications DROP COLUMN event_id")
    for statement in (
        "DROP TRIGGER IF EXISTS tg_pgqueuer_changed ON pgqueuer",
        "DROP FUNCTION IF EXISTS fn_pgqueuer_changed",
        "DROP TABLE IF EXISTS pgqueuer",
        "DROP TABLE IF EXISTS pgqueuer_log",
        "DROP TABLE IF EXISTS pgqueuer_schedules",
        "DROP TABLE IF EXISTS pgqueuer_statistics",
        "DROP TYPE IF EXISTS pgqueuer_status",
        "DROP TYPE IF EXISTS pgqueuer_statistics_status",
    ):
        op.execute(statement)

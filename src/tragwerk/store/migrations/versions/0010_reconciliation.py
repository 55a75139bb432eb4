"""What reconciliation compares: each history row names its event, each fanned-out event
is recorded.

- `case_history.event_id`, `event_type`: the event the change queued, written in the
  change's transaction (NULL for rows from before, and when events are off).
- `case_events`: written by the worker's fan-out, with the webhook body and the users
  it notified, in the transaction that writes the notifications and deliveries and
  queues their jobs.
- BRIN indexes on the times: reconciliation reads the last hour of both tables, and a
  BRIN index costs an append-only insert next to nothing (the write path is hot).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE case_history ADD COLUMN event_id text, ADD COLUMN event_type text")
    op.execute("CREATE INDEX case_history_at_brin ON case_history USING brin (at)")
    op.execute(
        """
        CREATE TABLE case_events (
            event_id text PRIMARY KEY,
            case_id bigint NOT NULL,
            event_type text NOT NULL,
            occurred_at timestamptz NOT NULL,
            body text NOT NULL,
            notified bigint[] NOT NULL DEFAULT '{}',
            fanned_out_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX case_events_fanned_out_brin ON case_events USING brin (fanned_out_at)")


def downgrade() -> None:
    op.execute("DROP TABLE case_events")
    op.execute("DROP INDEX case_history_at_brin")
    op.execute("ALTER TABLE case_history DROP COLUMN event_type, DROP COLUMN event_id")

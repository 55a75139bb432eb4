"""Every API and worker process records itself: GET /v1/admin/instances.

Each process inserts its row at start, updates `heartbeat_at` and `modules` every
TRAGWERK_INSTANCE_HEARTBEAT_SECONDS, and sets `stopped_at` when it stops cleanly. A
row whose heartbeat stopped without `stopped_at` is an instance that was lost (killed,
its host gone). Rows are deleted a day after their last heartbeat.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE instances (
            id uuid PRIMARY KEY,
            role text NOT NULL CHECK (role IN ('api', 'worker', 'up')),
            host text NOT NULL,
            pid integer NOT NULL,
            version text NOT NULL,
            address text,
            started_at timestamptz NOT NULL DEFAULT now(),
            heartbeat_at timestamptz NOT NULL DEFAULT now(),
            stopped_at timestamptz,
            modules jsonb NOT NULL DEFAULT '{}'
        )
        """
    )
    # The listing reads the newest rows; pruning deletes the oldest.
    op.execute("CREATE INDEX instances_heartbeat_at_idx ON instances (heartbeat_at)")


def downgrade() -> None:
    op.execute("DROP TABLE instances")

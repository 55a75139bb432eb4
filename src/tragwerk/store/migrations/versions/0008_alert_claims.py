"""Which alert notifications were sent lately, shared by every process that evaluates
alerts (tragwerk.monitoring.alerts): one of them sends each, not all.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE TABLE alert_claims (key text PRIMARY KEY, claimed_until timestamptz NOT NULL)"
    )


def downgrade() -> None:
    op.execute("DROP TABLE alert_claims")

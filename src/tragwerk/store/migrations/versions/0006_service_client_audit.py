"""Changes to rate-limit tiers made with a service client's token name that client.

Before, only users were recorded (`updated_by`, `changed_by`), so a change made by a
service client was audited as made by nobody.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE rate_limit_tiers "
        "ADD COLUMN updated_by_service_client bigint REFERENCES service_clients (id)"
    )
    op.execute(
        "ALTER TABLE rate_limit_audit "
        "ADD COLUMN changed_by_service_client bigint REFERENCES service_clients (id)"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE rate_limit_audit DROP COLUMN changed_by_service_client")
    op.execute("ALTER TABLE rate_limit_tiers DROP COLUMN updated_by_service_client")

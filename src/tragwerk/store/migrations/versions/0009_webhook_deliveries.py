"""The webhook delivery log: one row per event and subscription, one per attempt.

What GitHub and Stripe show their users: every attempt with its time, response code,
duration and error (GET /v1/webhook-subscriptions/{id}/deliveries), and a redeliver
action. The fan-out writes the delivery in the transaction that queues its job; the
worker records each attempt. Pruned after TRAGWERK_JOB_LOG_RETENTION_HOURS.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE webhook_deliveries (
            id bigserial PRIMARY KEY,
            subscription_id bigint NOT NULL
                REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
            event_id text NOT NULL,
            event_type text NOT NULL,
            body text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            state text NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'delivered', 'retrying', 'held')),
            attempts integer NOT NULL DEFAULT 0,
            last_attempt_at timestamptz,
            delivered_at timestamptz,
            UNIQUE (event_id, subscription_id)
        )
        """
    )
    # The listing: a subscription's deliveries, newest first.
    op.execute(
        "CREATE INDEX webhook_deliveries_subscription_idx "
        "ON webhook_deliveries (subscription_id, id DESC)"
    )
    # Pruning and reconciliation read by age.
    op.execute("CREATE INDEX webhook_deliveries_created_idx ON webhook_deliveries (created_at)")
    op.execute(
        """
        CREATE TABLE webhook_delivery_attempts (
            id bigserial PRIMARY KEY,
            delivery_id bigint NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
            attempted_at timestamptz NOT NULL DEFAULT now(),
            duration_ms real NOT NULL,
            response_code integer,
            outcome text NOT NULL CHECK (outcome IN ('delivered', 'retrying', 'held')),
            error text,
            redelivery boolean NOT NULL DEFAULT false
        )
        """
    )
    op.execute(
        "CREATE INDEX webhook_delivery_attempts_delivery_idx "
        "ON webhook_delivery_attempts (delivery_id, id)"
    )


def downgrade() -> None:
    op.execute("DROP TABLE webhook_delivery_attempts")
    op.execute("DROP TABLE webhook_deliveries")

"""SQLAlchemy Core tables that the queries are built from.

The schema itself (including every index) is created by the Alembic migrations in
`store/migrations/versions/`; tests/integration/test_schema.py checks that the
migrated database and these definitions agree.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, REAL

metadata = MetaData()

countries = Table(
    "countries",
    metadata,
    Column("code", String(2), primary_key=True),
    Column("alpha3", String(3), nullable=False),
    Column("name", Text, nullable=False),
)

locations = Table(
    "locations",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("name", Text, nullable=False),
    Column("country_code", String(2), ForeignKey("countries.code"), nullable=False),
    Column("time_zone", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

roles = Table(
    "roles",
    metadata,
    Column("id", SmallInteger, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("permissions", ARRAY(Text), nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("email", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("role_id", SmallInteger, ForeignKey("roles.id"), nullable=False),
    Column("location_id", BigInteger, ForeignKey("locations.id"), nullable=True),
    Column("active", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

service_clients = Table(
    "service_clients",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("role_id", SmallInteger, ForeignKey("roles.id"), nullable=False),
    Column("internal", Boolean, nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("token_hash", LargeBinary, nullable=False, unique=True),
    Column("name", Text, nullable=False),
    Column("user_id", BigInteger, ForeignKey("users.id"), nullable=True),
    Column("service_client_id", BigInteger, ForeignKey("service_clients.id"), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

cases = Table(
    "cases",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("number", Text, nullable=False, unique=True),
    Column("title", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("priority", Text, nullable=False),
    Column("sla_due_at", DateTime(timezone=True), nullable=False),
    Column("location_id", BigInteger, ForeignKey("locations.id"), nullable=False),
    Column("reporter_id", BigInteger, ForeignKey("users.id"), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("version", Integer, nullable=False),
)

case_assignees = Table(
    "case_assignees",
    metadata,
    Column("case_id", BigInteger, ForeignKey("cases.id", ondelete="CASCADE"), primary_key=True),
    Column("user_id", BigInteger, ForeignKey("users.id"), primary_key=True),
    Column("assigned_at", DateTime(timezone=True), nullable=False),
)

case_history = Table(
    "case_history",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("case_id", BigInteger, ForeignKey("cases.id", ondelete="CASCADE"), nullable=False),
    Column("actor_user_id", BigInteger, ForeignKey("users.id"), nullable=True),
    Column("actor_service_client_id", BigInteger, ForeignKey("service_clients.id"), nullable=True),
    Column("action", Text, nullable=False),
    Column("changes", JSONB, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    # The event this change queued (migration 0010; NULL before it, or with events off).
    Column("event_id", Text, nullable=True),
    Column("event_type", Text, nullable=True),
)

webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("url", Text, nullable=False),
    Column("secret", Text, nullable=False),
    Column("event_types", ARRAY(Text), nullable=False),
    Column("active", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

notifications = Table(
    "notifications",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("user_id", BigInteger, ForeignKey("users.id"), nullable=False),
    Column("case_id", BigInteger, ForeignKey("cases.id", ondelete="CASCADE"), nullable=True),
    Column("kind", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("read_at", DateTime(timezone=True), nullable=True),
    # as_uuid=False: read as text, which the JSON responses take as it is.
    Column("event_id", Uuid(as_uuid=False), nullable=True),
)

sla_alerts = Table(
    "sla_alerts",
    metadata,
    Column("case_id", BigInteger, ForeignKey("cases.id", ondelete="CASCADE"), primary_key=True),
    Column("threshold", Text, primary_key=True),
    Column("due_at", DateTime(timezone=True), primary_key=True),
    Column("raised_at", DateTime(timezone=True), nullable=False),
)

rate_limit_tiers = Table(
    "rate_limit_tiers",
    metadata,
    Column("tier", Text, primary_key=True),
    Column("rate", Text, nullable=False),
    Column("fail_mode", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("updated_by", BigInteger, ForeignKey("users.id"), nullable=True),
    Column(
        "updated_by_service_client", BigInteger, ForeignKey("service_clients.id"), nullable=True
    ),
)

rate_limit_audit = Table(
    "rate_limit_audit",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("tier", Text, nullable=False),
    Column("old_rate", Text, nullable=True),
    Column("new_rate", Text, nullable=True),
    Column("old_fail_mode", Text, nullable=True),
    Column("new_fail_mode", Text, nullable=True),
    Column("changed_by", BigInteger, ForeignKey("users.id"), nullable=True),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Column(
        "changed_by_service_client", BigInteger, ForeignKey("service_clients.id"), nullable=True
    ),
)

# Every process's own record (migration 0007, tragwerk.store.instances).
instances = Table(
    "instances",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("role", Text, nullable=False),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("version", Text, nullable=False),
    Column("address", Text, nullable=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    Column("stopped_at", DateTime(timezone=True), nullable=True),
    Column("modules", JSONB, nullable=False),
)

# Alert notifications sent lately (migration 0008, tragwerk.store.alert_claims).
alert_claims = Table(
    "alert_claims",
    metadata,
    Column("key", Text, primary_key=True),
    Column("claimed_until", DateTime(timezone=True), nullable=False),
)

# The webhook delivery log (migration 0009, tragwerk.store.queries.deliveries).
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column(
        "subscription_id",
        BigInteger,
        ForeignKey("webhook_subscriptions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("event_id", Text, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("state", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_attempt_at", DateTime(timezone=True), nullable=True),
    Column("delivered_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("event_id", "subscription_id"),
)

webhook_delivery_attempts = Table(
    "webhook_delivery_attempts",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column(
        "delivery_id",
        BigInteger,
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("attempted_at", DateTime(timezone=True), nullable=False),
    Column("duration_ms", REAL, nullable=False),
    Column("response_code", Integer, nullable=True),
    Column("outcome", Text, nullable=False),
    Column("error", Text, nullable=True),
    Column("redelivery", Boolean, nullable=False),
)

# Events fanned out by a worker (migration 0010, tragwerk reconcile).
case_events = Table(
    "case_events",
    metadata,
    Column("event_id", Text, primary_key=True),
    Column("case_id", BigInteger, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("body", Text, nullable=False),
    Column("notified", ARRAY(BigInteger), nullable=False),
    Column("fanned_out_at", DateTime(timezone=True), nullable=False),
)

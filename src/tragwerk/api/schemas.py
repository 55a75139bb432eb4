"""Request and response bodies. Requests refuse unknown fields and wrong JSON types.

Fields use Strict* types because FastAPI validates the parsed JSON in Python mode,
where lax mode would turn "12" into 12; enums and datetimes stay lax so their JSON
string forms are accepted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AnyHttpUrl,
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

from tragwerk.domain.cases import Priority, Status

Id = Annotated[StrictInt, Field(ge=1, le=2**63 - 1)]
RoleId = Annotated[StrictInt, Field(ge=1, le=32767)]
Version = Annotated[StrictInt, Field(ge=1, le=2**31 - 1)]
Title = Annotated[StrictStr, Field(min_length=1, max_length=300)]
Description = Annotated[StrictStr, Field(max_length=20_000)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=200)]


def storable(text: str) -> bool:
    """PostgreSQL text holds neither NUL nor lone UTF-16 surrogates; refuse them up front."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    if isinstance(value, AnyUrl):
        return [str(value)]
    return []


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _storable_text(self) -> Body:
        for name in type(self).model_fields:
            if not all(storable(s) for s in _strings(getattr(self, name))):
                raise ValueError(f"{name} contains NUL or unpaired surrogate characters")
        return self


# -- cases --------------------------------------------------------------------------
class CaseCreate(Body):
    title: Title
    description: Description = ""
    priority: Priority = Priority.NORMAL
    location_id: Id
    reporter_id: Id | None = Field(
        None, description="Defaults to the calling user; required for service clients"
    )
    assignee_ids: list[Id] = Field(default_factory=list, max_length=50)


class CaseUpdate(Body):
    version: Version | None = Field(
        None, description="The version you read; or send it as If-Match instead"
    )
    title: Title | None = None
    description: Description | None = None
    priority: Priority | None = None
    location_id: Id | None = None


class StatusChange(Body):
    status: Status
    version: Version | None = Field(None, description="Or send it as If-Match")


class AssigneesAdd(Body):
    user_ids: list[Id] = Field(min_length=1, max_length=50)
    version: Version | None = None


class Assignee(BaseModel):
    user_id: int
    name: str
    assigned_at: datetime


class CaseSummary(BaseModel):
    id: int
    number: str
    title: str
    status: Status
    priority: Priority
    sla_due_at: datetime
    location_id: int
    reporter_id: int
    created_at: datetime
    updated_at: datetime
    version: int
    assignees: list[Assignee]


class Case(CaseSummary):
    description: str


class CasePage(BaseModel):
    items: list[CaseSummary]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end"
    )


class HistoryEntry(BaseModel):
    id: int
    action: str
    changes: dict[str, object]
    actor_user_id: int | None
    actor_service_client_id: int | None
    at: datetime


class HistoryPage(BaseModel):
    items: list[HistoryEntry]
    next_cursor: str | None


# -- directory ----------------------------------------------------------------------
class Country(BaseModel):
    code: str
    alpha3: str
    name: str


class LocationCreate(Body):
    name: Name
    country_code: Annotated[StrictStr, Field(min_length=2, max_length=2)]
    time_zone: Annotated[StrictStr, Field(min_length=1, max_length=64)]


class LocationUpdate(Body):
    name: Name | None = None
    country_code: Annotated[StrictStr, Field(min_length=2, max_length=2)] | None = None
    time_zone: Annotated[StrictStr, Field(min_length=1, max_length=64)] | None = None


class Location(BaseModel):
    id: int
    name: str
    country_code: str
    time_zone: str
    created_at: datetime


PermissionList = Annotated[list[Annotated[StrictStr, Field(max_length=64)]], Field(max_length=64)]


class RoleCreate(Body):
    name: Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_-]*$")]
    permissions: PermissionList


class RoleUpdate(Body):
    permissions: PermissionList


class Role(BaseModel):
    id: int
    name: str
    permissions: list[str]


Email = Annotated[
    StrictStr, Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
]


class UserCreate(Body):
    email: Email
    name: Name
    role_id: RoleId
    location_id: Id | None = None
    active: StrictBool = True


class UserUpdate(Body):
    email: Email | None = None
    name: Name | None = None
    role_id: RoleId | None = None
    location_id: Id | None = None
    active: StrictBool | None = None


class User(BaseModel):
    id: int
    email: str
    name: str
    role_id: int
    location_id: int | None
    active: bool
    created_at: datetime


class UserPage(BaseModel):
    items: list[User]
    next_cursor: str | None


class ServiceClientCreate(Body):
    name: Name
    role_id: RoleId
    internal: StrictBool = False


class ServiceClient(BaseModel):
    id: int
    name: str
    role_id: int
    internal: bool
    active: bool
    created_at: datetime


class ServiceClientUpdate(Body):
    active: StrictBool | None = Field(
        None, description="false: every token of the client is refused from now on"
    )


class TokenCreate(Body):
    name: Name
    user_id: Id | None = Field(None, description="Another user's id (needs tokens:write)")
    service_client_id: Id | None = Field(None, description="A service client's id (tokens:write)")
    expires_at: datetime | None = None


class Token(BaseModel):
    id: int
    name: str
    user_id: int | None
    service_client_id: int | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(Token):
    token: str = Field(description="The secret; shown once, only its hash is stored")


# -- webhooks and notifications -----------------------------------------------------
# The events a subscription may ask for; "*" means all of them.
EventName = Literal[
    "*",
    "case.created",
    "case.updated",
    "case.assigned",
    "case.status_changed",
    "case.sla_at_risk",
    "case.sla_breached",
]
EventTypes = Annotated[list[EventName], Field(min_length=1, max_length=32)]


class WebhookCreate(Body):
    url: AnyHttpUrl
    secret: Annotated[StrictStr, Field(min_length=16, max_length=256)]
    event_types: EventTypes
    active: StrictBool = True


class WebhookUpdate(Body):
    url: AnyHttpUrl | None = None
    secret: Annotated[StrictStr, Field(min_length=16, max_length=256)] | None = None
    event_types: EventTypes | None = None
    active: StrictBool | None = None


class Webhook(BaseModel):
    id: int
    url: str
    event_types: list[str]
    active: bool
    created_at: datetime


class DeliveryAttempt(BaseModel):
    attempted_at: datetime
    duration_ms: float
    response_code: int | None = Field(description="the receiver's status; null: no answer")
    outcome: Literal["delivered", "retrying", "held"]
    error: str | None
    redelivery: bool = Field(description="made for POST .../redeliver")


class Delivery(BaseModel):
    id: int
    subscription_id: int
    event_id: str = Field(description="the idempotency key: X-Tragwerk-Event-Id")
    event_type: str
    created_at: datetime
    state: Literal["pending", "delivered", "retrying", "held"]
    attempts: int
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    attempt_log: list[DeliveryAttempt] = Field(description="the newest 20 attempts, oldest first")


class Redelivery(BaseModel):
    delivery_id: int
    job_id: int
    event_id: str


class Notification(BaseModel):
    id: int
    user_id: int
    case_id: int | None
    kind: str
    title: str
    body: str
    created_at: datetime
    read_at: datetime | None
    event_id: str | None = Field(
        description="the event this notification came from (the webhook's X-Tragwerk-Event-Id)"
    )


class NotificationPage(BaseModel):
    items: list[Notification]
    next_cursor: str | None


class LimitChange(Body):
    rate: Annotated[StrictStr, Field(min_length=1, max_length=64, examples=["1200/minute"])]
    fail_mode: Literal["open", "local", "closed"] | None = Field(
        None, description="While Redis is unreachable; unchanged when left out"
    )


class TierLimit(BaseModel):
    tier: str
    rate: str
    fail_mode: str
    source: Literal["setting", "override"]
    updated_at: datetime | None
    updated_by: int | None
    updated_by_service_client: int | None = None


class LimitAudit(BaseModel):
    id: int
    tier: str
    old_rate: str | None
    new_rate: str | None
    old_fail_mode: str | None
    new_fail_mode: str | None
    changed_by: int | None
    changed_by_service_client: int | None
    changed_at: datetime


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None


class HeldJob(BaseModel):
    id: int
    kind: str = Field(description="case_event, email, webhook, ...")
    priority: int
    attempts: int
    created: datetime
    updated: datetime
    dedupe_key: str | None
    payload: str | None
    last_error: str | None


class OrphanedJob(BaseModel):
    id: int
    kind: str = Field(description="case_event, email, webhook, ...")
    priority: int
    attempts: int
    created: datetime
    worker: UUID = Field(description="the dead worker's id (its `worker started` log line)")
    last_heartbeat: datetime
    silent_seconds: float = Field(description="seconds since the worker's last heartbeat")


class Instance(BaseModel):
    id: UUID = Field(description="made by the process at start; its log shows it nowhere else")
    role: Literal["api", "worker", "up"] = Field(
        description="api: a `tragwerk api` worker process; worker: `tragwerk worker`;"
        " up: `tragwerk up` (API and worker in one process)"
    )
    host: str
    pid: int
    version: str
    address: str | None = Field(
        description="where its /health and /metrics answer (host:port), if it serves them"
    )
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    state: Literal["up", "lost", "stopped"] = Field(
        description="lost: no heartbeat for three TRAGWERK_INSTANCE_HEARTBEAT_SECONDS"
        " and no clean stop (killed, its host gone)"
    )
    silent_seconds: float = Field(description="seconds since its last heartbeat")
    modules: dict[str, Any] = Field(
        description="its checks at the last heartbeat: database, cache_feed, rate_limit,"
        " worker, tasks (API); database, queue, smtp, running_jobs, breakers_open (worker)"
    )


class RequeueJobs(Body):
    ids: Annotated[list[Id], Field(min_length=1, max_length=1000)] | None = None
    all: StrictBool = False

    @model_validator(mode="after")
    def _one_of(self) -> RequeueJobs:
        if (self.ids is None) == (not self.all):
            raise ValueError("give either ids or all=true")
        return self


class Requeued(BaseModel):
    requeued: list[int]

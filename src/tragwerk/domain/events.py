"""Case events, the priority of the work they cause, and when to retry that work.

A case write records one event in the same transaction; workers turn each event into
emails, in-app notifications and webhook deliveries (tragwerk.jobs). Everything here
is pure so that the rules can be tested without a database or a network.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum

from tragwerk.domain.cases import Priority


class EventType(StrEnum):
    CASE_CREATED = "case.created"
    CASE_UPDATED = "case.updated"
    CASE_ASSIGNED = "case.assigned"
    CASE_STATUS_CHANGED = "case.status_changed"
    SLA_AT_RISK = "case.sla_at_risk"
    SLA_BREACHED = "case.sla_breached"


# Job priorities: higher runs first. SLA events outrank everything; other events rank
# by the case's priority, and within that by how little time is left to the deadline.
PRIORITY_SLA_BREACHED = 1000
PRIORITY_SLA_AT_RISK = 900
_CASE_PRIORITY_BASE = {
    Priority.CRITICAL: 400,
    Priority.HIGH: 300,
    Priority.NORMAL: 200,
    Priority.LOW: 100,
}
# Up to this many points for urgency: one per hour less than 99 hours left.
_URGENCY_HOURS = 99


def job_priority(
    event_type: EventType, case_priority: Priority, sla_due_at: datetime, now: datetime
) -> int:
    """The queue priority of the work an event causes (higher is sooner)."""
    if event_type is EventType.SLA_BREACHED:
        return PRIORITY_SLA_BREACHED
    if event_type is EventType.SLA_AT_RISK:
        return PRIORITY_SLA_AT_RISK
    hours_left = (sla_due_at - now).total_seconds() / 3600
    urgency = min(_URGENCY_HOURS, max(0, int(_URGENCY_HOURS - hours_left)))
    return _CASE_PRIORITY_BASE[case_priority] + urgency


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with "equal" jitter, and how many attempts in all."""

    max_attempts: int = 8
    base_seconds: float = 2.0
    cap_seconds: float = 900.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> timedelta:
        """The wait before attempt `attempt + 1`, where `attempt` counts from 0.

        Equal jitter (a uniform draw between half the capped exponential and all of
        it) spreads the retries of many jobs that failed together, so a recovering
        receiver is not hit at once, while every retry still waits at least half its
        step (full jitter, from zero, could retry a failed call at once).
        """
        ceiling = min(self.cap_seconds, self.base_seconds * (2**attempt))
        draw = (rng or random).uniform(ceiling / 2, ceiling)
        return timedelta(seconds=draw)

    def gives_up_after(self, attempt: int) -> bool:
        """True when attempt `attempt` (from 0) was the last one allowed."""
        return attempt + 1 >= self.max_attempts


# Statuses a webhook receiver may answer that are worth another try; any other 4xx
# means the request itself is wrong, and sending it again would fail the same way.
RETRYABLE_STATUSES = frozenset({408, 425, 429})


def status_is_retryable(status: int) -> bool:
    return status in RETRYABLE_STATUSES or status >= 500


def retry_after_seconds(value: str | None, now: datetime, ceiling: float) -> float | None:
    """Parse a Retry-After field (seconds or an HTTP date); None when absent or invalid."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return min(float(text), ceiling)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return min(max(0.0, (when - now).total_seconds()), ceiling)

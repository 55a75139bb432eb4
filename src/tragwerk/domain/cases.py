"""Cases: status transitions, priorities and SLA deadlines."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from tragwerk.domain.errors import InvalidTransition


class Status(StrEnum):
    OPEN = "open"
    IN_PROGRESS = "in_progress"
    WAITING = "waiting"
    RESOLVED = "resolved"
    CLOSED = "closed"


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"


# The workflow: forward through the states, back from waiting, and reopen from
# resolved or closed. Anything else is refused, so a status never jumps silently.
ALLOWED_TRANSITIONS: Mapping[Status, frozenset[Status]] = {
    Status.OPEN: frozenset({Status.IN_PROGRESS, Status.WAITING, Status.RESOLVED}),
    Status.IN_PROGRESS: frozenset({Status.WAITING, Status.RESOLVED, Status.OPEN}),
    Status.WAITING: frozenset({Status.IN_PROGRESS, Status.RESOLVED}),
    Status.RESOLVED: frozenset({Status.CLOSED, Status.OPEN}),
    Status.CLOSED: frozenset({Status.OPEN}),
}


def check_transition(current: Status, target: Status) -> None:
    """Raise InvalidTransition unless the workflow allows current -> target."""
    if target not in ALLOWED_TRANSITIONS[current]:
        allowed = ", ".join(sorted(ALLOWED_TRANSITIONS[current])) or "none"
        raise InvalidTransition(
            f"a case in status '{current}' cannot move to '{target}' (allowed: {allowed})"
        )


DEFAULT_SLA_HOURS: Mapping[Priority, float] = {
    Priority.CRITICAL: 4,
    Priority.HIGH: 24,
    Priority.NORMAL: 72,
    Priority.LOW: 240,
}


@dataclass(frozen=True)
class SlaPolicy:
    """Hours allowed per priority from a case's creation to its SLA deadline."""

    hours: Mapping[Priority, float] = field(default_factory=lambda: dict(DEFAULT_SLA_HOURS))

    def due_at(self, priority: Priority, start: datetime) -> datetime:
        return start + timedelta(hours=self.hours[priority])

    @classmethod
    def parse(cls, text: str) -> SlaPolicy:
        """Parse 'critical=4,high=24,normal=72,low=240'; unnamed priorities keep defaults."""
        hours: dict[Priority, float] = dict(DEFAULT_SLA_HOURS)
        for raw_part in text.split(","):
            part = raw_part.strip()
            if not part:
                continue
            name, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"SLA policy entry {part!r} is not of the form priority=hours")
            try:
                priority = Priority(name.strip())
            except ValueError:
                raise ValueError(f"SLA policy names unknown priority {name.strip()!r}") from None
            number = float(value)
            if number <= 0:
                raise ValueError(f"SLA hours for {priority} must be positive, got {value!r}")
            hours[priority] = number
        return cls(hours)

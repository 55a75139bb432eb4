"""Worker processes that follow the queue: priority classes, their wait budgets, and
the decision to add or retire a process (tragwerk.scaling.autoscale runs it).

A job's class comes from its queue priority (tragwerk.domain.events.job_priority):
SLA events (900 and up) are `sla`; events of critical and high cases (300-899) are
`high`; normal cases (200-299) `normal`; low cases and everything else `bulk`. Each
class has a budget: how long its oldest due job may wait before one more worker
process is worth starting. Celery's --autoscale scales threads on busy-ness; this
scales processes on how late each class is, which is what the SLA promise needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tragwerk.domain.events import PRIORITY_SLA_AT_RISK

CLASSES = ("sla", "high", "normal", "bulk")
DEFAULT_BUDGETS = {"sla": 5.0, "high": 30.0, "normal": 120.0, "bulk": 600.0}

# The lowest queue priority of each class, highest class first.
CLASS_FLOORS = (("sla", PRIORITY_SLA_AT_RISK), ("high", 300), ("normal", 200), ("bulk", None))


def class_of(priority: int) -> str:
    for name, floor in CLASS_FLOORS:
        if floor is None or priority >= floor:
            return name
    return "bulk"


def parse_budgets(text: str) -> dict[str, float]:
    """'sla=5,high=30,normal=120,bulk=600' (seconds); classes not named keep defaults."""
    budgets = dict(DEFAULT_BUDGETS)
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"queue budget {part!r} is not of the form class=seconds")
        if name not in budgets:
            raise ValueError(f"queue budget names unknown class {name!r} (known: {CLASSES})")
        seconds = float(value)
        if seconds <= 0:
            raise ValueError(f"queue budget for {name} must be positive, got {value!r}")
        budgets[name] = seconds
    return budgets


@dataclass(frozen=True)
class ScaleRange:
    """`--autoscale MIN:MAX`."""

    minimum: int
    maximum: int

    @classmethod
    def parse(cls, text: str) -> ScaleRange:
        low, sep, high = text.partition(":")
        try:
            minimum, maximum = int(low), int(high)
        except ValueError:
            raise ValueError(f"--autoscale wants MIN:MAX, e.g. 1:4, not {text!r}") from None
        if not sep or minimum < 1 or maximum < minimum:
            raise ValueError(f"--autoscale wants 1 <= MIN <= MAX, not {text!r}")
        return cls(minimum, maximum)


@dataclass(frozen=True)
class Decision:
    action: str  # "up", "down" or "hold"
    reason: str
    late: str | None = None  # the class furthest past its budget, if any


def most_late(lag: Mapping[str, float], budgets: Mapping[str, float]) -> str | None:
    """The class whose oldest due job is furthest past its budget, relatively; None when
    every class is within its budget."""
    over = [name for name in budgets if lag.get(name, 0.0) > budgets[name]]
    return max(over, key=lambda name: lag[name] / budgets[name], default=None)


def decide(
    *,
    lag: Mapping[str, float],
    budgets: Mapping[str, float],
    processes: int,
    scale: ScaleRange,
    idle_for: float,
    since_last_change: float,
    cooldown: float,
) -> Decision:
    """One step: `lag` is each class's oldest due job's wait in seconds (0: nothing
    due); `idle_for` how long no class has had a due job; `since_last_change` how long
    ago a process was last added or retired.

    Below MIN: up. A class over its budget: up, one process per check, to MAX. No
    job due anywhere for `cooldown` seconds, and none added or retired within it:
    down, one at a time, to MIN. Anything else: hold.
    """
    if processes < scale.minimum:
        return Decision("up", f"{processes} running, fewer than the minimum {scale.minimum}")
    name = most_late(lag, budgets)
    if name is not None:
        reason = f"{name} jobs waited {lag[name]:.1f} s, over their budget of {budgets[name]:g} s"
        if processes >= scale.maximum:
            return Decision("hold", f"{reason}; already at the maximum {scale.maximum}", name)
        return Decision("up", reason, name)
    if processes > scale.minimum and idle_for >= cooldown and since_last_change >= cooldown:
        return Decision("down", f"no job due for {idle_for:.0f} s (cool-down {cooldown:g} s)")
    return Decision("hold", "every class within its budget")

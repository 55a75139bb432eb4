"""Alert states without Prometheus: pending, firing, resolved; what to notify when.

The same model as Prometheus and Alertmanager, small enough to run in every tragwerk
process (tragwerk.api.self_alerting gathers the conditions): a condition that holds
is *pending*; once it has held for its `for_seconds` it *fires* and is notified; while
it fires it is notified again after the repeat interval of its severity; when it no
longer holds it is *resolved* and notified once more. Notifications are grouped by
alert name: one message carries every alert of that name due at that moment.

Several processes evaluate the same conditions; `claim` (a shared store) lets only
one of them send each notification per repeat interval. The payload is Alertmanager's
webhook format (version 4), so one receiver serves both profiles.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of an alert still firing
RESOLVED_HOLD_SECONDS = 7 * 86400.0  # a resolved notice's claim, until the next firing


@dataclass(frozen=True)
class Condition:
    """One alert whose condition holds now."""

    alertname: str
    labels: dict[str, str]  # severity included
    annotations: dict[str, str]
    for_seconds: float = 0.0

    @property
    def fingerprint(self) -> str:
        items = sorted({"alertname": self.alertname, **self.labels}.items())
        return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


@dataclass
class Alert:
    condition: Condition
    active_since: float  # wall-clock seconds: when the condition first held
    firing: bool = False
    resolved_at: float | None = None
    notified_at: float | None = None  # last firing notification sent (by this process)

    def payload(self) -> dict[str, Any]:
        c = self.condition
        return {
            "status": "resolved" if self.resolved_at is not None else "firing",
            "labels": {"alertname": c.alertname, **c.labels},
            "annotations": c.annotations,
            "startsAt": _iso(self.active_since),
            "endsAt": ZERO_TIME if self.resolved_at is None else _iso(self.resolved_at),
            "generatorURL": "",
            "fingerprint": c.fingerprint,
        }


@dataclass(frozen=True)
class Notification:
    """One message about alerts of one name: Alertmanager's webhook JSON and a subject."""

    alertname: str
    alerts: list[Alert]

    @property
    def status(self) -> str:
        return "firing" if any(a.resolved_at is None for a in self.alerts) else "resolved"

    @property
    def subject(self) -> str:
        firing = sum(1 for a in self.alerts if a.resolved_at is None)
        if firing:
            return f"[FIRING:{firing}] {self.alertname}"
        return f"[RESOLVED] {self.alertname}"

    def body(self, receiver: str, external_url: str) -> dict[str, Any]:
        alerts = [a.payload() for a in self.alerts]
        common = _common([a["labels"] for a in alerts])
        return {
            "version": "4",
            "groupKey": f'{{}}:{{alertname="{self.alertname}"}}',
            "truncatedAlerts": 0,
            "status": self.status,
            "receiver": receiver,
            "groupLabels": {"alertname": self.alertname},
            "commonLabels": common,
            "commonAnnotations": _common([a["annotations"] for a in alerts]),
            "externalURL": external_url,
            "alerts": alerts,
        }

    def text(self) -> str:
        lines = []
        for alert in self.alerts:
            payload = alert.payload()
            lines.append(f"{payload['status'].upper()}: {payload['annotations'].get('summary')}")
            for key in ("description", "runbook"):
                if payload["annotations"].get(key):
                    lines.append(f"  {key}: {payload['annotations'][key]}")
            labels = ", ".join(f"{k}={v}" for k, v in sorted(payload["labels"].items()))
            lines.append(f"  labels: {labels}")
            lines.append(f"  since: {payload['startsAt']}")
            lines.append("")
        return "\n".join(lines)


class Claims(Protocol):
    """A store shared by the processes that evaluate alerts (PostgreSQL, else Redis,
    else this process's memory): which notifications were sent lately."""

    async def claim(self, key: str, seconds: float) -> bool:
        """True if this process may send `key` now: nobody did within `seconds`."""

    async def release(self, key: str) -> None:
        """Forget `key`: the next claim of it succeeds."""


@dataclass
class AlertBook:
    """The alerts this process knows and what it owes the support team."""

    repeat_seconds: dict[str, float]  # severity -> repeat interval
    clock: Callable[[], float] = time.time
    alerts: dict[str, Alert] = field(default_factory=dict)

    def evaluate(self, holding: list[Condition]) -> list[Notification]:
        """Advance every alert by what holds now; the notifications now due, by name."""
        now = self.clock()
        due: dict[str, list[Alert]] = {}
        seen = set()
        for condition in holding:
            key = condition.fingerprint
            seen.add(key)
            alert = self.alerts.get(key)
            if alert is None or alert.resolved_at is not None:
                alert = self.alerts[key] = Alert(condition, now)
            else:
                alert.condition = condition  # fresh annotations (values in summaries)
            if not alert.firing and now - alert.active_since >= condition.for_seconds:
                alert.firing = True
            if alert.firing and (
                alert.notified_at is None or now - alert.notified_at >= self._repeat(alert)
            ):
                due.setdefault(condition.alertname, []).append(alert)
        for key, alert in list(self.alerts.items()):
            if key in seen or alert.resolved_at is not None:
                if alert.resolved_at is not None:
                    del self.alerts[key]  # its resolved notice went out last time
                continue
            if alert.firing:
                alert.resolved_at = now
                due.setdefault(alert.condition.alertname, []).append(alert)
            else:
                del self.alerts[key]  # pending only: it never fired, nobody was told
        return [Notification(name, alerts) for name, alerts in sorted(due.items())]

    def firing(self) -> list[dict[str, Any]]:
        """The alerts firing now, as the webhook shows them (for /ops)."""
        return [a.payload() for a in self.alerts.values() if a.firing and a.resolved_at is None]

    def _repeat(self, alert: Alert) -> float:
        severity = alert.condition.labels.get("severity", "warning")
        return self.repeat_seconds.get(severity, max(self.repeat_seconds.values()))

    async def claimed(self, notification: Notification, claims: Claims) -> Notification | None:
        """The part of `notification` this process may send. Each alert is claimed in
        the shared store, so that of several processes only one sends it: a firing
        alert once per repeat interval, its resolved notice once per episode (a firing
        notice sent opens a new episode by releasing the resolved one)."""
        mine = []
        for alert in notification.alerts:
            fp = alert.condition.fingerprint
            if alert.resolved_at is None:
                if await claims.claim(f"{fp}:firing", self._repeat(alert) * 0.9):
                    mine.append(alert)
                    await claims.release(f"{fp}:resolved")
                # Sent by us or by another process: not due again before the interval.
                alert.notified_at = self.clock()
            elif await claims.claim(f"{fp}:resolved", RESOLVED_HOLD_SECONDS):
                mine.append(alert)
                await claims.release(f"{fp}:firing")  # a new episode notifies at once
        return Notification(notification.alertname, mine) if mine else None


def _common(dicts: list[dict[str, str]]) -> dict[str, str]:
    if not dicts:
        return {}
    first = dicts[0]
    return {k: v for k, v in first.items() if all(d.get(k) == v for d in dicts[1:])}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")

"""Alerts without Prometheus: an API process evaluates the alert conditions itself.

Enabled by TRAGWERK_ALERT_WEBHOOK_URL and/or TRAGWERK_ALERT_EMAILS (with
TRAGWERK_SMTP_URL). Every API process (each of `tragwerk api`, `tragwerk up`) runs it
under its supervisor every TRAGWERK_ALERT_EVALUATE_SECONDS; the alert names, labels,
`for` durations and texts are those of deploy/prometheus/alerts.yml, so the runbook
and the receivers serve both profiles. Claims in PostgreSQL (else Redis, else memory)
make one process send each notification (tragwerk.monitoring.notify).

What it sees: its own process (database reachable, change feed, rate-limit store,
crash loops, its 5xx and shed rates; under `tragwerk up` the in-process worker, its
SMTP server and breakers) and, from PostgreSQL, every instance (lost ones) and the
queue (held, orphaned, lag per band) and SLA breaches. While the database is down,
the conditions read from it keep their last value instead of resolving.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import text

from tragwerk.api.services import Services
from tragwerk.monitoring.alerts import AlertBook, Claims, Condition, Notification
from tragwerk.monitoring.notify import Notifier

log = logging.getLogger(__name__)

RUNBOOK = "docs/runbook.md#"

# Budgets of the oldest due job per priority band (seconds), their severity and `for`.
LAG_BUDGETS = {
    "sla": (60, "critical", 120),
    "critical": (60, "critical", 120),
    "high": (300, "warning", 300),
    "normal": (900, "warning", 300),
    "low": (3600, "warning", 300),
    "other": (3600, "warning", 300),
}
RATE_WINDOW_SECONDS = 300.0

_SLA_BREACHES = text(
    "SELECT count(*) FROM sla_alerts "
    "WHERE threshold = 'breached' AND raised_at > now() - interval '15 minutes'"
)


def _condition(
    name: str, severity: str, summary: str, description: str, for_seconds: float, **labels: str
) -> Condition:
    return Condition(
        name,
        {"severity": severity, **labels},
        {"summary": summary, "description": description, "runbook": RUNBOOK + name.lower()},
        for_seconds,
    )


MODULE_EFFECTS = {
    "store": "requests get 503 database-unavailable; jobs wait",
    "worker": "the in-process worker does not run jobs (it is being restarted)",
    "change_feed": "caches are off (reads go to the database)",
    "ratelimit": "the shared rate-limit store is unreachable (tiers fall back to their fail mode)",
    "smtp": "the mail server does not take mail (emails are retried)",
}


def module_down(module: str, severity: str, scale: float, **labels: str) -> Condition:
    where = f" of {labels['instance']}" if "instance" in labels else ""
    return _condition(
        "TragwerkModuleDown",
        severity,
        f"Module {module}{where} has been failing for 30 s",
        MODULE_EFFECTS[module],
        30 * scale,
        module=module,
        **labels,
    )


@dataclass
class _Counts:
    at: float
    requests: int
    errors: int  # 5xx other than 503
    shed: int


class SelfAlerting:
    def __init__(
        self,
        svc: Services,
        notifier: Notifier,
        claims: Claims,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        s = svc.settings
        self.svc = svc
        self.notifier = notifier
        self.claims = claims
        self.scale = s.alert_for_scale
        self.book = AlertBook(
            {"critical": s.alert_repeat_critical_seconds, "warning": s.alert_repeat_seconds},
            clock=clock,
        )
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        # API instances up at the last reading, oldest first: the first one is the
        # leader, which alone sends while no shared store answers (monitoring.notify).
        self.peers: list[str] = []
        self._counts: deque[_Counts] = deque()
        self._from_database: list[Condition] = []  # kept while the database is down

    def is_leader(self) -> bool:
        """True if this process is the API instance up the longest (or knows of none)."""
        me = self.svc.recorder.id if self.svc.recorder is not None else None
        return me is None or not self.peers or self.peers[0] == str(me)

    async def run(self) -> None:
        """Evaluate every TRAGWERK_ALERT_EVALUATE_SECONDS until cancelled."""
        while True:
            await self.evaluate_once()
            await asyncio.sleep(self.svc.settings.alert_evaluate_seconds)

    async def evaluate_once(self) -> list[Notification]:
        holding = await self.conditions()
        sent = []
        for notification in self.book.evaluate(holding):
            mine = await self.book.claimed(notification, self.claims)
            if mine is not None:
                self.notifier.send_soon(mine)
                sent.append(mine)
        return sent

    async def conditions(self) -> list[Condition]:
        holding = self._own()
        database = await self.svc.readiness.database()
        if database != "ok":
            # The database is shared: one alert for all processes (no instance label).
            holding.append(module_down("store", "critical", self.scale))
            return holding + self._from_database
        try:
            self._from_database = await self._shared()
        except Exception as exc:  # noqa: BLE001 - keep the last reading until one works
            log.warning("alert conditions from the database not read: %r", exc)
        return holding + self._from_database

    def _own(self) -> list[Condition]:
        svc, scale, me = self.svc, self.scale, {"instance": self.instance}
        holding = []
        if svc.cache_state().startswith("reconnecting"):
            holding.append(module_down("change_feed", "warning", scale, **me))
        if svc.rate_limit_state().startswith("failing"):
            holding.append(module_down("ratelimit", "warning", scale, **me))
        for task in svc.supervisor.crash_looping:
            holding.append(
                _condition(
                    "TragwerkTaskCrashLooping",
                    "critical",
                    f"Task {task} of {self.instance} keeps crashing",
                    "Restarting it inside the process has not helped; /health/live answers"
                    " 503 so that the orchestrator replaces the process.",
                    0,
                    task=task,
                    **me,
                )
            )
        worker = svc.background.get("worker")
        if worker is not None:
            state = svc.supervisor.tasks.get("worker")
            if state is None or not state.up:
                holding.append(module_down("worker", "critical", scale, **me))
            embedded = getattr(worker, "current", None)
            if embedded is not None:
                if embedded.mail_state() == "failing":
                    holding.append(module_down("smtp", "warning", scale, **me))
                for host in sorted(embedded.breakers.not_closed()):
                    holding.append(
                        _condition(
                            "TragwerkWebhookBreakerOpen",
                            "warning",
                            f"Webhook destination {host} has failed for 5 minutes;"
                            " its breaker is open",
                            "Deliveries to it wait (deferred, not held) and go out when it"
                            " answers again.",
                            300 * scale,
                            host=host,
                        )
                    )
        holding += self._rates(me)
        return holding

    def _rates(self, me: dict[str, str]) -> list[Condition]:
        """The 5xx rate and the shed rate of this process over the last 5 minutes."""
        svc = self.svc
        statuses = svc.metrics.http.status_counts()
        shed = sum(
            n for (module, event), n in svc.metrics.events().items()
            if module == "admission" and event.startswith("shed:")
        )  # fmt: skip
        now = self.book.clock()
        errors = sum(n for status, n in statuses.items() if status >= 500 and status != 503)
        self._counts.append(_Counts(now, sum(statuses.values()), errors, shed))
        while len(self._counts) > 1 and now - self._counts[1].at >= RATE_WINDOW_SECONDS:
            self._counts.popleft()
        first, last = self._counts[0], self._counts[-1]
        span = last.at - first.at
        holding: list[Condition] = []
        if span < RATE_WINDOW_SECONDS * self.scale * 0.5:
            return holding  # not enough history yet
        requests = last.requests - first.requests
        if requests and (last.errors - first.errors) / requests > 0.02:
            share = (last.errors - first.errors) / requests
            holding.append(
                _condition(
                    "TragwerkHighErrorRate",
                    "critical",
                    f"{share:.1%} of API requests fail with a 5xx",
                    "500s are bugs (logged with a traceback and the request id); 503s are"
                    " counted by the shedding and module alerts instead.",
                    300 * self.scale,
                    **me,
                )
            )
        shed_rate = (last.shed - first.shed) / span
        if shed_rate > 1:
            holding.append(
                _condition(
                    "TragwerkSheddingSustained",
                    "warning",
                    f"The API has shed {shed_rate:.1f} requests a second for 10 minutes",
                    "Admission control turns away the lowest lanes first: the instances are"
                    " overloaded.",
                    600 * self.scale,
                    **me,
                )
            )
        return holding

    async def _shared(self) -> list[Condition]:
        """What every process reads alike from PostgreSQL."""
        svc, scale = self.svc, self.scale
        holding = []
        instances = await svc.instances.listing(svc.settings.instance_heartbeat_seconds)
        self.peers = [
            i["id"]
            for i in sorted(instances, key=lambda i: (i["started_at"], i["id"]))
            if i["state"] == "up" and i["role"] in ("api", "up")
        ]
        holding += lost_instances(instances)
        if not any(_works(i) for i in instances):
            holding.append(
                _condition(
                    "TragwerkNoWorker",
                    "critical",
                    "No tragwerk worker is up: emails, notifications and webhooks are not sent",
                    "Jobs wait in the queue (nothing is lost) until a worker runs again.",
                    60 * scale,
                )
            )
        timeout = timedelta(seconds=svc.settings.job_heartbeat_timeout_seconds)
        queue = await svc.jobs.summary(timeout)
        for kind, n in sorted(queue.held.items()):
            holding.append(
                _condition(
                    "TragwerkJobsHeld",
                    "warning",
                    f"{n} {kind} job(s) held after their last attempt failed",
                    "Held jobs are kept, not lost: fix the cause, then requeue them.",
                    300 * scale,
                    kind=kind,
                )
            )
        for kind, n in sorted(queue.orphaned.items()):
            holding.append(
                _condition(
                    "TragwerkJobsOrphaned",
                    "warning",
                    f"{n} {kind} job(s) claimed by a dead worker and not taken over",
                    "Another worker takes them over after the heartbeat timeout; if none"
                    " does, no worker is running.",
                    300 * scale,
                    kind=kind,
                )
            )
        for band, figures in sorted(queue.bands.items()):
            waited = figures["oldest_seconds"]
            budget, severity, hold = LAG_BUDGETS.get(band, LAG_BUDGETS["other"])
            if waited > budget:
                holding.append(
                    _condition(
                        "TragwerkQueueLagOverBudget",
                        severity,
                        f"{band} jobs have waited {waited:.0f} s (budget {budget} s)",
                        "Workers cannot keep up, or none is running.",
                        hold * scale,
                        band=band,
                    )
                )
        async with svc.engine.connect() as conn:
            breaches = int((await conn.execute(_SLA_BREACHES)).scalar_one())
        if breaches:
            holding.append(
                _condition(
                    "TragwerkSlaBreached",
                    "warning",
                    f"{breaches} case(s) passed their SLA deadline in the last 15 minutes",
                    "Their assignees were notified; GET /v1/cases?sla_due_before=<now>"
                    "&sort=sla_due lists the cases past their deadline.",
                    0,
                )
            )
        return holding


def _works(instance: dict[str, Any]) -> bool:
    """An instance that runs jobs now: a worker, or `tragwerk up` whose worker runs."""
    if instance["state"] != "up":
        return False
    return bool(
        instance["role"] == "worker"
        or (instance["role"] == "up" and instance["modules"].get("worker") == "ok")
    )


def lost_instances(instances: list[dict[str, Any]]) -> list[Condition]:
    """Instances lost and not replaced (no newer one of the same role up on the host)."""
    holding = []
    for lost in (i for i in instances if i["state"] == "lost"):
        replaced = any(
            other["state"] == "up"
            and other["role"] == lost["role"]
            and other["host"] == lost["host"]
            and other["started_at"] > lost["started_at"]
            for other in instances
        )
        if replaced:
            continue
        where = lost["address"] or f"{lost['host']}:{lost['pid']}"
        holding.append(
            _condition(
                "TragwerkInstanceDown",
                "critical",
                f"tragwerk-{lost['role']} instance {where} is down",
                f"No heartbeat for {lost['silent_seconds']:.0f} s and no clean stop: the"
                " process is gone, hung or unreachable.",
                0,
                role=lost["role"],
                instance=where,
            )
        )
    return holding

"""The job kinds a worker runs, one function each, built over the worker's parts."""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg
import orjson
from pgqueuer.domain.models import Job
from sqlalchemy.ext.asyncio import AsyncEngine

from tragwerk.domain.events import RetryPolicy
from tragwerk.jobs.mail import Mailer
from tragwerk.jobs.outcome import Deferred, Permanent
from tragwerk.jobs.runner import Handler
from tragwerk.jobs.webhooks import Deliverer
from tragwerk.store.outbox import CASE_EVENT, EMAIL, NOOP, NOTIFICATION_ONLY, WEBHOOK
from tragwerk.store.queries.deliveries import record_attempt
from tragwerk.store.queries.events import fan_out, subscription_target
from tragwerk.store.queries.notifications import insert_plain


@dataclass
class Handlers:
    engine: AsyncEngine
    mailer: Mailer | None
    deliverer: Deliverer
    # asyncpg pool for single statements that need no SQLAlchemy (the delivery log, the
    # benchmark job)
    direct: asyncpg.Pool
    # Decides whether a failed attempt was the last one (then the delivery is held).
    policy: RetryPolicy

    def by_kind(self) -> dict[str, Handler]:
        return {
            CASE_EVENT: self.case_event,
            EMAIL: self.email,
            WEBHOOK: self.webhook,
            NOOP: self.noop,
            NOTIFICATION_ONLY: self.notification,
        }

    async def case_event(self, job: Job) -> None:
        event = orjson.loads(job.payload or b"{}")
        await fan_out(self.engine, event, job.priority, email=self.mailer is not None)

    async def email(self, job: Job) -> None:
        if self.mailer is None:
            raise Permanent("TRAGWERK_SMTP_URL is not set; set it and requeue the held job")
        await self.mailer.send(orjson.loads(job.payload or b"{}"))

    async def webhook(self, job: Job) -> None:
        delivery = orjson.loads(job.payload or b"{}")
        target = await subscription_target(self.engine, delivery["subscription_id"])
        if target is None:
            return  # deleted or deactivated since the event: nothing to deliver
        url, secret = target
        delivery_id = delivery.get("delivery_id")  # None: queued before the delivery log
        started = time.perf_counter()
        outcome, code, error = "delivered", None, None
        try:
            code = await self.deliverer.deliver(url, secret, delivery)
        except Deferred:
            delivery_id = None  # no call was made: not an attempt, nothing to log
            raise
        except Exception as exc:
            held = isinstance(exc, Permanent) or self.policy.gives_up_after(job.attempts)
            outcome = "held" if held else "retrying"
            code = getattr(exc, "status", None)
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            if delivery_id is not None:
                await record_attempt(
                    self.direct,
                    delivery_id,
                    duration_ms=(time.perf_counter() - started) * 1000,
                    response_code=code,
                    outcome=outcome,
                    error=error,
                    redelivery=bool(delivery.get("redelivery")),
                )

    async def noop(self, job: Job) -> None:
        """Does nothing: measures the queue itself (bench/jobs.py)."""

    async def notification(self, job: Job) -> None:
        """Writes one notification row: a realistic small job (bench/jobs.py)."""
        payload = orjson.loads(job.payload or b"{}")
        await insert_plain(self.direct, payload["user_id"], payload["title"])

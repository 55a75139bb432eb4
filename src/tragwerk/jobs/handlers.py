"""The job kinds a worker runs, one function each, built over the worker's parts."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import orjson
from pgqueuer.domain.models import Job
from sqlalchemy.ext.asyncio import AsyncEngine

from tragwerk.jobs.mail import Mailer
from tragwerk.jobs.outcome import Permanent
from tragwerk.jobs.runner import Handler
from tragwerk.jobs.webhooks import Deliverer
from tragwerk.store.outbox import CASE_EVENT, EMAIL, NOOP, NOTIFICATION_ONLY, WEBHOOK
from tragwerk.store.queries.events import fan_out, subscription_target
from tragwerk.store.queries.notifications import insert_plain


@dataclass
class Handlers:
    engine: AsyncEngine
    mailer: Mailer | None
    deliverer: Deliverer
    # asyncpg pool for single statements that need no SQLAlchemy (the benchmark job)
    direct: asyncpg.Pool

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
        await self.deliverer.deliver(url, secret, delivery)

    async def noop(self, job: Job) -> None:
        """Does nothing: measures the queue itself (bench/jobs.py)."""

    async def notification(self, job: Job) -> None:
        """Writes one notification row: a realistic small job (bench/jobs.py)."""
        payload = orjson.loads(job.payload or b"{}")
        await insert_plain(self.direct, payload["user_id"], payload["title"])

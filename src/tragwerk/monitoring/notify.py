"""Sending alert notifications straight to the support team: webhook and email.

Not through the job queue: the queue lives in PostgreSQL, and "the database is down"
is one of the things to tell. Each notification is tried `attempts` times with
backoff; a webhook gets Alertmanager's JSON (version 4), a mailbox a plain-text
email whose subject is Alertmanager's ("[FIRING:2] TragwerkModuleDown").

Where notifications were sent lately is claimed in a shared store so that only one
of several processes sends each: PostgreSQL, else Redis (when configured), else this
process's memory, and then only in the leader: the API instance up the longest when
the database was last read. If the leader is down as well, nobody sends until a
shared store answers again (run Redis, or Prometheus and Alertmanager, for that).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

import aiosmtplib
import httpcore
import orjson

from tragwerk.domain.observability import ModuleReporter
from tragwerk.monitoring.alerts import Claims, Notification

log = logging.getLogger(__name__)

RECEIVER = "tragwerk"  # the `receiver` field of the webhook JSON


class Notifier:
    def __init__(
        self,
        reporter: ModuleReporter,
        *,
        webhook_url: str | None,
        emails: tuple[str, ...],
        smtp_url: str | None,
        mail_from: str,
        external_url: str = "",
        attempts: int = 3,
        backoff: float = 1.0,
        timeout: float = 10.0,
    ) -> None:
        self.reporter = reporter
        self.webhook_url = webhook_url
        self.emails = emails
        self.smtp_url = smtp_url
        self.mail_from = mail_from
        self.external_url = external_url
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self._sending: set[asyncio.Task[None]] = set()

    def send_soon(self, notification: Notification) -> None:
        """Send in the background (retries take seconds; evaluation goes on)."""
        task = asyncio.get_running_loop().create_task(self.send(notification))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def close(self, within: float = 5.0) -> None:
        """At a stop: let notifications under way finish for up to `within` seconds,
        then cancel the rest (their connections are closed as they unwind)."""
        pending = set(self._sending)
        if pending:
            _done, pending = await asyncio.wait(pending, timeout=within)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def send(self, notification: Notification) -> None:
        targets = []
        if self.webhook_url:
            targets.append(("webhook", self._post))
        if self.emails and self.smtp_url:
            targets.append(("email", self._mail))
        for channel, deliver in targets:
            for attempt in range(1, self.attempts + 1):
                try:
                    await deliver(notification)
                except Exception as exc:  # noqa: BLE001 - retried, then logged as lost
                    if attempt == self.attempts:
                        self.reporter.count(f"{channel}_failed")
                        log.error(
                            "alert notification not delivered: %s %s: %r",
                            channel,
                            notification.subject,
                            exc,
                        )
                        break
                    jitter = random.uniform(0.5, 1.5)  # noqa: S311 - not secrecy
                    await asyncio.sleep(self.backoff * 2 ** (attempt - 1) * jitter)
                else:
                    self.reporter.count(f"{channel}_sent")
                    log.info("alert notification sent: %s %s", channel, notification.subject)
                    break

    async def _post(self, notification: Notification) -> None:
        assert self.webhook_url is not None
        body = orjson.dumps(notification.body(RECEIVER, self.external_url))
        timeouts = dict.fromkeys(("connect", "read", "write", "pool"), self.timeout)
        # httpcore, the HTTP client tragwerk already depends on (jobs.webhooks); the URL
        # is the operator's own, so no SSRF guard here.
        async with httpcore.AsyncConnectionPool() as pool:
            response = await pool.request(
                "POST",
                self.webhook_url,
                headers={"Content-Type": "application/json", "User-Agent": "tragwerk-alerts/1"},
                content=body,
                extensions={"timeout": timeouts},
            )
        if not 200 <= response.status < 300:
            raise RuntimeError(f"the alert webhook answered {response.status}")

    async def _mail(self, notification: Notification) -> None:
        assert self.smtp_url is not None
        parts = urlsplit(self.smtp_url)
        message = EmailMessage()
        message["From"] = self.mail_from
        message["To"] = ", ".join(self.emails)
        message["Subject"] = notification.subject
        message.set_content(notification.text())
        implicit_tls = parts.scheme == "smtps"
        await aiosmtplib.send(
            message,
            hostname=parts.hostname or "localhost",
            port=parts.port or (465 if implicit_tls else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            use_tls=implicit_tls,
            start_tls=None,
            timeout=self.timeout,
        )


class MemoryClaims:
    """This process's own record: the last fallback."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._until: dict[str, float] = {}
        self._clock = clock

    async def claim(self, key: str, seconds: float) -> bool:
        now = self._clock()
        if self._until.get(key, 0.0) > now:
            return False
        self._until[key] = now + seconds
        return True

    async def release(self, key: str) -> None:
        self._until.pop(key, None)


class RedisClaims:
    def __init__(self, redis: Any, namespace: str) -> None:
        self._redis = redis
        self._prefix = f"{namespace}:alert:"

    async def claim(self, key: str, seconds: float) -> bool:
        ms = max(1, int(seconds * 1000))
        return bool(await self._redis.set(self._prefix + key, b"1", nx=True, px=ms))

    async def release(self, key: str) -> None:
        await self._redis.delete(self._prefix + key)


class FallbackClaims:
    """Ask each store in turn; one that fails (down, slow) passes the question on.

    The memory store is always asked last and always answers, and it also remembers
    every claim won elsewhere, so a process that loses the shared stores does not
    repeat what it sent itself."""

    def __init__(
        self,
        *stores: Claims,
        within: float = 2.0,
        leader: Callable[[], bool] | None = None,
    ) -> None:
        self._stores = stores
        self._memory = MemoryClaims()
        self._within = within
        # With every shared store down, only the leader may claim (see SelfAlerting).
        self._leader = leader

    async def claim(self, key: str, seconds: float) -> bool:
        for store in self._stores:
            try:
                async with asyncio.timeout(self._within):
                    won = await store.claim(key, seconds)
            except Exception as exc:  # noqa: BLE001 - the next store answers
                log.warning("alert claim store failed, trying the next: %r", exc)
                continue
            if won:
                await self._memory.claim(key, seconds)
            return won
        if self._leader is not None and not self._leader():
            return False  # the leader tells the team; this process would only repeat it
        return await self._memory.claim(key, seconds)

    def set_leader(self, leader: Callable[[], bool]) -> None:
        self._leader = leader

    async def release(self, key: str) -> None:
        await self._memory.release(key)
        for store in self._stores:
            try:
                async with asyncio.timeout(self._within):
                    await store.release(key)
            except Exception as exc:  # noqa: BLE001 - a claim runs out by itself
                log.warning("alert claim store failed to release: %r", exc)

"""Emails over SMTP (aiosmtplib), one message per job.

The Message-ID is derived from the event and the recipient, so a message sent
twice (a worker killed after sending, before recording it) carries the same
Message-ID both times and the receiving side can drop the copy.
"""

from __future__ import annotations

import ssl
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

import aiosmtplib

from tragwerk.jobs.outcome import Permanent, Retryable


def message_id(event_id: str, user_id: int) -> str:
    return f"<{event_id}.{user_id}@tragwerk>"


class Mailer:
    def __init__(self, url: str, sender: str, timeout: float) -> None:
        parts = urlsplit(url)
        self._implicit_tls = parts.scheme == "smtps"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (465 if self._implicit_tls else 25)
        self._user = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._sender = sender
        self._timeout = timeout
        # Built once: loading the CA bundle takes tens of milliseconds, and doing it per
        # message blocked the worker's event loop until its queue listener timed out.
        self._tls = ssl.create_default_context()

    def build(self, job: dict[str, Any]) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self._sender
        message["To"] = job["to"]
        message["Subject"] = job["subject"]
        message["Message-ID"] = message_id(job["event_id"], job["user_id"])
        message["X-Tragwerk-Event-Id"] = job["event_id"]
        message.set_content(f"Hello {job['name']},\n\n{job['body']}")
        return message

    async def send(self, job: dict[str, Any]) -> None:
        try:
            await aiosmtplib.send(
                self.build(job),
                hostname=self._host,
                port=self._port,
                username=self._user,
                password=self._password,
                use_tls=self._implicit_tls,
                start_tls=None,  # STARTTLS when the server offers it
                tls_context=self._tls,
                timeout=self._timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            if all(400 <= c < 500 for c in codes):
                raise Retryable(f"recipient deferred: {exc}") from exc
            raise Permanent(f"recipient refused: {exc}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            if 400 <= exc.code < 500:
                raise Retryable(f"SMTP {exc.code}: {exc.message}") from exc
            raise Permanent(f"SMTP {exc.code}: {exc.message}") from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise Retryable(f"SMTP unreachable: {type(exc).__name__}: {exc}") from exc

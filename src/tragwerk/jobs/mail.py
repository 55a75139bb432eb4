"""Emails over SMTP (aiosmtplib), one message per job.

The Message-ID is derived from the event and the recipient, so a message sent
twice (a worker killed after sending, before recording it) carries the same
Message-ID both times and the receiving side can drop the copy.
"""

from __future__ import annotations

import re
import ssl
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any
from urllib.parse import unquote, urlsplit

import aiosmtplib

from tragwerk.domain.observability import ModuleReporter, SilentReporter
from tragwerk.jobs.outcome import Permanent, Retryable


def message_id(event_id: str, user_id: int) -> str:
    return f"<{event_id}.{user_id}@tragwerk>"


# Every character that some part of an email stack may take as a line break or other
# control: C0 and C1 controls (CR, LF, VT, FF, NEL ...), DEL, and the Unicode line and
# paragraph separators.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
SUBJECT_LIMIT = 200


def header_text(text: str, limit: int = SUBJECT_LIMIT) -> str:
    """User text made safe for a header on any Python version.

    Controls and line breaks of every kind become one space. "=?" is broken with an
    invisible word joiner: Python decodes RFC 2047 encoded words in a header value it
    is given, and one that decodes to CR LF injected header lines before the fix for
    CVE-2024-6923. What is left is plain text, which the email package encodes itself.
    """
    cleaned = _CONTROLS.sub(" ", text).replace("=?", "=\u2060?").strip()
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1] + "\u2026"
    return cleaned


def recipient(address: str) -> Address:
    """The recipient as one valid address, or Permanent: no attempt can send to it."""
    if _CONTROLS.search(address) or address.count("@") != 1:
        raise Permanent(f"not a valid email address: {address!r}")
    local, _, domain = address.partition("@")
    try:
        return Address(username=local, domain=domain)
    except (ValueError, IndexError) as exc:
        raise Permanent(f"not a valid email address: {address!r} ({exc})") from None


class Mailer:
    def __init__(
        self, url: str, sender: str, timeout: float, reporter: ModuleReporter | None = None
    ) -> None:
        parts = urlsplit(url)
        # Module "smtp": down from a send that could not reach the server (or that it
        # refused with a 4xx) until the next accepted one; the TragwerkModuleDown alert.
        self._reporter = reporter or SilentReporter()
        self.healthy: bool | None = None  # None until the first send

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
        """The message; Permanent if the job can never make one (a bad address, a
        payload without its fields): held at once rather than retried for hours."""
        try:
            message = EmailMessage()
            message["From"] = self._sender
            message["To"] = recipient(str(job["to"]))
            message["Subject"] = header_text(str(job["subject"]))
            message["Message-ID"] = message_id(job["event_id"], job["user_id"])
            message["X-Tragwerk-Event-Id"] = header_text(str(job["event_id"]), 100)
            name = header_text(str(job["name"]), 100)
            message.set_content(f"Hello {name},\n\n{job['body']}")
        except (KeyError, TypeError, ValueError) as exc:
            raise Permanent(f"cannot build the email: {type(exc).__name__}: {exc}") from None
        return message

    async def send(self, job: dict[str, Any]) -> None:
        message = self.build(job)  # outside the try: Permanent is not an SMTP failure
        try:
            await aiosmtplib.send(
                message,
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
            self._state(True)  # it answered; the recipient is the problem
            codes = [r.code for r in exc.recipients]
            if all(400 <= c < 500 for c in codes):
                raise Retryable(f"recipient deferred: {exc}") from exc
            raise Permanent(f"recipient refused: {exc}") from exc
        except aiosmtplib.SMTPResponseException as exc:
            if 400 <= exc.code < 500:
                self._state(False)
                self._reporter.count("deferred")
                raise Retryable(f"SMTP {exc.code}: {exc.message}") from exc
            self._state(True)
            raise Permanent(f"SMTP {exc.code}: {exc.message}") from exc
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            self._state(False)
            self._reporter.count("unreachable")
            raise Retryable(f"SMTP unreachable: {type(exc).__name__}: {exc}") from exc
        self._state(True)
        self._reporter.count("sent")

    def _state(self, healthy: bool) -> None:
        self.healthy = healthy
        self._reporter.set_healthy(healthy)

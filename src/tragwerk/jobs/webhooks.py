"""Webhook deliveries: signed, time-limited, guarded, and refused early when the
destination keeps failing.

Each POST carries
- `X-Tragwerk-Event-Id` (the idempotency key: the same on every attempt and every
  re-run), `X-Tragwerk-Event-Type`, `X-Tragwerk-Delivery` (event and subscription),
- `X-Tragwerk-Timestamp` and `X-Tragwerk-Signature: t=<timestamp>,v1=<hex>`, the
  HMAC-SHA256 of "<timestamp>.<body>" with the subscription's secret, so a receiver
  can check origin and freshness.
Answers: 2xx done; 408, 425, 429 and 5xx retried (honouring Retry-After); any other
status held at once. While the host's circuit breaker refuses calls, deliveries are
deferred, not failed. Response bodies are read up to RESPONSE_LIMIT bytes only.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from tragwerk.domain.events import retry_after_seconds, status_is_retryable
from tragwerk.jobs.outcome import Deferred, Permanent, Retryable
from tragwerk.resilience.breaker import BreakerOpen, CircuitBreakers
from tragwerk.resilience.ssrf import CALL_ERRORS, AddressGuard, AddressRefused, guarded_pool

RESPONSE_LIMIT = 16 * 1024
USER_AGENT = "tragwerk-webhooks/1"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


class Deliverer:
    def __init__(
        self,
        guard: AddressGuard,
        breakers: CircuitBreakers,
        connect_timeout: float,
        read_timeout: float,
        retry_ceiling: float,
    ) -> None:
        self._breakers = breakers
        self._retry_ceiling = retry_ceiling
        self._pool = guarded_pool(guard)
        self._timeouts = {
            "connect": connect_timeout,
            "pool": connect_timeout,
            "read": read_timeout,
            "write": read_timeout,
        }

    async def close(self) -> None:
        await self._pool.aclose()

    async def deliver(self, url: str, secret: str, job: dict[str, Any]) -> int:
        """POST one delivery; the receiver's status, or raise Retryable / Permanent."""
        host = (urlsplit(url).hostname or "").lower()
        try:
            self._breakers.before_call(host)
        except BreakerOpen as exc:  # no call made: not an attempt (outcome.Deferred)
            raise Deferred(str(exc), after=exc.retry_in) from exc
        try:  # whatever happens, a probe slot taken by before_call is given back
            body = job["body"].encode()
            timestamp = int(time.time())
            headers: dict[bytes | str, bytes | str] = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                "X-Tragwerk-Event-Id": job["event_id"],
                "X-Tragwerk-Event-Type": job["event_type"],
                "X-Tragwerk-Delivery": f"{job['event_id']}:{job['subscription_id']}",
                "X-Tragwerk-Timestamp": str(timestamp),
                "X-Tragwerk-Signature": sign(secret, timestamp, body),
            }
            try:
                async with self._pool.stream(
                    "POST",
                    url,
                    headers=headers,
                    content=body,
                    extensions={"timeout": self._timeouts},
                ) as response:
                    read = 0
                    async for chunk in response.aiter_stream():
                        read += len(chunk)
                        if read >= RESPONSE_LIMIT:
                            break
                    status = response.status
                    retry_after = _header(response.headers, b"retry-after")
            except AddressRefused as exc:
                raise Permanent(str(exc)) from exc
            except CALL_ERRORS as exc:
                self._breakers.failed(host)
                raise Retryable(f"{type(exc).__name__}: {exc or 'no detail'}") from exc
            if 200 <= status < 300:
                self._breakers.succeeded(host)
                return status
            if status_is_retryable(status):
                if status >= 500:
                    self._breakers.failed(host)
                after = retry_after_seconds(retry_after, datetime.now(UTC), self._retry_ceiling)
                raise Retryable(f"receiver answered {status}", after=after, status=status)
            # The receiver is up and answered; the request itself is refused.
            self._breakers.succeeded(host)
            raise Permanent(f"receiver answered {status}; not retried", status=status)
        finally:
            self._breakers.release(host)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None

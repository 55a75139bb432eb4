"""How one failed job attempt is decided: retried later, or held for an operator.

Handlers raise `Retryable` for failures that another attempt may cure (a network
error, a timeout, a 5xx or 429 answer, an SMTP 4xx) and `Permanent` for the rest (a
4xx answer, an address the SSRF guard refuses). Unexpected exceptions count as
retryable: a database blip should not hold a job. Retries wait per the RetryPolicy
(capped exponential backoff with jitter) or the receiver's Retry-After; after the
last attempt the job is held: it stays in the queue table with status 'failed',
listed by `GET /v1/admin/jobs?state=held` and `tragwerk jobs held`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from tragwerk.domain.events import RetryPolicy


class Retryable(Exception):
    """Another attempt may succeed; `after` is the receiver's own wait, if it gave one."""

    def __init__(self, message: str, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


class Permanent(Exception):
    """Another attempt would fail the same way; hold the job now."""


@dataclass(frozen=True)
class Decision:
    reason: str
    retry_in: timedelta | None  # None: hold the job


def decide(exc: Exception, attempt: int, policy: RetryPolicy) -> Decision:
    """What to do after attempt `attempt` (from 0) failed with `exc`."""
    reason = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, Permanent) or policy.gives_up_after(attempt):
        return Decision(reason, None)
    after = exc.after if isinstance(exc, Retryable) else None
    delay = timedelta(seconds=after) if after is not None else policy.delay(attempt)
    return Decision(reason, delay)

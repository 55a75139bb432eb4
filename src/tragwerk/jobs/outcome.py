"""How one failed job attempt is decided: retried later, or held for an operator.

Handlers raise `Retryable` for failures that another attempt may cure (a network
error, a timeout, a 5xx or 429 answer, an SMTP 4xx) and `Permanent` for the rest (a
4xx answer, an address the SSRF guard refuses). Unexpected exceptions count as
retryable: a database blip should not hold a job. Retries wait per the RetryPolicy
(capped exponential backoff with jitter) or the receiver's Retry-After; after the
last attempt the job is held: it stays in the queue table with status 'failed',
listed by `GET /v1/admin/jobs?state=held` and `tragwerk jobs held`.

A handler that did not make its call at all (the destination's circuit breaker is
open) raises `Deferred`: the job waits and runs again, and the attempt is not
counted, so an outage does not use up the retry schedule of every job queued for it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta

from tragwerk.domain.events import RetryPolicy


class Retryable(Exception):
    """Another attempt may succeed; `after` is the receiver's own wait, if it gave one;
    `status` its answer's status code, if it answered."""

    def __init__(self, message: str, after: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.after = after
        self.status = status


class Permanent(Exception):
    """Another attempt would fail the same way; hold the job now."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Deferred(Exception):
    """The call was not made (refused before any request); run the job again after
    `after` seconds without counting an attempt."""

    def __init__(self, message: str, after: float) -> None:
        super().__init__(message)
        self.after = after


def deferral(after: float, rng: random.Random | None = None) -> timedelta:
    """`after` plus up to half of it again (at least up to 0.5 s): jobs refused together
    come back spread out, so they do not all hit the breaker's single probe at once."""
    return timedelta(seconds=after + (rng or random).uniform(0, max(after, 1.0) / 2))


@dataclass(frozen=True)
class Decision:
    reason: str
    retry_in: timedelta | None  # None: hold the job
    counted: bool = True  # False: the call was never made, the attempt is not counted


def decide(exc: Exception, attempt: int, policy: RetryPolicy) -> Decision:
    """What to do after attempt `attempt` (from 0) failed with `exc`."""
    reason = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, Deferred):
        return Decision(reason, deferral(exc.after), counted=False)
    if isinstance(exc, Permanent) or policy.gives_up_after(attempt):
        return Decision(reason, None)
    after = exc.after if isinstance(exc, Retryable) else None
    delay = timedelta(seconds=after) if after is not None else policy.delay(attempt)
    return Decision(reason, delay)

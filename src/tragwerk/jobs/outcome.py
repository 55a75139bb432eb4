"""How one job attempt ends: done, retried later, or held for an operator.

Handlers raise `Retryable` for failures that another attempt may cure (a network
error, a timeout, a 5xx or 429 answer, an SMTP 4xx) and `Permanent` for the rest (a
4xx answer, an address the SSRF guard refuses). Unexpected exceptions count as
retryable: a database blip should not hold a job. Retries wait per the RetryPolicy
(capped exponential backoff with jitter, or the receiver's Retry-After); after the
last attempt the job is held: pgqueuer keeps it with status 'failed', listed by
`GET /v1/admin/jobs?state=held` and `tragwerk jobs held`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

import structlog
from pgqueuer.domain.errors import RetryRequested
from pgqueuer.domain.models import Job

from tragwerk.domain.events import RetryPolicy
from tragwerk.monitoring.metrics import JobMetrics

log = structlog.get_logger("tragwerk.jobs")


class Retryable(Exception):
    """Another attempt may succeed; `after` is the receiver's own wait, if it gave one."""

    def __init__(self, message: str, after: float | None = None) -> None:
        super().__init__(message)
        self.after = after


class Permanent(Exception):
    """Another attempt would fail the same way; hold the job now."""


class Held(Exception):
    """Raised to pgqueuer so that it keeps the job with status 'failed' (held)."""


Handler = Callable[[Job], Awaitable[None]]


def outcome_of(kind: str, handler: Handler, policy: RetryPolicy, metrics: JobMetrics) -> Handler:
    """Wrap `handler` with metrics and the retry-or-hold decision."""
    seconds = metrics.seconds.labels(kind)
    running = metrics.running.labels(kind)
    outcomes = {
        name: metrics.outcomes.labels(kind, name)
        for name in ("succeeded", "retried", "held", "failed")
    }

    async def run(job: Job) -> None:
        started = time.perf_counter()
        running.inc()
        try:
            await handler(job)
        except Permanent as exc:
            outcomes["held"].inc()
            log.warning("job held", kind=kind, job_id=job.id, attempt=job.attempts, error=str(exc))
            raise Held(f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            after = exc.after if isinstance(exc, Retryable) else None
            message = f"{type(exc).__name__}: {exc}"
            if policy.gives_up_after(job.attempts):
                outcomes["held"].inc()
                log.warning(
                    "job held after its last attempt",
                    kind=kind,
                    job_id=job.id,
                    attempts=job.attempts + 1,
                    error=message,
                )
                raise Held(message) from exc
            outcomes["retried"].inc()
            delay = timedelta(seconds=after) if after is not None else policy.delay(job.attempts)
            log.info(
                "job retried",
                kind=kind,
                job_id=job.id,
                attempt=job.attempts,
                delay_seconds=round(delay.total_seconds(), 2),
                error=message,
            )
            raise RetryRequested(delay=delay, reason=message) from exc
        else:
            outcomes["succeeded"].inc()
        finally:
            running.dec()
            seconds.observe(time.perf_counter() - started)

    return run

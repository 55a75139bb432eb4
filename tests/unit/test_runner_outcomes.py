"""A failed job whose failure cannot be recorded is not counted as succeeded."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry

from tragwerk.domain.events import RetryPolicy
from tragwerk.jobs.outcome import Retryable
from tragwerk.jobs.runner import JobRunner, RunnerConfig
from tragwerk.monitoring.metrics import JobMetrics


class DatabaseDown:
    """Stands in for pgqueuer's queries while the database is unreachable."""

    async def retry_job(self, *_args: Any) -> None:
        raise ConnectionError("the database is down")


async def test_a_failure_that_cannot_be_recorded_is_not_a_success() -> None:
    async def failing(_job: Any) -> None:
        raise Retryable("receiver answered 503")

    metrics = JobMetrics(CollectorRegistry())
    runner = JobRunner(
        DatabaseDown(),  # type: ignore[arg-type]
        {"webhook": failing},
        RunnerConfig(concurrency=2, batch_size=2, heartbeat_timeout=30),
        RetryPolicy(),
        metrics,
    )
    job = SimpleNamespace(id=7, entrypoint="webhook", attempts=0)
    await runner._run_one(job)  # type: ignore[arg-type]
    assert metrics.count("webhook", "succeeded") == 0
    assert metrics.count("webhook", "unrecorded") == 1

"""The worker's dispatch loop: claim jobs in batches, run them, record how they ended.

Every statement is pgqueuer's (its `Queries`: dequeue with FOR UPDATE SKIP LOCKED,
the completion log, retries, heartbeats, the NOTIFY probe); the loop around them is
ours, for the reasons in docs/decisions/0006-job-queue-and-deliveries.md: pgqueuer's
QueueManager spends two extra tasks and a timer per job (about 190 µs of CPU here,
capping a worker near 5,000 jobs/s), records jobs cancelled at shutdown as finished,
and its listener check races its own LISTEN at start.

What the loop guarantees:
- at most `concurrency` jobs run at once; claims are batches of up to `batch_size`,
  highest priority first, and include jobs whose worker stopped sending heartbeats
  for `heartbeat_timeout` (it crashed): those run again here;
- one heartbeat statement per interval covers every job running in this worker;
- outcomes are written in batches (a crash before the write re-runs those jobs, which
  is why every side effect carries an idempotency key);
- `stop(grace)` lets running jobs finish for `grace` seconds, then puts the rest back
  in the queue at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import orjson
import structlog
from pgqueuer.adapters.persistence.queries import Queries
from pgqueuer.domain.models import Job, TracebackRecord
from pgqueuer.domain.types import JOB_STATUS, JobId, QueueEntrypoint, QueueManagerId
from pgqueuer.ports.repository import EntrypointExecutionParameter

from tragwerk.domain.events import RetryPolicy
from tragwerk.jobs.outcome import decide
from tragwerk.monitoring.metrics import JobMetrics

log = structlog.get_logger("tragwerk.jobs")

Handler = Callable[[Job], Awaitable[None]]
Outcome = tuple[Job, JOB_STATUS, TracebackRecord | None]

FLUSH_SECONDS = 0.02  # outcomes wait at most this long to be written in a batch

# pgqueuer's retry statement (QueryQueueBuilder.build_retry_job_query) without its
# `attempts = attempts + 1` and without a log row: a deferred job made no call, so it
# has no error to record and its retry schedule is untouched. pgqueuer offers no
# public call that re-queues without counting; the table layout is ours (frozen by
# migration 0005).
_DEFER = """
    UPDATE pgqueuer
    SET status = 'queued', execute_after = now() + $2::interval, updated = now(),
        queue_manager_id = NULL
    WHERE id = $1::bigint AND status = 'picked'
"""


@dataclass
class RunnerConfig:
    concurrency: int
    batch_size: int
    heartbeat_timeout: float
    poll_seconds: float = 1.0


class JobRunner:
    def __init__(
        self,
        queries: Queries,
        handlers: dict[str, Handler],
        config: RunnerConfig,
        policy: RetryPolicy,
        metrics: JobMetrics,
    ) -> None:
        self.queries = queries
        self.handlers = handlers
        self.config = config
        self.policy = policy
        self.metrics = metrics
        self.queue_manager_id = QueueManagerId(uuid.uuid4())
        self._entrypoints = {
            QueueEntrypoint(name): EntrypointExecutionParameter(concurrency_limit=0)
            for name in handlers
        }
        self._heartbeat = timedelta(seconds=config.heartbeat_timeout)
        self._running: dict[JobId, asyncio.Task[None]] = {}
        self._outcomes: list[Outcome] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._probes: dict[str, asyncio.Future[None]] = {}
        self._background: list[asyncio.Task[None]] = []
        self._flush_lock = asyncio.Lock()

    # --- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and run jobs until `stop()`; raises if the database fails."""
        # The driver keeps one pool connection for LISTEN until it is left.
        async with self.queries.driver:
            await self._loop()

    async def _loop(self) -> None:
        channel = self.queries.qbq.settings.channel
        await self.queries.driver.add_listener(channel, self._on_notify)
        self._background = [
            asyncio.create_task(self._beat(), name="tragwerk-heartbeat"),
            asyncio.create_task(self._flush_periodically(), name="tragwerk-outcomes"),
        ]
        # Claim when at least half a batch of slots is free (or nothing runs): refilling
        # slot by slot as single jobs finish cost a statement per job and halved the
        # throughput of short jobs (docs/performance.md).
        min_claim = max(1, min(self.config.batch_size, self.config.concurrency) // 2)
        try:
            while not self._stopping:
                free = self.config.concurrency - len(self._running)
                if free >= min_claim or (free > 0 and not self._running):
                    wanted = min(free, self.config.batch_size)
                    jobs = await self.queries.dequeue(
                        batch_size=wanted,
                        entrypoints=self._entrypoints,
                        queue_manager_id=self.queue_manager_id,
                        global_concurrency_limit=None,
                        heartbeat_timeout=self._heartbeat,
                    )
                    for job in jobs:
                        if job.id not in self._running:  # our own late heartbeat re-claimed it
                            self._running[job.id] = asyncio.create_task(self._run_one(job))
                    if len(jobs) == wanted:
                        continue  # there may be more right away
                self._wake.clear()
                # Woken by a NOTIFY on the queue table, a slot freeing, or the poll,
                # which also catches retries whose delay has passed.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.poll_seconds)
        finally:
            for task in self._background:
                task.cancel()
            for task in self._background:
                with contextlib.suppress(BaseException):
                    await task

    def _on_notify(self, payload: str | bytes | bytearray) -> None:
        self._wake.set()
        if b"health_check_event" not in (
            payload if isinstance(payload, bytes | bytearray) else payload.encode()
        ):
            return
        with contextlib.suppress(ValueError):
            probe = self._probes.get(str(orjson.loads(payload).get("id")))
            if probe is not None and not probe.done():
                probe.set_result(None)

    async def _run_one(self, job: Job) -> None:
        kind = job.entrypoint
        metrics = self.metrics
        metrics.started(kind)
        started = time.perf_counter()
        outcome = "succeeded"
        try:
            await self.handlers[kind](job)
        except asyncio.CancelledError:
            outcome = "released"  # stop() puts it back in the queue
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is decided on below
            # Not "succeeded" if recording the failure fails too (the database is down):
            # the job stays picked and runs again after the heartbeat timeout.
            outcome = "unrecorded"
            try:
                outcome = await self._failed(job, exc)
            except Exception as record_error:  # noqa: BLE001 - logged; heartbeat recovery
                log.error(
                    "could not record a failed job; it runs again after the heartbeat timeout",
                    kind=kind,
                    job_id=job.id,
                    error=repr(exc),
                    record_error=repr(record_error),
                )
        else:
            self._record((job, "successful", None))
        finally:
            metrics.finished(kind, outcome, time.perf_counter() - started)
            self._running.pop(job.id, None)
            self._wake.set()  # a slot is free

    async def _failed(self, job: Job, exc: Exception) -> str:
        decision = decide(exc, job.attempts, self.policy)
        if not decision.counted and decision.retry_in is not None:
            log.debug(
                "job deferred",
                kind=job.entrypoint,
                job_id=job.id,
                delay_seconds=round(decision.retry_in.total_seconds(), 2),
                reason=decision.reason,
            )
            await self.queries.driver.execute(_DEFER, job.id, decision.retry_in)
            self._wake_after(decision.retry_in)
            return "deferred"
        record = TracebackRecord.from_exception(
            exc, job.id, {"entrypoint": job.entrypoint, "attempt": job.attempts}
        )
        if decision.retry_in is None:
            log.warning(
                "job held",
                kind=job.entrypoint,
                job_id=job.id,
                attempts=job.attempts + 1,
                error=decision.reason,
            )
            self._record((job, "failed", record))
            return "held"
        log.info(
            "job retried",
            kind=job.entrypoint,
            job_id=job.id,
            attempt=job.attempts,
            delay_seconds=round(decision.retry_in.total_seconds(), 2),
            error=decision.reason,
        )
        await self.queries.retry_job(job, decision.retry_in, record)
        self._wake_after(decision.retry_in)
        return "retried"

    def _wake_after(self, delay: timedelta) -> None:
        """Look again when a re-queued job is due rather than at the next poll."""
        asyncio.get_running_loop().call_later(delay.total_seconds() + 0.01, self._wake.set)

    # --- outcomes and heartbeats ------------------------------------------------------

    def _record(self, outcome: Outcome) -> None:
        self._outcomes.append(outcome)
        if len(self._outcomes) >= self.config.batch_size and not self._flush_lock.locked():
            self._background.append(asyncio.create_task(self.flush()))

    async def flush(self) -> None:
        """Write the recorded outcomes: finished jobs leave the queue, held ones stay."""
        async with self._flush_lock:
            batch, self._outcomes = self._outcomes, []
            if not batch:
                return
            try:
                await self.queries.log_jobs(batch)
            except BaseException:
                self._outcomes[:0] = batch  # written with the next flush
                raise

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
            except Exception as exc:  # noqa: BLE001 - kept and retried at the next tick
                log.warning("could not record job outcomes", error=repr(exc))
            self._background = [t for t in self._background if not t.done()]

    async def _beat(self) -> None:
        interval = self.config.heartbeat_timeout / 2
        while True:
            await asyncio.sleep(interval)
            if self._running:
                try:
                    await self.queries.update_heartbeat(list(self._running))
                except Exception as exc:  # noqa: BLE001 - the next beat tries again
                    log.warning("heartbeat failed", error=repr(exc))

    # --- health and stopping ----------------------------------------------------------

    async def probe(self, within: float) -> None:
        """Round-trip a NOTIFY through the queue's LISTEN connection, or raise."""
        probe_id = uuid.uuid4()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probes[str(probe_id)] = future
        try:
            await self.queries.notify_health_check(probe_id)  # type: ignore[arg-type]
            await asyncio.wait_for(future, within)
        finally:
            self._probes.pop(str(probe_id), None)

    @property
    def running(self) -> int:
        return len(self._running)

    def request_stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def drain(self, grace: float) -> list[JobId]:
        """After the loop ended: wait up to `grace` for running jobs, record outcomes,
        cancel what still runs; returns the ids of the jobs that were cancelled."""
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=grace)
        leftover = list(self._running)
        for task in list(self._running.values()):
            task.cancel()
        for task in list(self._running.values()):
            with contextlib.suppress(BaseException):
                await task
        await self.flush()
        return leftover

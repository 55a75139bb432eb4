"""A worker: runs jobs from the queue (tragwerk.jobs.runner) and the SLA monitor.

Jobs are claimed with FOR UPDATE SKIP LOCKED in batches, highest priority first; a
job whose worker died (no heartbeat for `job_heartbeat_timeout_seconds`) is claimed
again by another worker. Workers share nothing but the database, so more of them
(`tragwerk worker` on more processes or machines) means more throughput.

Stopping: `stop()` lets running jobs finish for `worker_grace_seconds`; jobs still
running then are put back in the queue at once, not after a heartbeat timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from collections.abc import Iterable
from datetime import timedelta

import asyncpg
import structlog
from pgqueuer.adapters.persistence.queries import Queries
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine

from tragwerk.domain.events import RetryPolicy
from tragwerk.jobs.handlers import Handlers
from tragwerk.jobs.mail import Mailer
from tragwerk.jobs.runner import JobRunner, RunnerConfig
from tragwerk.jobs.webhooks import Deliverer
from tragwerk.monitoring.metrics import Metrics
from tragwerk.resilience.breaker import CircuitBreakers
from tragwerk.resilience.ssrf import AddressGuard
from tragwerk.settings import Settings
from tragwerk.store.changes import plain_url
from tragwerk.store.queries.cases import CaseStore
from tragwerk.store.queries.deliveries import DeliveryStore
from tragwerk.store.queries.jobs import JobStore
from tragwerk.store.queries.reconcile import prune_events, reconcile
from tragwerk.store.queries.sla import raise_alerts

log = structlog.get_logger("tragwerk.worker")

QUEUE_STATS_SECONDS = 5.0
# The LISTEN connection is probed this often, each probe waiting this long for its
# NOTIFY: a listener killed by a database restart is found within 3 x (2 + 3) = 15 s
# (it was 45 s), for one NOTIFY every 2 s.
LISTENER_CHECK_SECONDS = 2.0
LISTENER_PROBE_SECONDS = 3.0
LOG_PRUNE_SECONDS = 600.0
LISTENER_FAILURES_ALLOWED = 3
POOL_CLOSE_SECONDS = 10.0
RECONCILE_WINDOW = timedelta(hours=1)
# A receiver's Retry-After is honoured up to this; beyond, it is taken as this.
RETRY_AFTER_CEILING_SECONDS = 3600.0


class Worker:
    def __init__(
        self,
        settings: Settings,
        database_url: str,
        engine: AsyncEngine,
        metrics: Metrics,
        *,
        concurrency: int | None = None,
        sla_monitor: bool = True,
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self.engine = engine
        self.metrics = metrics
        self.concurrency = concurrency or settings.worker_concurrency
        self.sla_monitor = sla_monitor
        self.jobs = JobStore(engine)
        self.deliveries = DeliveryStore(engine)
        self.breakers = CircuitBreakers(settings.breaker_threshold, settings.breaker_open_seconds)
        self.reporter = metrics.module("worker")
        self._breaker_metrics = BreakerCollector(self.breakers)
        self._pool: asyncpg.Pool | None = None
        self._direct: asyncpg.Pool | None = None
        self._runner: JobRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._run: asyncio.Task[None] | None = None
        self._deliverer: Deliverer | None = None
        self._mailer: Mailer | None = None
        self.connected = False
        self.failed = False

    @property
    def heartbeat_timeout(self) -> timedelta:
        return timedelta(seconds=self.settings.job_heartbeat_timeout_seconds)

    @property
    def batch_size(self) -> int:
        # Larger claims cost less database time per job (docs/performance.md) but hold
        # more jobs per worker; 100 keeps a crashed worker's share small.
        if self.settings.worker_batch:
            return min(self.settings.worker_batch, self.concurrency)
        return max(1, min(100, self.concurrency))

    @property
    def running_jobs(self) -> int:
        return self._runner.running if self._runner is not None else 0

    def mail_state(self) -> str:
        """'ok', 'failing' (the last send did not reach the server or it deferred),
        'not used yet' or 'off' (no TRAGWERK_SMTP_URL)."""
        if self._mailer is None:
            return "off"
        if self._mailer.healthy is None:
            return "not used yet"
        return "ok" if self._mailer.healthy else "failing"

    def _handlers(self) -> Handlers:
        s = self.settings
        mailer = None
        if s.smtp_url:
            smtp = self.metrics.module("smtp")
            mailer = Mailer(s.smtp_url, s.mail_from, s.smtp_timeout_seconds, smtp)
        self._mailer = mailer
        self._deliverer = Deliverer(
            AddressGuard(s.webhook_allow_hosts),
            self.breakers,
            s.webhook_connect_timeout_seconds,
            s.webhook_read_timeout_seconds,
            retry_ceiling=RETRY_AFTER_CEILING_SECONDS,
        )
        assert self._direct is not None
        policy = RetryPolicy(s.job_max_attempts, s.job_retry_base_seconds, s.job_retry_cap_seconds)
        return Handlers(self.engine, mailer, self._deliverer, self._direct, policy)

    async def start(self) -> None:
        s = self.settings
        self.metrics.registry.register(self._breaker_metrics)
        self._pool = await asyncpg.create_pool(
            plain_url(self.database_url),
            min_size=2,
            max_size=4,
            server_settings={"application_name": "tragwerk-worker"},
        )
        self._direct = await asyncpg.create_pool(
            plain_url(self.database_url),
            min_size=1,
            max_size=max(2, min(10, self.concurrency)),
            server_settings={"application_name": "tragwerk-worker"},
        )
        policy = RetryPolicy(s.job_max_attempts, s.job_retry_base_seconds, s.job_retry_cap_seconds)
        self._runner = JobRunner(
            Queries.from_asyncpg_pool(self._pool),
            dict(self._handlers().by_kind()),
            RunnerConfig(
                concurrency=self.concurrency,
                batch_size=self.batch_size,
                heartbeat_timeout=s.job_heartbeat_timeout_seconds,
            ),
            policy,
            self.metrics.jobs,
        )
        # Logged before the first claim: the id is how an orphaned job names its worker
        # (GET /v1/admin/jobs?state=orphaned), even if this process dies at once.
        log.info(
            "worker starting",
            queue_manager_id=str(self._runner.queue_manager_id),
            pid=os.getpid(),
            host=socket.gethostname(),
        )
        self._run = asyncio.create_task(self._run_jobs(), name="tragwerk-worker")
        self._tasks.append(asyncio.create_task(self._refresh_queue_stats()))
        self._tasks.append(asyncio.create_task(self._watch_listener()))
        self._tasks.append(asyncio.create_task(self._reconcile_periodically()))
        if self.sla_monitor:
            self._tasks.append(asyncio.create_task(self._monitor_sla()))
        self.connected = True
        await self._until_listening()
        log.info(
            "worker started",
            concurrency=self.concurrency,
            batch_size=self.batch_size,
            queue_manager_id=str(self._runner.queue_manager_id),
        )

    async def _until_listening(self, within: float = 15.0) -> None:
        """Return once the queue's LISTEN connection receives our NOTIFY probe."""
        assert self._runner is not None
        assert self._run is not None
        deadline = asyncio.get_running_loop().time() + within
        while True:
            if self._run.done():
                await self._run  # raises why the runner could not start
                raise RuntimeError("the job runner stopped while starting")
            try:
                await self._runner.probe(within=0.5)
                return
            except Exception:
                if asyncio.get_running_loop().time() > deadline:
                    raise

    async def _run_jobs(self) -> None:
        assert self._runner is not None
        try:
            with self.reporter.operation("run"):
                await self._runner.run()
        finally:
            self.connected = False
            self.reporter.set_healthy(False)

    async def wait(self) -> None:
        """Return when the job runner stops (asked to, or its connection failed)."""
        assert self._run is not None
        await asyncio.shield(self._run)

    async def ready(self) -> str:
        """'ok' when the queue connection round-trips a NOTIFY, else why not."""
        if self._runner is None or not self.connected:
            return "stopped"
        try:
            await self._runner.probe(within=2.0)
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            return f"failing: {type(exc).__name__}"
        return "ok"

    async def stop(self, grace: float | None = None) -> None:
        grace = self.settings.worker_grace_seconds if grace is None else grace
        for task in self._tasks:
            task.cancel()
        if self._runner is not None and self._run is not None:
            self._runner.request_stop()
            with contextlib.suppress(BaseException):
                await self._run
            try:
                leftover = await self._runner.drain(grace)
                if leftover:
                    released = await self.jobs.release(self._runner.queue_manager_id)
                    log.warning("grace period over; released running jobs", released=released)
            except Exception as exc:  # noqa: BLE001 - unrecorded jobs run again after a heartbeat timeout
                log.error("could not record the last outcomes", error=repr(exc))
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._deliverer is not None:
            with contextlib.suppress(Exception):
                await self._deliverer.close()
        for pool in (self._pool, self._direct):
            if pool is not None:
                # After a crash (the database went away) a graceful close can fail or
                # hang; every connection must still be closed, or its socket leaks.
                try:
                    await asyncio.wait_for(pool.close(), POOL_CLOSE_SECONDS)
                except Exception as exc:  # noqa: BLE001 - terminated instead
                    log.warning("closing a pool failed; terminating it", error=repr(exc))
                    pool.terminate()
        with contextlib.suppress(KeyError):  # a start that failed before registering
            self.metrics.registry.unregister(self._breaker_metrics)

    async def _watch_listener(self) -> None:
        """Stop the job runner when its LISTEN connection stops hearing our probes.

        A worker without its listener would only poll; stopping makes the process exit
        with status 1, so that its supervisor starts a fresh one.
        """
        assert self._runner is not None
        failures = 0
        while True:
            await asyncio.sleep(LISTENER_CHECK_SECONDS)
            try:
                await self._runner.probe(within=LISTENER_PROBE_SECONDS)
            except Exception as exc:  # noqa: BLE001 - counted; three in a row stop us
                failures += 1
                self.reporter.count("listener_probe_failed")
                log.warning("queue listener did not answer", failures=failures, error=repr(exc))
                if failures >= LISTENER_FAILURES_ALLOWED:
                    self.failed = True
                    self.reporter.set_healthy(False)
                    self._runner.request_stop()
                    return
            else:
                failures = 0

    async def _refresh_queue_stats(self) -> None:
        keep = timedelta(hours=self.settings.job_log_retention_hours)
        next_prune = 0.0
        while True:
            try:
                self.metrics.jobs.refresh_queue(await self.jobs.stats(self.heartbeat_timeout))
                now = asyncio.get_running_loop().time()
                if now >= next_prune:
                    pruned = await self.jobs.prune_log(keep)
                    pruned += await self.deliveries.prune(keep)
                    pruned += await prune_events(self.engine, keep)
                    # Keep going while there is a backlog; otherwise look again later.
                    next_prune = now if pruned else now + LOG_PRUNE_SECONDS
                    if pruned:
                        self.reporter.count("log_rows_pruned", pruned)
            except Exception as exc:
                # Counted and logged with its traceback; the loop goes on.
                self.reporter.count("upkeep_failed")
                log.warning("queue upkeep failed", error=repr(exc), exc_info=exc)
            await asyncio.sleep(QUEUE_STATS_SECONDS)

    async def _reconcile_periodically(self) -> None:
        """Find lost events and deliveries of the last hour and queue them again
        (tragwerk.store.queries.reconcile); one worker at a time, the others skip."""
        cases = CaseStore(self.engine, self.reporter, self.settings.sla_policy)
        while True:
            # Jitter keeps several workers from asking for the lock at once.
            await asyncio.sleep(self.settings.reconcile_seconds * random.uniform(0.8, 1.2))  # noqa: S311
            try:
                with self.reporter.operation("reconcile"):
                    report = await reconcile(self.engine, cases.read_in, since=RECONCILE_WINDOW)
            except Exception as exc:
                # Counted and logged with its traceback; the loop goes on.
                self.reporter.count("reconcile_failed")
                log.warning("reconciliation failed", error=repr(exc), exc_info=exc)
                continue
            if report.gaps:
                self.reporter.count("missing_event", len(report.missing_events))
                self.reporter.count("missing_delivery", len(report.missing_deliveries))
                self.reporter.count("missing_notification", len(report.missing_notifications))
                log.error(
                    "reconciliation found lost work and queued it again",
                    missing_events=[e["event_id"] for e in report.missing_events][:20],
                    missing_deliveries=[
                        f"{d['event_id']}:{d['subscription_id']}" for d in report.missing_deliveries
                    ][:20],
                )

    async def _monitor_sla(self) -> None:
        s = self.settings
        while True:
            try:
                with self.reporter.operation("sla_scan"):
                    raised = await raise_alerts(
                        self.engine,
                        at_risk_within=timedelta(minutes=s.sla_at_risk_minutes),
                        lookback=timedelta(hours=s.sla_lookback_hours),
                    )
                for threshold, count in raised.items():
                    if count:
                        self.reporter.count(f"sla_{threshold}", count)
                        log.info("SLA alerts raised", threshold=threshold, cases=count)
            except Exception as exc:
                # Counted and logged with its traceback; the loop goes on.
                self.reporter.count("sla_scan_failed")
                log.warning("SLA scan failed", error=repr(exc), exc_info=exc)
            # Jitter keeps several workers' scans from lining up.
            await asyncio.sleep(s.sla_scan_seconds * random.uniform(0.8, 1.2))  # noqa: S311


class BreakerCollector(Collector):
    """tragwerk_webhook_breaker_open{host, state}: 1 per destination host whose breaker is
    open or half-open in this worker (closed ones are not listed)."""

    def __init__(self, breakers: CircuitBreakers) -> None:
        self._breakers = breakers

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "tragwerk_webhook_breaker_open",
            "1 per webhook destination host whose circuit breaker is open or half-open",
            labels=["host", "state"],
        )
        for host, state in sorted(self._breakers.not_closed().items()):
            family.add_metric([host, state.value], 1.0)
        yield family


class QueueListenerLostError(RuntimeError):
    """The worker's LISTEN connection stopped answering its probes."""


class EmbeddedWorker:
    """The job worker of `tragwerk up`, as a task the API process's supervisor runs.

    Each run builds a fresh Worker (new pools, runner and breakers) and runs it until
    cancelled; a runner that fails or a listener that stops answering ends the run with
    an error, and the supervisor (tragwerk.monitoring.supervisor) logs it and starts
    the next run after its backoff. Before, such a failure ended the worker silently.
    """

    def __init__(
        self, settings: Settings, database_url: str, engine: AsyncEngine, metrics: Metrics
    ) -> None:
        self.settings = settings
        self.database_url = database_url
        self.engine = engine
        self.metrics = metrics
        self.current: Worker | None = None
        self.started = asyncio.Event()  # set once the first run listens

    async def run(self) -> None:
        worker = Worker(self.settings, self.database_url, self.engine, self.metrics)
        self.current = worker
        try:
            await worker.start()
            self.started.set()
            await worker.wait()
            if worker.failed:
                raise QueueListenerLostError("the queue listener stopped answering")
        finally:
            self.current = None
            await worker.stop()

    async def ready(self) -> str:
        worker = self.current
        return "stopped" if worker is None else await worker.ready()

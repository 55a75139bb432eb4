"""What the routes need, built once by the composition root (tragwerk.bootstrap)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from tragwerk.api.cached import CachedReads
from tragwerk.api.limit_sync import LimitSync
from tragwerk.api.readiness import ReadinessProbe
from tragwerk.api.server_state import ServerState
from tragwerk.cache.caches import Caches
from tragwerk.monitoring.metrics import Metrics
from tragwerk.monitoring.supervisor import Supervisor
from tragwerk.ratelimit.admission import Admission
from tragwerk.ratelimit.limiter import RequestLimiter
from tragwerk.settings import Settings
from tragwerk.store.changes import ChangeFeed
from tragwerk.store.database import check_ready, warm_pool
from tragwerk.store.instances import InstanceRecorder, InstanceStore
from tragwerk.store.queries.cases import CaseStore
from tragwerk.store.queries.deliveries import DeliveryStore
from tragwerk.store.queries.directory import DirectoryStore
from tragwerk.store.queries.jobs import JobStore
from tragwerk.store.queries.notifications import NotificationStore
from tragwerk.store.queries.webhooks import WebhookStore


class Background(Protocol):
    """Work that runs in this process beside the requests (the embedded profile's worker).

    `run()` runs until cancelled and raises when it fails; the supervisor restarts it.
    """

    started: asyncio.Event  # set once it first works (start-up waits a while for it)

    async def run(self) -> None: ...

    async def ready(self) -> str: ...


STARTUP_WAIT_SECONDS = 15.0  # start-up waits this long for background work to listen
FEED_WAIT_SECONDS = 5.0  # and this long for the change feed's first connection


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    metrics: Metrics
    cases: CaseStore
    directory: DirectoryStore
    webhooks: WebhookStore
    notifications: NotificationStore
    jobs: JobStore
    instances: InstanceStore
    deliveries: DeliveryStore
    caches: Caches
    reads: CachedReads
    feed: ChangeFeed | None
    # Runs the long-lived tasks below (the change feed, background work, limit reloads)
    # and restarts one that crashes.
    supervisor: Supervisor
    limiter: RequestLimiter | None = None
    admission: Admission | None = None
    limits: LimitSync | None = None
    # Shared with the server's other worker processes (tragwerk api / up); None when
    # the app is served otherwise (tests, benchmarks).
    server_state: ServerState | None = None
    # name -> background work started and stopped with the app (e.g. "worker")
    background: dict[str, Background] = field(default_factory=dict)
    # More long-lived tasks for the supervisor, by name (e.g. "alerting").
    tasks: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)
    # Called at stop, after the tasks have stopped (e.g. the alert notifier's sends).
    stoppers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # The alerts firing now as this process's self-alerting sees them; None: it is off.
    alerts_firing: Callable[[], list[dict[str, Any]]] | None = None
    # This process's row in `instances` (GET /v1/admin/instances); None: not recorded.
    recorder: InstanceRecorder | None = None
    readiness: ReadinessProbe = field(init=False)

    def __post_init__(self) -> None:
        self.readiness = ReadinessProbe(lambda: check_ready(self.engine))

    async def start(self) -> None:
        """Start what runs beside the requests: the change feed that keeps caches true."""
        await warm_pool(self.engine, self.settings.db_pool_size)
        if self.limits is not None:
            await self.limits.reload()
        if self.feed is not None:
            self.supervisor.start("change_feed", self.feed.run)
            await self.feed.wait_connected(FEED_WAIT_SECONDS)
        for name, work in self.background.items():
            self.supervisor.start(name, work.run, probe=work.ready)
        for work in self.background.values():
            # Not fatal: the supervisor keeps trying, and readiness says how it goes.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(work.started.wait(), STARTUP_WAIT_SECONDS)
        if self.recorder is not None:
            self.supervisor.start("instance", self.recorder.run)
        for name, run in self.tasks.items():
            self.supervisor.start(name, run)
        if self.server_state is not None:
            self.server_state.mark_started()

    async def stop(self) -> None:
        await self.supervisor.stop()
        for stopper in self.stoppers:
            await stopper()
        if self.recorder is not None:
            await self.recorder.stopped()
        if self.limiter is not None:
            await self.limiter.close()
        await self.engine.dispose()

    async def checks(self) -> dict[str, str]:
        """This process's checks: /health/ready answers them, the instance record keeps
        them. Only `database` and `tasks` decide readiness (see routes/health.py)."""
        checks = {"database": await self.readiness.database()}
        self.metrics.module_up.labels("store").set(1 if checks["database"] == "ok" else 0)
        # Reported, not failed on: without its feed the cache steps aside and every read
        # goes to the database, which is slower but still correct.
        checks["cache_feed"] = self.cache_state()
        checks["rate_limit"] = self.rate_limit_state()
        for name in self.background:
            checks[name] = await self.supervisor.describe(name)
        looping = self.supervisor.crash_looping
        checks["tasks"] = f"crash-looping: {', '.join(looping)}" if looping else "ok"
        return checks

    async def instance_states(self) -> dict[str, Any]:
        """What this process's instance record shows: its checks, and for `tragwerk up`
        what the in-process worker did (jobs by outcome, SMTP, open breakers)."""
        states: dict[str, Any] = dict(await self.checks())
        worker = getattr(self.background.get("worker"), "current", None)
        if worker is not None:
            states["smtp"] = worker.mail_state()
            states["running_jobs"] = worker.running_jobs
            states["breakers_open"] = sorted(worker.breakers.not_closed())
        if self.background:
            states["jobs"] = self.metrics.jobs.totals()
        return states

    def rate_limit_state(self) -> str:
        if self.limiter is None:
            return "off"
        if not self.limiter.shared:
            return "ok (memory)"
        return "ok (redis)" if self.limiter.store_healthy else "failing (falling back per tier)"

    def cache_state(self) -> str:
        if self.feed is None or not self.settings.cache_enabled:
            return "off"
        return "ok" if self.feed.connected else "reconnecting (serving from the database)"

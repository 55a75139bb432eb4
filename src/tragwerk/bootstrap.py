"""Composition root: Settings -> engine, stores, metrics -> the app. Nothing runs at import."""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

import tragwerk
from tragwerk.api.app import create_app
from tragwerk.api.cached import CachedReads
from tragwerk.api.limit_sync import LimitSync
from tragwerk.api.self_alerting import SelfAlerting
from tragwerk.api.server_state import ServerState, ServerStateCollector
from tragwerk.api.services import Services
from tragwerk.cache.caches import Caches
from tragwerk.monitoring.alerts import Claims
from tragwerk.monitoring.metrics import Metrics
from tragwerk.monitoring.notify import FallbackClaims, Notifier, RedisClaims
from tragwerk.monitoring.supervisor import Backoff, Supervisor, SupervisorCollector
from tragwerk.ratelimit.admission import Admission
from tragwerk.ratelimit.budget import SharedBudget
from tragwerk.ratelimit.limiter import RequestLimiter
from tragwerk.ratelimit.local_windows import LocalWindows
from tragwerk.ratelimit.policy import FailMode, Tier, TierPolicy, parse_limit
from tragwerk.ratelimit.windows import WindowStore
from tragwerk.settings import Settings
from tragwerk.store.alert_claims import DatabaseClaims
from tragwerk.store.changes import ChangeFeed
from tragwerk.store.database import create_engine
from tragwerk.store.instances import InstanceRecorder, InstanceStore
from tragwerk.store.queries.cases import CaseStore
from tragwerk.store.queries.deliveries import DeliveryStore
from tragwerk.store.queries.directory import DirectoryStore
from tragwerk.store.queries.jobs import JobStore
from tragwerk.store.queries.limits import LimitStore
from tragwerk.store.queries.notifications import NotificationStore
from tragwerk.store.queries.webhooks import WebhookStore


def build_services(
    settings: Settings, database_url: str, engine: AsyncEngine | None = None
) -> Services:
    engine = engine or create_engine(
        database_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow
    )
    metrics = Metrics()
    supervisor = Supervisor(
        Backoff(
            initial=settings.restart_initial_seconds,
            cap=settings.restart_cap_seconds,
            crash_loop_crashes=settings.crash_loop_crashes,
            crash_loop_window=settings.crash_loop_seconds,
        )
    )
    metrics.registry.register(SupervisorCollector(supervisor))
    directory = DirectoryStore(engine, metrics.module("directory"))
    caches = Caches.create(
        metrics.module("reference_cache"),
        metrics.module("principal_cache"),
        settings.cache_ttl_seconds,
    )
    limiter = build_limiter(settings, metrics) if settings.rate_limit_enabled else None
    limit_store = LimitStore(engine)
    sync = LimitSync(limit_store, limiter, supervisor)
    feed = None
    if settings.cache_enabled or limiter is not None:

        def on_change(table: str, ids: list[Any] | None) -> None:
            caches.changed(table, ids)
            if table == "rate_limit_tiers":
                sync.reload_soon()

        def on_state(connected: bool) -> None:
            caches.set_enabled(connected and settings.cache_enabled)
            if connected:
                sync.reload_soon()  # changes made while disconnected were not announced

        feed = ChangeFeed(
            database_url,
            on_change=on_change,
            on_state=on_state,
            reporter=metrics.module("change_feed"),
        )
    admission = None
    if settings.max_in_flight > 0:
        admission = Admission(settings.max_in_flight, metrics.module("admission"))
    return Services(
        limiter=limiter,
        admission=admission,
        limits=sync,
        settings=settings,
        engine=engine,
        metrics=metrics,
        cases=CaseStore(engine, metrics.module("cases"), settings.sla_policy),
        directory=directory,
        webhooks=WebhookStore(engine),
        notifications=NotificationStore(engine),
        jobs=JobStore(engine),
        instances=InstanceStore(engine),
        deliveries=DeliveryStore(engine),
        caches=caches,
        reads=CachedReads(caches, directory),
        feed=feed,
        supervisor=supervisor,
    )


def build_limiter(settings: Settings, metrics: Metrics) -> RequestLimiter:
    """Tier policies from the settings over a memory or Redis-shared budget."""
    limits = {
        Tier.ANONYMOUS: (settings.limit_anonymous, settings.fail_anonymous),
        Tier.EXTERNAL: (settings.limit_external, settings.fail_external),
        Tier.INTERNAL: (settings.limit_internal, settings.fail_internal),
    }
    policies = {
        tier: TierPolicy(tier, parse_limit(limit), FailMode(fail))
        for tier, (limit, fail) in limits.items()
    }
    # One code path for both: budgets reserved in batches from sliding windows in
    # Redis (shared by all instances) or in this process's memory (decisions/0005).
    windows: WindowStore
    if settings.redis_url:
        from redis.asyncio import Redis

        from tragwerk.ratelimit.redis_windows import RedisWindows

        # Short timeouts: a request that must wait for a reservation waits at most
        # this long before its tier's fail mode applies.
        windows = RedisWindows(
            Redis.from_url(settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        )
    else:
        windows = LocalWindows()
    reporter = metrics.module("ratelimit")
    # Keys in the store: "<namespace>:token:<id>" or "<namespace>:ip:<address>".
    budget = SharedBudget(windows, prefix=f"{settings.redis_namespace}:", reporter=reporter)
    limiter = RequestLimiter(
        policies=policies,
        budget=budget,
        reporter=reporter,
        auth_failures=parse_limit(settings.limit_auth_failures),
        shared=settings.redis_url is not None,
    )
    if limiter.shared:
        # A failed background reservation counts like a failed request-path one.
        budget.on_store_error = limiter.store_failed
    return limiter


def build_app(
    settings: Settings,
    database_url: str,
    *,
    with_worker: bool = False,
    server_state: ServerState | None = None,
) -> FastAPI:
    """The API; with_worker also runs a job worker in this process (the embedded profile)."""
    services = build_services(settings, database_url)
    if server_state is not None:
        services.server_state = server_state
        services.metrics.registry.register(ServerStateCollector(server_state))
    services.recorder = InstanceRecorder(
        services.instances,
        role="up" if with_worker else "api",
        version=tragwerk.__version__,
        states=services.instance_states,
        interval=settings.instance_heartbeat_seconds,
        address=f"{settings.host}:{settings.port}",
    )
    if settings.alert_webhook_url or settings.alert_emails:
        alerting = build_alerting(services)
        services.tasks["alerting"] = alerting.run
        services.alerts_firing = alerting.book.firing
    if with_worker:
        from tragwerk.jobs.worker import EmbeddedWorker

        services.background["worker"] = EmbeddedWorker(
            settings, database_url, services.engine, services.metrics
        )
    return create_app(services)


def build_alerting(services: Services) -> SelfAlerting:
    """Alerts without Prometheus, to TRAGWERK_ALERT_WEBHOOK_URL and TRAGWERK_ALERT_EMAILS."""
    settings = services.settings
    notifier = Notifier(
        services.metrics.module("alerting"),
        webhook_url=settings.alert_webhook_url,
        emails=settings.alert_emails,
        smtp_url=settings.smtp_url,
        mail_from=settings.mail_from,
        external_url=f"http://{settings.host}:{settings.port}",
    )
    stores: list[Claims] = [DatabaseClaims(services.engine)]
    if settings.redis_url:
        from redis.asyncio import Redis

        redis = Redis.from_url(settings.redis_url, socket_timeout=1, socket_connect_timeout=1)
        stores.append(RedisClaims(redis, settings.redis_namespace))
        services.stoppers.append(redis.aclose)
    services.stoppers.append(notifier.close)
    claims = FallbackClaims(*stores)
    alerting = SelfAlerting(services, notifier, claims)
    claims.set_leader(alerting.is_leader)
    return alerting


def app_from_env(*, with_worker: bool = False) -> FastAPI:
    """Factory each API worker process calls (tragwerk.api.serving): one app per process."""
    import structlog

    from tragwerk.monitoring.logging import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    if settings.database_url is None:
        raise RuntimeError("set TRAGWERK_DATABASE_URL to serve a shared database")
    state = ServerState.from_env()
    if state is not None:
        started = state.record_start()
        log = structlog.get_logger("tragwerk.serving")
        if started > state.workers():
            # Only a respawn starts more processes than the server has workers.
            log.warning("api worker process respawned", start=started, pid=os.getpid())
        else:
            log.info("api worker process started", start=started, pid=os.getpid())
    return build_app(settings, settings.database_url, with_worker=with_worker, server_state=state)


def app_with_worker_from_env() -> FastAPI:
    """Factory for `tragwerk up`: the API and, in the same (single) process, a job worker."""
    return app_from_env(with_worker=True)

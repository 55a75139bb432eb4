"""One frozen Settings object, read from the environment once per entrypoint."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from tragwerk.domain.cases import SlaPolicy
from tragwerk.domain.queue_scaling import DEFAULT_BUDGETS, parse_budgets
from tragwerk.domain.rates import rate_problem

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class SettingsError(ValueError):
    """An environment variable holds a value tragwerk cannot use."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not value >= minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {raw}")
    return value


def _check_alerting(settings: Settings) -> None:
    url = settings.alert_webhook_url
    if url is not None and not url.startswith(("http://", "https://")):
        raise SettingsError("TRAGWERK_ALERT_WEBHOOK_URL must start with http:// or https://")
    if settings.alert_emails and settings.smtp_url is None:
        raise SettingsError("TRAGWERK_ALERT_EMAILS needs TRAGWERK_SMTP_URL to send them")
    for address in settings.alert_emails:
        if address.count("@") != 1 or any(c.isspace() or c in '<>"' for c in address):
            raise SettingsError(f"TRAGWERK_ALERT_EMAILS: {address!r} is not an address")


def _networks(env: Mapping[str, str], name: str) -> tuple[IPNetwork, ...]:
    """Comma-separated addresses or CIDR blocks; an address stands for itself alone."""
    networks = []
    for item in (env.get(name) or "").split(","):
        if item.strip():
            try:
                networks.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise SettingsError(
                    f"{name} must list addresses or CIDR blocks, got {item.strip()!r}"
                ) from None
    return tuple(networks)


def _switch(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in {"on", "true", "1", "yes"}:
        return True
    if raw in {"off", "false", "0", "no"}:
        return False
    raise SettingsError(f"{name} must be 'on' or 'off', got {raw!r}")


@dataclass(frozen=True)
class Settings:
    """Every setting tragwerk reads. Documented in docs/configuration.md."""

    # None means: start the embedded PostgreSQL in data_dir (the zero-set-up profile).
    database_url: str | None = None
    data_dir: Path = Path("var")
    host: str = "127.0.0.1"
    port: int = 8000
    # A fixed pool: overflow connections are closed on return and reopened at the next
    # peak, and that churn cost 30 % throughput at 32 connections (docs/performance.md).
    db_pool_size: int = 20
    db_max_overflow: int = 0
    max_body_bytes: int = 1_048_576
    # Serving (tragwerk.api.serving, on granian). The request line and header fields
    # together (431 past them; granian's buffer, at least 8 KiB); more than 100 header
    # fields are refused with 431 by the server itself, a limit it does not expose.
    max_head_bytes: int = 16_384
    header_read_timeout_seconds: float = 10.0
    # Requests one API worker process takes on at once; more wait in the kernel's
    # accept queue. Above max_in_flight, so that the lanes decide who waits first.
    backpressure: int = 1024
    shutdown_grace_seconds: float = 30.0
    # After SIGTERM, readiness fails this long before the process stops accepting,
    # so that a gateway's health checks take it out of rotation first.
    drain_seconds: float = 0.0
    # Peers whose X-Forwarded-For (or Forwarded) header names the client; none: the
    # peer itself is the client, whatever such headers say.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    forwarded_header: str = "x-forwarded-for"
    page_size_default: int = 50
    page_size_max: int = 200
    sla_policy: SlaPolicy = field(default_factory=SlaPolicy)
    log_level: str = "info"
    cache_enabled: bool = True
    cache_ttl_seconds: float = 300.0
    # None: rate-limit budgets in this process's memory (the embedded profile).
    redis_url: str | None = None
    redis_namespace: str = "tragwerk"
    rate_limit_enabled: bool = True
    limit_anonymous: str = "120/minute"
    limit_external: str = "1200/minute"
    limit_internal: str = "12000/minute"
    limit_auth_failures: str = "30/minute"
    fail_anonymous: str = "local"
    fail_external: str = "local"
    fail_internal: str = "open"
    # Requests served at once per process before the rest queue by lane (0: no bound).
    max_in_flight: int = 100
    # Asynchronous processing (tragwerk.jobs). No SMTP URL: no emails are queued.
    smtp_url: str | None = None
    mail_from: str = "tragwerk@localhost"
    smtp_timeout_seconds: float = 10.0
    webhook_allow_hosts: tuple[str, ...] = ()
    webhook_connect_timeout_seconds: float = 5.0
    webhook_read_timeout_seconds: float = 10.0
    breaker_threshold: int = 5
    breaker_open_seconds: float = 30.0
    job_max_attempts: int = 12
    job_retry_base_seconds: float = 2.0
    job_retry_cap_seconds: float = 900.0
    job_heartbeat_timeout_seconds: float = 30.0
    job_log_retention_hours: float = 72.0
    worker_concurrency: int = 50
    # Jobs claimed per statement; 0: min(100, concurrency).
    worker_batch: int = 0
    # The worker's health and metrics port; 0: one the system picks; None: none.
    worker_port: int | None = 8001
    worker_grace_seconds: float = 20.0
    sla_scan_seconds: float = 30.0
    sla_at_risk_minutes: float = 60.0
    sla_lookback_hours: float = 24.0
    # Monitoring and recovery (tragwerk.monitoring.supervisor): restarts of a crashed
    # background task wait restart_initial * 2^n seconds, capped, with jitter; this
    # many crashes within crash_loop_seconds make it a crash loop.
    restart_initial_seconds: float = 0.5
    restart_cap_seconds: float = 30.0
    crash_loop_crashes: int = 5
    crash_loop_seconds: float = 300.0
    # `tragwerk worker --autoscale` (tragwerk.scaling.autoscale): per priority class, how
    # long its oldest due job may wait before one more worker process starts; how often
    # the queue is read; how long it must have had nothing due before one retires.
    queue_budgets: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_BUDGETS))
    autoscale_interval_seconds: float = 5.0
    autoscale_cooldown_seconds: float = 60.0
    # Every process records itself (GET /v1/admin/instances) this often; three missed
    # heartbeats show it as lost.
    instance_heartbeat_seconds: float = 10.0
    # Workers compare the last hour of case history with the queue and the delivery
    # log this often (tragwerk reconcile); one of them at a time.
    reconcile_seconds: float = 300.0
    # Alerts without Prometheus (tragwerk.api.self_alerting): off unless a webhook URL
    # or email addresses are set.
    alert_webhook_url: str | None = None
    alert_emails: tuple[str, ...] = ()
    alert_evaluate_seconds: float = 15.0
    alert_repeat_seconds: float = 14400.0  # warnings: every 4 hours while they fire
    alert_repeat_critical_seconds: float = 3600.0
    alert_for_scale: float = 1.0  # multiplies every condition's `for` (tests, demos)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        try:
            sla_policy = SlaPolicy.parse(env.get("TRAGWERK_SLA_HOURS", ""))
        except ValueError as exc:
            raise SettingsError(f"TRAGWERK_SLA_HOURS: {exc}") from None
        try:
            queue_budgets = parse_budgets(env.get("TRAGWERK_QUEUE_BUDGETS", ""))
        except ValueError as exc:
            raise SettingsError(f"TRAGWERK_QUEUE_BUDGETS: {exc}") from None
        settings = cls(
            database_url=env.get("TRAGWERK_DATABASE_URL") or None,
            data_dir=Path(env.get("TRAGWERK_DATA_DIR") or "var"),
            host=env.get("TRAGWERK_HOST") or "127.0.0.1",
            port=_int(env, "TRAGWERK_PORT", 8000, minimum=0),
            db_pool_size=_int(env, "TRAGWERK_DB_POOL_SIZE", 20),
            db_max_overflow=_int(env, "TRAGWERK_DB_MAX_OVERFLOW", 0, minimum=0),
            max_body_bytes=_int(env, "TRAGWERK_MAX_BODY_BYTES", 1_048_576, minimum=64),
            max_head_bytes=_int(env, "TRAGWERK_MAX_HEAD_BYTES", 16_384, minimum=8192),
            header_read_timeout_seconds=_float(
                env, "TRAGWERK_HEADER_READ_TIMEOUT_SECONDS", 10.0, 0.001
            ),
            backpressure=_int(env, "TRAGWERK_BACKPRESSURE", 1024),
            shutdown_grace_seconds=_float(env, "TRAGWERK_SHUTDOWN_GRACE_SECONDS", 30.0, 1.0),
            drain_seconds=_float(env, "TRAGWERK_DRAIN_SECONDS", 0.0),
            trusted_proxies=_networks(env, "TRAGWERK_TRUSTED_PROXIES"),
            forwarded_header=(env.get("TRAGWERK_FORWARDED_HEADER") or "x-forwarded-for").lower(),
            page_size_default=_int(env, "TRAGWERK_PAGE_SIZE_DEFAULT", 50),
            page_size_max=_int(env, "TRAGWERK_PAGE_SIZE_MAX", 200),
            sla_policy=sla_policy,
            log_level=(env.get("TRAGWERK_LOG_LEVEL") or "info").lower(),
            cache_enabled=_switch(env, "TRAGWERK_CACHE", default=True),
            cache_ttl_seconds=float(_int(env, "TRAGWERK_CACHE_TTL_SECONDS", 300)),
            redis_url=env.get("TRAGWERK_REDIS_URL") or None,
            redis_namespace=env.get("TRAGWERK_REDIS_NAMESPACE") or "tragwerk",
            rate_limit_enabled=_switch(env, "TRAGWERK_RATE_LIMIT", default=True),
            limit_anonymous=env.get("TRAGWERK_LIMIT_ANONYMOUS") or "120/minute",
            limit_external=env.get("TRAGWERK_LIMIT_EXTERNAL") or "1200/minute",
            limit_internal=env.get("TRAGWERK_LIMIT_INTERNAL") or "12000/minute",
            limit_auth_failures=env.get("TRAGWERK_LIMIT_AUTH_FAILURES") or "30/minute",
            fail_anonymous=(env.get("TRAGWERK_LIMIT_FAIL_ANONYMOUS") or "local").lower(),
            fail_external=(env.get("TRAGWERK_LIMIT_FAIL_EXTERNAL") or "local").lower(),
            fail_internal=(env.get("TRAGWERK_LIMIT_FAIL_INTERNAL") or "open").lower(),
            max_in_flight=_int(env, "TRAGWERK_MAX_IN_FLIGHT", 100, minimum=0),
            smtp_url=env.get("TRAGWERK_SMTP_URL") or None,
            mail_from=env.get("TRAGWERK_MAIL_FROM") or "tragwerk@localhost",
            smtp_timeout_seconds=_float(env, "TRAGWERK_SMTP_TIMEOUT_SECONDS", 10.0, 0.1),
            webhook_allow_hosts=tuple(
                h.strip().lower()
                for h in (env.get("TRAGWERK_WEBHOOK_ALLOW_HOSTS") or "").split(",")
                if h.strip()
            ),
            webhook_connect_timeout_seconds=_float(
                env, "TRAGWERK_WEBHOOK_CONNECT_TIMEOUT_SECONDS", 5.0, 0.1
            ),
            webhook_read_timeout_seconds=_float(
                env, "TRAGWERK_WEBHOOK_READ_TIMEOUT_SECONDS", 10.0, 0.1
            ),
            breaker_threshold=_int(env, "TRAGWERK_BREAKER_THRESHOLD", 5),
            breaker_open_seconds=_float(env, "TRAGWERK_BREAKER_OPEN_SECONDS", 30.0, 0.1),
            job_max_attempts=_int(env, "TRAGWERK_JOB_MAX_ATTEMPTS", 12),
            job_retry_base_seconds=_float(env, "TRAGWERK_JOB_RETRY_BASE_SECONDS", 2.0, 0.01),
            job_retry_cap_seconds=_float(env, "TRAGWERK_JOB_RETRY_CAP_SECONDS", 900.0, 0.01),
            job_heartbeat_timeout_seconds=_float(
                env, "TRAGWERK_JOB_HEARTBEAT_TIMEOUT_SECONDS", 30.0, 1.0
            ),
            job_log_retention_hours=_float(env, "TRAGWERK_JOB_LOG_RETENTION_HOURS", 72.0, 0.01),
            worker_concurrency=_int(env, "TRAGWERK_WORKER_CONCURRENCY", 50, minimum=2),
            worker_batch=_int(env, "TRAGWERK_WORKER_BATCH", 0, minimum=0),
            worker_port=(
                None
                if (env.get("TRAGWERK_WORKER_PORT") or "").strip().lower() == "off"
                else _int(env, "TRAGWERK_WORKER_PORT", 8001, minimum=0)
            ),
            worker_grace_seconds=_float(env, "TRAGWERK_WORKER_GRACE_SECONDS", 20.0),
            sla_scan_seconds=_float(env, "TRAGWERK_SLA_SCAN_SECONDS", 30.0, 0.1),
            sla_at_risk_minutes=_float(env, "TRAGWERK_SLA_AT_RISK_MINUTES", 60.0),
            sla_lookback_hours=_float(env, "TRAGWERK_SLA_LOOKBACK_HOURS", 24.0, 0.01),
            restart_initial_seconds=_float(env, "TRAGWERK_RESTART_INITIAL_SECONDS", 0.5, 0.01),
            restart_cap_seconds=_float(env, "TRAGWERK_RESTART_CAP_SECONDS", 30.0, 0.01),
            crash_loop_crashes=_int(env, "TRAGWERK_CRASH_LOOP_CRASHES", 5, minimum=2),
            crash_loop_seconds=_float(env, "TRAGWERK_CRASH_LOOP_SECONDS", 300.0, 1.0),
            queue_budgets=queue_budgets,
            autoscale_interval_seconds=_float(env, "TRAGWERK_AUTOSCALE_INTERVAL_SECONDS", 5.0, 0.1),
            autoscale_cooldown_seconds=_float(
                env, "TRAGWERK_AUTOSCALE_COOLDOWN_SECONDS", 60.0, 0.0
            ),
            instance_heartbeat_seconds=_float(
                env, "TRAGWERK_INSTANCE_HEARTBEAT_SECONDS", 10.0, 0.1
            ),
            reconcile_seconds=_float(env, "TRAGWERK_RECONCILE_SECONDS", 300.0, 1.0),
            alert_webhook_url=env.get("TRAGWERK_ALERT_WEBHOOK_URL") or None,
            alert_emails=tuple(
                a.strip() for a in (env.get("TRAGWERK_ALERT_EMAILS") or "").split(",") if a.strip()
            ),
            alert_evaluate_seconds=_float(env, "TRAGWERK_ALERT_EVALUATE_SECONDS", 15.0, 0.1),
            alert_repeat_seconds=_float(env, "TRAGWERK_ALERT_REPEAT_SECONDS", 14400.0, 1.0),
            alert_repeat_critical_seconds=_float(
                env, "TRAGWERK_ALERT_REPEAT_CRITICAL_SECONDS", 3600.0, 1.0
            ),
            alert_for_scale=_float(env, "TRAGWERK_ALERT_FOR_SCALE", 1.0, 0.0),
        )
        for name in ("limit_anonymous", "limit_external", "limit_internal", "limit_auth_failures"):
            problem = rate_problem(getattr(settings, name))
            if problem is not None:
                raise SettingsError(f"TRAGWERK_{name.upper()}: {problem}")
        for name in ("fail_anonymous", "fail_external", "fail_internal"):
            if getattr(settings, name) not in {"open", "local", "closed"}:
                variable = "TRAGWERK_LIMIT_" + name.upper()
                raise SettingsError(f"{variable} must be open, local or closed")
        if settings.smtp_url is not None and not settings.smtp_url.startswith(
            ("smtp://", "smtps://")
        ):
            raise SettingsError("TRAGWERK_SMTP_URL must start with smtp:// or smtps://")
        _check_alerting(settings)
        if settings.forwarded_header not in {"x-forwarded-for", "forwarded"}:
            raise SettingsError("TRAGWERK_FORWARDED_HEADER must be x-forwarded-for or forwarded")
        if settings.header_read_timeout_seconds > 60:
            raise SettingsError("TRAGWERK_HEADER_READ_TIMEOUT_SECONDS must be at most 60")
        if settings.page_size_default > settings.page_size_max:
            raise SettingsError("TRAGWERK_PAGE_SIZE_DEFAULT must not exceed TRAGWERK_PAGE_SIZE_MAX")
        return settings

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

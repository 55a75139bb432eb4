"""One frozen Settings object, read from the environment once per entrypoint."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from tragwerk.domain.cases import SlaPolicy


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
    page_size_default: int = 50
    page_size_max: int = 200
    sla_policy: SlaPolicy = field(default_factory=SlaPolicy)
    log_level: str = "info"
    cache_enabled: bool = True
    cache_ttl_seconds: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        try:
            sla_policy = SlaPolicy.parse(env.get("TRAGWERK_SLA_HOURS", ""))
        except ValueError as exc:
            raise SettingsError(f"TRAGWERK_SLA_HOURS: {exc}") from None
        settings = cls(
            database_url=env.get("TRAGWERK_DATABASE_URL") or None,
            data_dir=Path(env.get("TRAGWERK_DATA_DIR") or "var"),
            host=env.get("TRAGWERK_HOST") or "127.0.0.1",
            port=_int(env, "TRAGWERK_PORT", 8000, minimum=0),
            db_pool_size=_int(env, "TRAGWERK_DB_POOL_SIZE", 20),
            db_max_overflow=_int(env, "TRAGWERK_DB_MAX_OVERFLOW", 0, minimum=0),
            max_body_bytes=_int(env, "TRAGWERK_MAX_BODY_BYTES", 1_048_576, minimum=64),
            page_size_default=_int(env, "TRAGWERK_PAGE_SIZE_DEFAULT", 50),
            page_size_max=_int(env, "TRAGWERK_PAGE_SIZE_MAX", 200),
            sla_policy=sla_policy,
            log_level=(env.get("TRAGWERK_LOG_LEVEL") or "info").lower(),
            cache_enabled=_switch(env, "TRAGWERK_CACHE", default=True),
            cache_ttl_seconds=float(_int(env, "TRAGWERK_CACHE_TTL_SECONDS", 300)),
        )
        if settings.page_size_default > settings.page_size_max:
            raise SettingsError("TRAGWERK_PAGE_SIZE_DEFAULT must not exceed TRAGWERK_PAGE_SIZE_MAX")
        return settings

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

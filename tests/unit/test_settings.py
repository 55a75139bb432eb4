from __future__ import annotations

from pathlib import Path

import pytest

from tragwerk.domain.cases import Priority
from tragwerk.settings import Settings, SettingsError


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.database_url is None  # embedded profile
    assert settings.data_dir == Path("var")
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.max_body_bytes == 1_048_576


def test_reads_every_variable() -> None:
    settings = Settings.from_env(
        {
            "TRAGWERK_DATABASE_URL": "postgresql://db/x",
            "TRAGWERK_DATA_DIR": "/srv/tw",
            "TRAGWERK_PORT": "9000",
            "TRAGWERK_MAX_BODY_BYTES": "4096",
            "TRAGWERK_PAGE_SIZE_MAX": "100",
            "TRAGWERK_SLA_HOURS": "critical=1",
            "TRAGWERK_DB_POOL_SIZE": "5",
        }
    )
    assert settings.database_url == "postgresql://db/x"
    assert settings.data_dir == Path("/srv/tw")
    assert settings.port == 9000
    assert settings.max_body_bytes == 4096
    assert settings.page_size_max == 100
    assert settings.sla_policy.hours[Priority.CRITICAL] == 1
    assert settings.db_pool_size == 5


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRAGWERK_PORT": "http"}, "TRAGWERK_PORT must be an integer"),
        ({"TRAGWERK_DB_POOL_SIZE": "0"}, "at least 1"),
        ({"TRAGWERK_SLA_HOURS": "soon=1"}, "TRAGWERK_SLA_HOURS"),
        ({"TRAGWERK_PAGE_SIZE_DEFAULT": "500"}, "must not exceed"),
        ({"TRAGWERK_TRUSTED_PROXIES": "10.0.0.0/8, gateway"}, "'gateway'"),
        ({"TRAGWERK_FORWARDED_HEADER": "x-real-ip"}, "x-forwarded-for or forwarded"),
        ({"TRAGWERK_MAX_HEAD_BYTES": "4096"}, "at least 8192"),
        ({"TRAGWERK_HEADER_READ_TIMEOUT_SECONDS": "120"}, "at most 60"),
    ],
)
def test_bad_values_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_serving_settings() -> None:
    settings = Settings.from_env(
        {
            "TRAGWERK_TRUSTED_PROXIES": "10.1.0.0/16, 192.0.2.7,2001:db8::/32",
            "TRAGWERK_FORWARDED_HEADER": "Forwarded",
            "TRAGWERK_HEADER_READ_TIMEOUT_SECONDS": "2.5",
            "TRAGWERK_BACKPRESSURE": "300",
            "TRAGWERK_DRAIN_SECONDS": "4",
        }
    )
    assert [str(n) for n in settings.trusted_proxies] == [
        "10.1.0.0/16",
        "192.0.2.7/32",
        "2001:db8::/32",
    ]
    assert settings.forwarded_header == "forwarded"
    assert settings.header_read_timeout_seconds == 2.5
    assert settings.backpressure == 300
    assert settings.drain_seconds == 4
    assert Settings.from_env({}).trusted_proxies == ()  # nobody is trusted by default

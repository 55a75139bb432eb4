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
    ],
)
def test_bad_values_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)

"""Two API processes on one PostgreSQL: a change by any path reaches both caches."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.acceptance.test_up import _interrupt, _start, _wait_ready
from tests.conftest import SERVICE_PG_ADMIN_URL, connect_raw, create_database, drop_database
from tests.services import SERVICE_PG_HOST, SERVICE_PG_PORT, free_port, require_service

BOUND_SECONDS = 1.0


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str], str]]:
    """(database url, [base url of instance A, B], admin token)."""
    require_service("PostgreSQL", SERVICE_PG_HOST, SERVICE_PG_PORT)
    url = asyncio.run(create_database(SERVICE_PG_ADMIN_URL, prefix="tragwerk_two"))
    tmp = tmp_path_factory.mktemp("two")
    env = {"TRAGWERK_DATABASE_URL": url, "TRAGWERK_DATA_DIR": str(tmp / "var")}
    procs = []
    try:
        first_port = free_port()
        first = _start(tmp, "up", "--port", str(first_port), env=env)  # migrates, makes the admin
        procs.append(first)
        _wait_ready(first, first_port)
        second_port = free_port()
        second = _start(tmp, "api", "--port", str(second_port), env=env)
        procs.append(second)
        _wait_ready(second, second_port)
        token = (tmp / "var" / "admin.token").read_text().strip()
        yield url, [f"http://127.0.0.1:{first_port}", f"http://127.0.0.1:{second_port}"], token
    finally:
        for proc in procs:
            if proc.poll() is None:
                _interrupt(proc, signal.SIGTERM)
        asyncio.run(drop_database(SERVICE_PG_ADMIN_URL, url))


def test_raw_sql_change_reaches_both_instances(instances: tuple[str, list[str], str]) -> None:
    url, bases, token = instances
    headers = {"Authorization": f"Bearer {token}"}
    loc = httpx.post(
        f"{bases[0]}/v1/locations",
        headers=headers,
        json={"name": "Before", "country_code": "DE", "time_zone": "Europe/Berlin"},
    ).json()["id"]
    for base in bases:  # both have it cached now
        assert httpx.get(f"{base}/v1/locations/{loc}", headers=headers).json()["name"] == "Before"

    async def update() -> float:
        conn = await connect_raw(url)
        try:
            await conn.execute("UPDATE locations SET name = 'After' WHERE id = $1", loc)
        finally:
            await conn.close()
        return time.monotonic()

    committed = asyncio.run(update())
    seen: dict[str, float] = {}
    with httpx.Client(headers=headers) as client:
        while len(seen) < len(bases) and time.monotonic() - committed < BOUND_SECONDS:
            for base in bases:
                if (
                    base not in seen
                    and client.get(f"{base}/v1/locations/{loc}").json()["name"] == "After"
                ):
                    seen[base] = time.monotonic() - committed
    assert len(seen) == len(bases), f"only {sorted(seen)} saw the change within {BOUND_SECONDS} s"
    print("converged after (ms):", {b: round(s * 1000, 1) for b, s in seen.items()})


def test_token_revoked_through_one_instance_is_refused_by_the_other(
    instances: tuple[str, list[str], str],
) -> None:
    _url, (first, second), token = instances
    headers = {"Authorization": f"Bearer {token}"}
    created = httpx.post(f"{first}/v1/tokens", headers=headers, json={"name": "short-lived"})
    secret = created.json()["token"]
    theirs = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(f"{second}/v1/roles", headers=theirs).status_code == 200  # cached on B
    revoked = httpx.delete(f"{first}/v1/tokens/{created.json()['id']}", headers=headers)
    assert revoked.status_code == 200
    assert httpx.get(f"{first}/v1/roles", headers=theirs).status_code == 401  # at once on A
    start = time.monotonic()
    while httpx.get(f"{second}/v1/roles", headers=theirs).status_code != 401:
        assert time.monotonic() - start < BOUND_SECONDS, "instance B still accepts the token"
    print(f"B refused the revoked token after {(time.monotonic() - start) * 1000:.1f} ms")

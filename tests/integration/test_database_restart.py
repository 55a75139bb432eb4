"""Recovery after a PostgreSQL restart: requests get fresh connections, not 500s.

The database is the test's own (tests.private_postgres), restarted like a crash
(`pg_ctl stop -m immediate`, then started again) under a running API whose pool is
full of connections that the restart killed.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import Api, make_api, migrated_database
from tests.private_postgres import PrivatePostgres, private_postgres
from tests.services import free_port, require_program


@pytest.fixture
async def restartable() -> AsyncIterator[tuple[Api, PrivatePostgres, dict[str, Any]]]:
    require_program("runuser", "it comes with util-linux")
    with private_postgres("127.0.0.1", free_port(), durable=True) as server:
        async with migrated_database(server.url) as url:
            api, app = await make_api(url)
            async with app.router.lifespan_context(app):
                location = await api.location()
                case = await api.case(location)
                agent = await api.user("agent")
                token = await api.token_for(agent["id"])
                # Every pooled connection used once, so that all of them die in the restart.
                await asyncio.gather(*(api.get("/v1/cases") for _ in range(40)))
                yield api, server, {"location": location, "case": case, "token": token}
            await api.client.aclose()


def reads(made: dict[str, Any]) -> list[tuple[str, str | None]]:
    case_id = made["case"]["id"]
    return [
        ("/v1/cases", None),
        (f"/v1/cases/{case_id}", None),
        ("/v1/users/me", made["token"]),
        ("/v1/locations", None),
        ("/v1/roles", made["token"]),
        (f"/v1/cases/{case_id}/history", None),
    ]


async def test_reads_and_writes_after_a_database_restart_get_fresh_connections(
    restartable: tuple[Api, PrivatePostgres, dict[str, Any]],
) -> None:
    api, server, made = restartable
    await asyncio.to_thread(server.restart, "immediate")

    statuses: collections.Counter[tuple[str, int]] = collections.Counter()
    # Concurrent first: as many requests at once as the pool has connections.
    batch = [api.get(path, token) for path, token in reads(made) * 5]
    for path_token, response in zip(reads(made) * 5, await asyncio.gather(*batch), strict=True):
        statuses[(path_token[0], response.status_code)] += 1
    created = await api.post(
        "/v1/cases", {"title": "After the restart", "location_id": made["location"]}
    )
    statuses[("POST /v1/cases", created.status_code)] += 1
    for path, token in reads(made):
        statuses[(path, (await api.get(path, token)).status_code)] += 1
    failed = {key: n for key, n in statuses.items() if key[1] >= 500}
    assert not failed, f"requests that failed after the restart: {failed}"
    assert created.status_code == 201, created.text
    ready = await api.client.get("/health/ready")
    assert ready.status_code == 200, ready.text


async def test_while_the_database_is_down_requests_get_503_and_recover_after(
    restartable: tuple[Api, PrivatePostgres, dict[str, Any]],
) -> None:
    api, server, made = restartable
    await asyncio.to_thread(server.stop, "immediate")
    try:
        case_id = made["case"]["id"]
        down = [
            await api.get(f"/v1/cases/{case_id}"),
            await api.get("/v1/users/me", made["token"]),
            await api.post("/v1/cases", {"title": "x", "location_id": made["location"]}),
        ]
        for response in down:
            assert response.status_code == 503, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["type"].endswith("/database-unavailable")
            assert response.headers["retry-after"] == "1"
        assert (await api.client.get("/health/ready")).status_code == 503
    finally:
        await asyncio.to_thread(server.start)
    after = await api.get(f"/v1/cases/{made['case']['id']}")
    assert after.status_code == 200, after.text
    assert (await api.get("/v1/cases")).status_code == 200

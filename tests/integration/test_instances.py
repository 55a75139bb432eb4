"""Instances record themselves: up while they beat, lost when they stop beating without
a clean stop, stopped after one; GET /v1/admin/instances lists them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import ADMIN_URL_OF, Api, make_api, migrated_database
from tragwerk.settings import Settings
from tragwerk.store.instances import InstanceRecorder

INTERVAL = 0.2


@pytest.fixture
async def fresh_api(database_url: str) -> AsyncIterator[Api]:
    async with migrated_database(ADMIN_URL_OF[database_url], "tragwerk_instances") as url:
        settings = Settings(database_url=url, instance_heartbeat_seconds=INTERVAL)
        api, app = await make_api(url, settings)
        async with app.router.lifespan_context(app):
            yield api
        await api.client.aclose()


def recorder(api: Api, role: str, modules: dict[str, Any]) -> InstanceRecorder:
    async def states() -> dict[str, Any]:
        return modules

    return InstanceRecorder(
        api.services.instances, role, "9.9.9", states, INTERVAL, address="10.0.0.5:8001"
    )


async def listed(api: Api) -> dict[str, dict[str, Any]]:
    r = await api.get("/v1/admin/instances")
    assert r.status_code == 200, r.text
    return {row["id"]: row for row in r.json()}


async def test_up_lost_and_stopped(fresh_api: Api) -> None:
    api = fresh_api
    alive = recorder(api, "api", {"database": "ok"})
    killed = recorder(api, "worker", {"queue": "ok", "running_jobs": 3})
    stopped = recorder(api, "worker", {"queue": "ok"})
    tasks = [asyncio.create_task(r.run()) for r in (alive, killed, stopped)]
    try:
        await asyncio.sleep(INTERVAL / 2)
        rows = await listed(api)
        first = rows[str(killed.id)]
        assert first["state"] == "up"
        assert first["role"] == "worker"
        assert first["version"] == "9.9.9"
        assert first["address"] == "10.0.0.5:8001"
        assert first["modules"] == {"queue": "ok", "running_jobs": 3}
        assert first["pid"] > 0
        assert first["host"]
        tasks[1].cancel()  # like SIGKILL: no clean stop
        tasks[2].cancel()
        await stopped.stopped()
        await asyncio.sleep(INTERVAL * 4)
        rows = await listed(api)
        assert rows[str(alive.id)]["state"] == "up"
        assert rows[str(killed.id)]["state"] == "lost"
        assert rows[str(killed.id)]["silent_seconds"] >= INTERVAL * 3
        assert rows[str(stopped.id)]["state"] == "stopped"
        assert rows[str(stopped.id)]["stopped_at"] is not None
        # Listed first: what runs, then what is gone.
        states = [row["state"] for row in (await api.get("/v1/admin/instances")).json()]
        assert states.index("stopped") > states.index("lost")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_beat_that_fails_is_retried_and_registers_again(fresh_api: Api) -> None:
    api = fresh_api
    one = recorder(api, "api", {"database": "ok"})
    await one.beat()
    async with api.services.engine.begin() as conn:
        await conn.exec_driver_sql("DELETE FROM instances")  # e.g. a restored database
    task = asyncio.create_task(one.run())
    try:
        await asyncio.sleep(INTERVAL * 2.5)
        assert str(one.id) in await listed(api)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

"""GET /v1/admin/overview: the state /ops shows, as one JSON document."""

from __future__ import annotations

from typing import Any

from tests.integration.test_jobs import (  # the same fixtures and helpers
    eventually,
    fresh_url,  # noqa: F401 - a fixture
    job_settings,
    setup,
    worker,
)
from tests.receivers import WebhookReceiver


async def test_the_overview_shows_held_jobs_queue_and_this_process(
    fresh_url: str,  # noqa: F811
) -> None:
    with WebhookReceiver(lambda _n: (410, {}, 0.0)) as receiver:
        settings = job_settings(fresh_url, None)
        async with setup(fresh_url, settings) as s:
            await s.subscribe(receiver.url(), ["case.created"])
            location = await s.api.location()
            await s.api.case(location)

            async def overview() -> dict[str, Any]:
                r = await s.api.get("/v1/admin/overview")
                assert r.status_code == 200, r.text
                return dict(r.json())

            waiting = await overview()
            assert waiting["queue"]["normal"]["queued"] == 1  # the case event, not run yet
            async with worker(settings, fresh_url):
                held = await eventually(
                    lambda: _when(overview(), lambda o: o["held"] == {"webhook": 1})
                )
            assert held["queue"] == {}
            assert held["orphaned"] == {}
            assert held["checks"]["database"] == "ok"
            assert held["alerts"] is None  # tragwerk's own alerting is off here
            assert held["cache"]["feed"] == "ok"
            assert set(held["rate_limits"]) == {"anonymous", "external", "internal"}
            assert held["rate_limits"]["external"]["allowed"] >= 3
            assert set(held["lanes"]) >= {"interactive"}
            agent = await s.api.user("agent")
            token = await s.api.token_for(agent["id"])
            assert (await s.api.get("/v1/admin/overview", token=token)).status_code == 403


async def _when(reading: Any, condition: Any) -> Any:
    value = await reading
    return value if condition(value) else None

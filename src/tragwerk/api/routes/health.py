"""/health/live, /health/ready and /metrics: never authenticated, never shed."""

from __future__ import annotations

import structlog
from fastapi import APIRouter
from starlette.responses import Response

from tragwerk.api.auth import Svc
from tragwerk.api.responses import JSON
from tragwerk.monitoring.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])
log = structlog.get_logger("tragwerk.health")


@router.get(
    "/health/live",
    summary="The process is running and heals itself (no background task is crash-looping)",
    responses={
        503: {
            "description": "A background task keeps crashing: restart the process",
            "content": {"application/json": {}},
        }
    },
)
async def live(svc: Svc) -> Response:
    looping = svc.supervisor.crash_looping
    if looping:
        # Restarting the task in place has not helped; a fresh process might.
        return JSON({"status": "failing", "crash_looping": looping}, status_code=503)
    return JSON({"status": "ok"})


@router.get(
    "/health/ready",
    summary="The process can serve: its database answered within the last second",
    responses={
        503: {
            "description": "Not ready (a failing check, or draining before a stop)",
            "content": {"application/json": {}},
        }
    },
)
async def ready(svc: Svc) -> Response:
    checks = {"database": await svc.readiness.database()}
    healthy = checks["database"] == "ok"
    svc.metrics.module_up.labels("store").set(1 if healthy else 0)
    if not healthy:
        log.warning("readiness check failed", check="database", error=checks["database"])
    # Reported, not failed on: without its feed the cache steps aside and every read
    # goes to the database, which is slower but still correct.
    checks["cache_feed"] = svc.cache_state()
    checks["rate_limit"] = svc.rate_limit_state()
    for name in svc.background:
        checks[name] = await svc.supervisor.describe(name)
    looping = svc.supervisor.crash_looping
    checks["tasks"] = f"crash-looping: {', '.join(looping)}" if looping else "ok"
    ok = checks["database"] == "ok" and not looping
    if svc.server_state is not None and svc.server_state.draining():
        # Stopping (SIGTERM): out of rotation first, while requests are still served.
        checks["server"] = "draining"
        ok = False
    return JSON(
        {"status": "ok" if ok else "failing", "checks": checks}, status_code=200 if ok else 503
    )


@router.get("/metrics", summary="Prometheus metrics of this process")
async def metrics(svc: Svc) -> Response:
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE)

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
    checks = await svc.checks()
    if checks["database"] != "ok":
        log.warning("readiness check failed", check="database", error=checks["database"])
    ok = checks["database"] == "ok" and checks["tasks"] == "ok"
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

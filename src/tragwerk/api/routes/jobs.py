"""/v1/admin/jobs: held jobs (dead letters) with their last error, requeueing them, and
orphaned jobs (claimed by a worker that died, waiting to be claimed again)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response

from tragwerk.api import schemas
from tragwerk.api.auth import Svc, require
from tragwerk.api.openapi import problems
from tragwerk.api.responses import JSON
from tragwerk.domain.directory import Permission, Principal
from tragwerk.domain.errors import NotFound

router = APIRouter(prefix="/v1/admin/jobs", tags=["administration"])

Operator = Annotated[Principal, Depends(require(Permission.JOBS_MANAGE))]


@router.get(
    "",
    response_model=list[schemas.HeldJob] | list[schemas.OrphanedJob],
    summary="Held jobs and their last error, or orphaned jobs and their dead worker",
)
async def list_jobs(
    svc: Svc,
    _who: Operator,
    state: Annotated[
        Literal["held", "orphaned"],
        Query(
            description="held: the last attempt failed; orphaned: claimed by a worker"
            " that has sent no heartbeat for TRAGWERK_JOB_HEARTBEAT_TIMEOUT_SECONDS"
        ),
    ] = "held",
    after: Annotated[int, Query(ge=0, description="list jobs with a larger id")] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Response:
    if state == "orphaned":
        timeout = timedelta(seconds=svc.settings.job_heartbeat_timeout_seconds)
        return JSON(await svc.jobs.orphaned(timeout, after, limit))
    return JSON(await svc.jobs.held(after, limit))


@router.post(
    "/requeue",
    response_model=schemas.Requeued,
    summary="Queue held jobs again, attempts reset",
    responses=problems(404, s404="None of the ids is a held job"),
)
async def requeue(body: schemas.RequeueJobs, svc: Svc, _who: Operator) -> Response:
    ids = None if body.all else list(dict.fromkeys(body.ids or []))
    requeued = await svc.jobs.requeue(ids)
    if ids and not requeued:
        raise NotFound(f"none of the jobs {ids} is held")
    return JSON({"requeued": requeued})

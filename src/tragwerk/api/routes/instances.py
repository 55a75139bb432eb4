"""/v1/admin/instances: every API and worker process, its state and its modules'."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.responses import Response

from tragwerk.api import schemas
from tragwerk.api.auth import Svc, require
from tragwerk.api.responses import JSON
from tragwerk.domain.directory import Permission, Principal

router = APIRouter(prefix="/v1/admin/instances", tags=["administration"])

# Operating the system (jobs, instances) is one permission: whoever requeues jobs
# needs to see the workers that run them.
Operator = Annotated[Principal, Depends(require(Permission.JOBS_MANAGE))]


@router.get(
    "",
    response_model=list[schemas.Instance],
    summary="Every recorded process: up, lost (heartbeat stopped) or stopped",
)
async def list_instances(svc: Svc, _who: Operator) -> Response:
    return JSON(await svc.instances.listing(svc.settings.instance_heartbeat_seconds))

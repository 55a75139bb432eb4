"""/v1/admin/limits: rate-limit tiers changed at run time, stored and audited."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from starlette.responses import Response

from tragwerk.api import schemas
from tragwerk.api.auth import Svc, require
from tragwerk.api.openapi import problems
from tragwerk.api.responses import JSON
from tragwerk.api.services import Services
from tragwerk.domain.directory import Permission, Principal
from tragwerk.domain.errors import Conflict, InvalidInput, NotFound
from tragwerk.ratelimit.policy import Tier, parse_limit

router = APIRouter(prefix="/v1/admin/limits", tags=["administration"])

Admin = Annotated[Principal, Depends(require(Permission.LIMITS_WRITE))]
TierName = Annotated[str, Path(pattern="^(anonymous|external|internal)$")]


async def _effective(svc: Services) -> list[dict[str, Any]]:
    limiter = svc.limiter
    if limiter is None or svc.limits is None:
        raise Conflict("rate limiting is off in this process (TRAGWERK_RATE_LIMIT=off)")
    overrides = {row["tier"]: row for row in await svc.limits.store.overrides()}
    result = []
    for tier in Tier:
        row = overrides.get(tier.value)
        default = limiter.defaults[tier]
        result.append(
            {
                "tier": tier.value,
                "rate": row["rate"] if row else str(default.limit),
                "fail_mode": row["fail_mode"] if row else default.fail_mode.value,
                "source": "override" if row else "setting",
                "updated_at": row["updated_at"] if row else None,
                "updated_by": row["updated_by"] if row else None,
                "updated_by_service_client": row["updated_by_service_client"] if row else None,
            }
        )
    return result


@router.get(
    "",
    response_model=list[schemas.TierLimit],
    summary="Limits in force, per tier",
    responses=problems(409, s409="Rate limiting is off in this process (TRAGWERK_RATE_LIMIT=off)"),
)
async def list_limits(svc: Svc, _who: Admin) -> Response:
    return JSON(await _effective(svc))


@router.put(
    "/{tier}",
    response_model=schemas.TierLimit,
    summary="Change a tier's limit",
    responses=problems(409, s409="Rate limiting is off in this process (TRAGWERK_RATE_LIMIT=off)"),
)
async def set_limit(tier: TierName, body: schemas.LimitChange, svc: Svc, who: Admin) -> Response:
    try:
        parse_limit(body.rate)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    current = {row["tier"]: row for row in await _effective(svc)}[tier]
    assert svc.limits is not None  # _effective refused otherwise
    await svc.limits.store.set(tier, body.rate, body.fail_mode or current["fail_mode"], _actor(who))
    # In force here at once; other instances follow the database's notification.
    await svc.limits.reload()
    return JSON({row["tier"]: row for row in await _effective(svc)}[tier])


@router.delete(
    "/{tier}",
    response_model=schemas.TierLimit,
    summary="Back to the setting",
    responses=problems(409, s409="Rate limiting is off in this process (TRAGWERK_RATE_LIMIT=off)"),
)
async def reset_limit(tier: TierName, svc: Svc, who: Admin) -> Response:
    await _effective(svc)
    assert svc.limits is not None
    if not await svc.limits.store.remove(tier, _actor(who)):
        raise NotFound(f"the {tier} tier has no override")
    await svc.limits.reload()
    return JSON({row["tier"]: row for row in await _effective(svc)}[tier])


@router.get(
    "/audit",
    response_model=list[schemas.LimitAudit],
    summary="Who changed what",
    responses=problems(409, s409="Rate limiting is off in this process (TRAGWERK_RATE_LIMIT=off)"),
)
async def limit_audit(
    svc: Svc, _who: Admin, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> Response:
    if svc.limits is None:
        raise Conflict("rate limiting is off in this process (TRAGWERK_RATE_LIMIT=off)")
    return JSON(await svc.limits.store.audit(limit))


def _actor(who: Principal) -> tuple[int | None, int | None]:
    return who.user_id, who.service_client_id

"""/v1/cases: list, create, read, update, status, assignees, history."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from starlette.responses import Response

from tragwerk.api import schemas
from tragwerk.api.auth import Svc, require
from tragwerk.api.openapi import problems
from tragwerk.api.responses import JSON
from tragwerk.api.routes.paging import (
    Cursor,
    Limit,
    PathId,
    etag,
    page,
    page_size,
    versioned,
    versioned_optional,
)
from tragwerk.domain.cases import Priority, Status
from tragwerk.domain.directory import Permission, Principal
from tragwerk.domain.errors import InvalidInput
from tragwerk.store.queries.cases import CaseFilter

router = APIRouter(prefix="/v1/cases", tags=["cases"])

Reader = Annotated[Principal, Depends(require(Permission.CASES_READ))]
Writer = Annotated[Principal, Depends(require(Permission.CASES_WRITE))]
IfMatch = Annotated[str | None, Header(description='The version you read, as "3"')]


def _case_response(case: dict[str, Any], status_code: int = 200) -> Response:
    headers = {"ETag": etag(case["version"])}
    if status_code == 201:
        headers["Location"] = f"/v1/cases/{case['id']}"
    return JSON(case, status_code=status_code, headers=headers)


@router.get("", response_model=schemas.CasePage, summary="List cases (keyset pagination)")
async def list_cases(
    svc: Svc,
    _who: Reader,
    status: Annotated[list[Status] | None, Query(max_length=5)] = None,
    priority: Annotated[list[Priority] | None, Query(max_length=4)] = None,
    location_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    assignee_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    sla_due_before: datetime | None = None,
    q: Annotated[
        str | None, Query(min_length=3, max_length=200, description="Text in the title")
    ] = None,
    sort: Annotated[str, Query(pattern="^(created|sla_due)$")] = "created",
    cursor: Cursor = None,
    limit: Limit = None,
) -> Response:
    if q is not None and not schemas.storable(q):
        raise InvalidInput("q contains NUL or unpaired surrogate characters")
    if sla_due_before is not None and sla_due_before.tzinfo is None:
        raise InvalidInput("sla_due_before needs a time zone, e.g. 2026-12-01T00:00:00Z")
    flt = CaseFilter(
        status=tuple(dict.fromkeys(status or ())),
        priority=tuple(dict.fromkeys(priority or ())),
        location_id=location_id,
        assignee_id=assignee_id,
        sla_due_before=sla_due_before,
        title_contains=q,
    )
    result = await svc.cases.list(flt, sort, cursor, page_size(svc, limit))
    return JSON(page(result.items, result.next_cursor))


@router.post("", status_code=201, response_model=schemas.Case, summary="Create a case")
async def create_case(body: schemas.CaseCreate, svc: Svc, who: Writer) -> Response:
    reporter = body.reporter_id if body.reporter_id is not None else who.user_id
    if reporter is None:
        raise InvalidInput("a service client must name the reporter_id")
    case = await svc.cases.create(
        title=body.title,
        description=body.description,
        priority=body.priority,
        location_id=body.location_id,
        reporter_id=reporter,
        assignee_ids=body.assignee_ids,
        principal=who,
    )
    return _case_response(case, 201)


@router.get("/{case_id}", response_model=schemas.Case, summary="Read one case")
async def get_case(case_id: PathId, svc: Svc, _who: Reader) -> Response:
    return _case_response(await svc.cases.get(case_id))


@router.patch(
    "/{case_id}",
    response_model=schemas.Case,
    summary="Change a case's fields",
    responses=problems(409, 412, 428),
)
async def update_case(
    case_id: PathId,
    body: schemas.CaseUpdate,
    svc: Svc,
    who: Writer,
    if_match: IfMatch = None,
) -> Response:
    fields = body.model_dump(exclude_unset=True, exclude={"version"})
    for name in ("title", "priority", "location_id"):
        if name in fields and fields[name] is None:
            raise InvalidInput(f"{name} cannot be null")
    if fields.get("description", "") is None:
        raise InvalidInput("description cannot be null; send an empty string")
    case = await versioned(
        lambda version: svc.cases.update(case_id, version, fields, who), body.version, if_match
    )
    return _case_response(case)


@router.post(
    "/{case_id}/status",
    response_model=schemas.Case,
    summary="Move a case's status",
    responses=problems(409, 412, 428),
)
async def change_status(
    case_id: PathId,
    body: schemas.StatusChange,
    svc: Svc,
    who: Writer,
    if_match: IfMatch = None,
) -> Response:
    case = await versioned(
        lambda version: svc.cases.change_status(case_id, version, body.status, who),
        body.version,
        if_match,
    )
    return _case_response(case)


@router.post(
    "/{case_id}/assignees",
    response_model=schemas.Case,
    summary="Assign users",
    responses=problems(409, 412),
)
async def add_assignees(
    case_id: PathId,
    body: schemas.AssigneesAdd,
    svc: Svc,
    who: Writer,
    if_match: IfMatch = None,
) -> Response:
    user_ids = list(dict.fromkeys(body.user_ids))
    case = await versioned_optional(
        lambda version: svc.cases.add_assignees(case_id, user_ids, version, who),
        body.version,
        if_match,
    )
    return _case_response(case)


@router.delete(
    "/{case_id}/assignees/{user_id}",
    response_model=schemas.Case,
    summary="Unassign a user",
    responses=problems(409, 412),
)
async def remove_assignee(
    case_id: PathId,
    user_id: PathId,
    svc: Svc,
    who: Writer,
    if_match: IfMatch = None,
) -> Response:
    case = await versioned_optional(
        lambda version: svc.cases.remove_assignee(case_id, user_id, version, who),
        None,
        if_match,
    )
    return _case_response(case)


@router.get("/{case_id}/history", response_model=schemas.HistoryPage, summary="A case's history")
async def case_history(
    case_id: PathId, svc: Svc, _who: Reader, cursor: Cursor = None, limit: Limit = None
) -> Response:
    result = await svc.cases.history(case_id, cursor, page_size(svc, limit))
    return JSON(page(result.items, result.next_cursor))

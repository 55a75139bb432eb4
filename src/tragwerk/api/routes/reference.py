"""/v1/countries, /v1/locations, /v1/roles: the reference data."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from starlette.responses import Response

from tragwerk.api import schemas
from tragwerk.api.auth import Svc, require
from tragwerk.api.responses import JSON
from tragwerk.api.routes.paging import PathId
from tragwerk.domain.directory import Permission, Principal

router = APIRouter(prefix="/v1", tags=["reference data"])

Reader = Annotated[Principal, Depends(require(Permission.REFERENCE_READ))]
Writer = Annotated[Principal, Depends(require(Permission.REFERENCE_WRITE))]
Admin = Annotated[Principal, Depends(require(Permission.USERS_WRITE))]


@router.get("/countries", response_model=list[schemas.Country], summary="ISO 3166 countries")
async def list_countries(svc: Svc, _who: Reader) -> Response:
    return JSON(await svc.directory.countries())


@router.get("/countries/{code}", response_model=schemas.Country, summary="One country")
async def get_country(
    code: Annotated[str, Path(min_length=2, max_length=2)], svc: Svc, _who: Reader
) -> Response:
    return JSON(await svc.directory.country(code))


@router.get("/locations", response_model=list[schemas.Location], summary="All locations")
async def list_locations(svc: Svc, _who: Reader) -> Response:
    return JSON(await svc.directory.locations())


@router.get("/locations/{location_id}", response_model=schemas.Location)
async def get_location(location_id: PathId, svc: Svc, _who: Reader) -> Response:
    return JSON(await svc.directory.location(location_id))


@router.post("/locations", status_code=201, response_model=schemas.Location)
async def create_location(body: schemas.LocationCreate, svc: Svc, _who: Writer) -> Response:
    row = await svc.directory.create_location(body.name, body.country_code, body.time_zone)
    return JSON(row, status_code=201, headers={"Location": f"/v1/locations/{row['id']}"})


@router.patch("/locations/{location_id}", response_model=schemas.Location)
async def update_location(
    location_id: PathId, body: schemas.LocationUpdate, svc: Svc, _who: Writer
) -> Response:
    fields = {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None}
    if not fields:
        return JSON(await svc.directory.location(location_id))
    return JSON(await svc.directory.update_location(location_id, fields))


@router.get("/roles", response_model=list[schemas.Role], summary="Roles and their permissions")
async def list_roles(svc: Svc, _who: Reader) -> Response:
    return JSON(await svc.directory.roles())


@router.post("/roles", status_code=201, response_model=schemas.Role)
async def create_role(body: schemas.RoleCreate, svc: Svc, _who: Admin) -> Response:
    return JSON(await svc.directory.create_role(body.name, body.permissions), status_code=201)


@router.put("/roles/{role_id}", response_model=schemas.Role, summary="Replace permissions")
async def update_role(
    role_id: Annotated[int, Path(ge=1, le=32767)], body: schemas.RoleUpdate, svc: Svc, _who: Admin
) -> Response:
    return JSON(await svc.directory.update_role(role_id, body.permissions))

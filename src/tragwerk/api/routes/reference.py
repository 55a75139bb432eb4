"""/v1/countries, /v1/locations, /v1/roles: the reference data."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from starlette.responses import Response

from tragwerk.api import schemas
from tragwerk.api.auth import Svc, require
from tragwerk.api.openapi import problems
from tragwerk.api.responses import JSON
from tragwerk.api.routes.paging import PathId
from tragwerk.api.services import Services
from tragwerk.domain.directory import Permission, Principal
from tragwerk.domain.errors import NotFound

router = APIRouter(prefix="/v1", tags=["reference data"])

Reader = Annotated[Principal, Depends(require(Permission.REFERENCE_READ))]
Writer = Annotated[Principal, Depends(require(Permission.REFERENCE_WRITE))]
Admin = Annotated[Principal, Depends(require(Permission.USERS_WRITE))]


async def _listing(svc: Services, table: str) -> Response:
    """The cached response bytes of a reference table (component 1)."""
    snapshot = await svc.reads.reference(table)
    return Response(snapshot.body, media_type="application/json")


async def _item(svc: Services, table: str, key: object, what: str) -> Response:
    row = (await svc.reads.reference(table)).by_key.get(key)
    if row is None:
        raise NotFound(f"{what} does not exist")
    return JSON(row)


@router.get("/countries", response_model=list[schemas.Country], summary="ISO 3166 countries")
async def list_countries(svc: Svc, _who: Reader) -> Response:
    return await _listing(svc, "countries")


@router.get("/countries/{code}", response_model=schemas.Country, summary="One country")
async def get_country(
    code: Annotated[str, Path(min_length=2, max_length=2)], svc: Svc, _who: Reader
) -> Response:
    return await _item(
        svc, "countries", code.upper(), f"country {code!r} (use an ISO 3166 alpha-2 code)"
    )


@router.get("/locations", response_model=list[schemas.Location], summary="All locations")
async def list_locations(svc: Svc, _who: Reader) -> Response:
    return await _listing(svc, "locations")


@router.get("/locations/{location_id}", response_model=schemas.Location)
async def get_location(location_id: PathId, svc: Svc, _who: Reader) -> Response:
    return await _item(svc, "locations", location_id, f"location {location_id}")


@router.post("/locations", status_code=201, response_model=schemas.Location)
async def create_location(body: schemas.LocationCreate, svc: Svc, _who: Writer) -> Response:
    row = await svc.directory.create_location(body.name, body.country_code, body.time_zone)
    # Read-your-writes on this instance; other instances learn it from the database.
    svc.caches.changed("locations", [row["id"]])
    return JSON(row, status_code=201, headers={"Location": f"/v1/locations/{row['id']}"})


@router.patch("/locations/{location_id}", response_model=schemas.Location)
async def update_location(
    location_id: PathId, body: schemas.LocationUpdate, svc: Svc, _who: Writer
) -> Response:
    fields = {k: v for k, v in body.model_dump(exclude_unset=True).items() if v is not None}
    if not fields:
        return await _item(svc, "locations", location_id, f"location {location_id}")
    row = await svc.directory.update_location(location_id, fields)
    svc.caches.changed("locations", [location_id])
    return JSON(row)


@router.get("/roles", response_model=list[schemas.Role], summary="Roles and their permissions")
async def list_roles(svc: Svc, _who: Reader) -> Response:
    return await _listing(svc, "roles")


@router.post("/roles", status_code=201, response_model=schemas.Role, responses=problems(409))
async def create_role(body: schemas.RoleCreate, svc: Svc, _who: Admin) -> Response:
    row = await svc.directory.create_role(body.name, body.permissions)
    svc.caches.changed("roles", [row["id"]])
    return JSON(row, status_code=201)


@router.put(
    "/roles/{role_id}",
    response_model=schemas.Role,
    summary="Replace permissions",
    responses=problems(409, s409="The admin role keeps every permission"),
)
async def update_role(
    role_id: Annotated[int, Path(ge=1, le=32767)], body: schemas.RoleUpdate, svc: Svc, _who: Admin
) -> Response:
    row = await svc.directory.update_role(role_id, body.permissions)
    svc.caches.changed("roles", [role_id])
    return JSON(row)

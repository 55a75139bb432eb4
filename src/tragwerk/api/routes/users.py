"""/v1/users, /v1/service-clients and /v1/tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response

from tragwerk.api import schemas
from tragwerk.api.auth import Svc, principal, require
from tragwerk.api.openapi import problems
from tragwerk.api.responses import JSON
from tragwerk.api.routes.paging import Cursor, Limit, PathId, page, page_size
from tragwerk.domain.directory import Permission, Principal
from tragwerk.domain.errors import Forbidden, InvalidInput, NotFound

router = APIRouter(prefix="/v1", tags=["users and tokens"])

Reader = Annotated[Principal, Depends(require(Permission.USERS_READ))]
Writer = Annotated[Principal, Depends(require(Permission.USERS_WRITE))]
TokenAdmin = Annotated[Principal, Depends(require(Permission.TOKENS_WRITE))]
Anyone = Annotated[Principal, Depends(principal)]


@router.get("/users", response_model=schemas.UserPage, summary="List users by id")
async def list_users(
    svc: Svc,
    _who: Reader,
    role_id: Annotated[int | None, Query(ge=1, le=32767)] = None,
    active: bool | None = None,
    cursor: Cursor = None,
    limit: Limit = None,
) -> Response:
    result = await svc.directory.users(
        after=cursor, limit=page_size(svc, limit), role_id=role_id, active=active
    )
    return JSON(page(result.items, result.next_cursor))


@router.get(
    "/users/me",
    response_model=schemas.User,
    summary="The calling user",
    responses=problems(404, s404="The token belongs to a service client, not a user"),
)
async def me(svc: Svc, who: Anyone) -> Response:
    if who.user_id is None:
        raise NotFound("this token belongs to a service client, not a user")
    return JSON(await svc.directory.user(who.user_id))


@router.get("/users/{user_id}", response_model=schemas.User)
async def get_user(user_id: PathId, svc: Svc, _who: Reader) -> Response:
    return JSON(await svc.directory.user(user_id))


@router.post("/users", status_code=201, response_model=schemas.User, responses=problems(409))
async def create_user(body: schemas.UserCreate, svc: Svc, _who: Writer) -> Response:
    row = await svc.directory.create_user(body.model_dump())
    return JSON(row, status_code=201, headers={"Location": f"/v1/users/{row['id']}"})


@router.patch(
    "/users/{user_id}",
    response_model=schemas.User,
    summary="Change or deactivate",
    responses=problems(409),
)
async def update_user(
    user_id: PathId, body: schemas.UserUpdate, svc: Svc, _who: Writer
) -> Response:
    fields = body.model_dump(exclude_unset=True)
    for name in ("email", "name", "role_id", "active"):
        if name in fields and fields[name] is None:
            raise InvalidInput(f"{name} cannot be null")
    if not fields:
        return JSON(await svc.directory.user(user_id))
    row = await svc.directory.update_user(user_id, fields)
    # A deactivated user is refused by this instance from the next request on.
    svc.caches.changed("users", [user_id])
    return JSON(row)


@router.get("/service-clients", response_model=list[schemas.ServiceClient])
async def list_service_clients(svc: Svc, _who: TokenAdmin) -> Response:
    return JSON(await svc.directory.service_clients())


@router.post(
    "/service-clients",
    status_code=201,
    response_model=schemas.ServiceClient,
    responses=problems(409),
)
async def create_service_client(
    body: schemas.ServiceClientCreate, svc: Svc, _who: TokenAdmin
) -> Response:
    row = await svc.directory.create_service_client(body.name, body.role_id, body.internal)
    return JSON(row, status_code=201)


@router.patch(
    "/service-clients/{client_id}",
    response_model=schemas.ServiceClient,
    summary="Deactivate or reactivate a service client (its tokens stop working at once)",
)
async def update_service_client(
    client_id: PathId, body: schemas.ServiceClientUpdate, svc: Svc, _who: TokenAdmin
) -> Response:
    if body.active is None:
        raise InvalidInput("active cannot be null")
    row = await svc.directory.set_service_client_active(client_id, body.active)
    # Cached principals of its tokens are dropped here; other instances hear it from
    # the database's change notification (caching.md).
    svc.caches.changed("service_clients", [client_id])
    return JSON(row)


@router.get(
    "/tokens",
    response_model=list[schemas.Token],
    summary="Your tokens; with tokens:write, anybody's (filter by owner, or all=true)",
    responses=problems(403, s403="Listing others' tokens needs the tokens:write permission"),
)
async def list_tokens(
    svc: Svc,
    who: Anyone,
    user_id: Annotated[int | None, Query(ge=1)] = None,
    service_client_id: Annotated[int | None, Query(ge=1)] = None,
    all_owners: Annotated[bool, Query(alias="all")] = False,
) -> Response:
    if user_id is not None and service_client_id is not None:
        raise InvalidInput("filter by user_id or by service_client_id, not both")
    if all_owners or user_id is not None or service_client_id is not None:
        if not who.can(Permission.TOKENS_WRITE) and not (
            not all_owners and who.is_itself(user_id, service_client_id)
        ):
            raise Forbidden("listing others' tokens needs the 'tokens:write' permission")
        return JSON(
            await svc.directory.tokens(
                user_id=user_id, service_client_id=service_client_id, every_owner=all_owners
            )
        )
    return JSON(
        await svc.directory.tokens(user_id=who.user_id, service_client_id=who.service_client_id)
    )


@router.post(
    "/tokens",
    status_code=201,
    response_model=schemas.TokenCreated,
    summary="Create a token (the secret is shown once)",
    responses=problems(403, s403="Tokens for others need the tokens:write permission"),
)
async def create_token(body: schemas.TokenCreate, svc: Svc, who: Anyone) -> Response:
    if body.user_id is not None and body.service_client_id is not None:
        raise InvalidInput("name either user_id or service_client_id, not both")
    user_id, client_id = body.user_id, body.service_client_id
    if user_id is None and client_id is None:
        user_id, client_id = who.user_id, who.service_client_id
    elif not who.may_manage_tokens_of(user_id, client_id):
        raise Forbidden("creating tokens for others needs the 'tokens:write' permission")
    if body.expires_at is not None and body.expires_at.tzinfo is None:
        raise InvalidInput("expires_at needs a time zone, e.g. 2027-01-01T00:00:00Z")
    token, row = await svc.directory.create_token(
        name=body.name, user_id=user_id, service_client_id=client_id, expires_at=body.expires_at
    )
    return JSON({**row, "token": token}, status_code=201)


@router.delete("/tokens/{token_id}", response_model=schemas.Token, summary="Revoke a token")
async def revoke_token(token_id: PathId, svc: Svc, who: Anyone) -> Response:
    row = await svc.directory.token(token_id)
    if not who.may_manage_tokens_of(row["user_id"], row["service_client_id"]):
        raise NotFound(f"token {token_id} does not exist")
    row = await svc.directory.revoke_token(token_id)
    svc.caches.changed("api_tokens", [token_id])
    return JSON(row)

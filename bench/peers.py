"""The case listing done the two common slower ways, mounted beside tragwerk's own.

Same process, same authentication, same filters and serialisation; only the two
techniques the foundation avoids differ:

- /bench/offset/cases      pages with LIMIT/OFFSET instead of a keyset cursor
- /bench/n-plus-one/cases  keyset pages, but each case's assignees in its own query

Run `python -m bench.peers --port 8100` with TRAGWERK_DATABASE_URL set.
"""

from __future__ import annotations

import argparse
import os
from functools import lru_cache
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query
from sqlalchemy import BigInteger, bindparam
from starlette.responses import Response

from tragwerk.api.auth import Svc, require
from tragwerk.api.responses import JSON
from tragwerk.bootstrap import build_app
from tragwerk.domain.cases import Status
from tragwerk.domain.directory import Permission, Principal
from tragwerk.settings import Settings
from tragwerk.store import cursor as cursors
from tragwerk.store.hot import CompiledQuery, fetch
from tragwerk.store.queries import read_only
from tragwerk.store.queries.cases import (
    CaseFilter,
    ListShape,
    assignees_of,
    list_parameters,
    list_statement,
)

router = APIRouter(prefix="/bench")


@lru_cache
def _offset_query(shape: ListShape) -> CompiledQuery:
    return CompiledQuery(list_statement(shape).offset(bindparam("offset", type_=BigInteger)))


@lru_cache
def _keyset_query(shape: ListShape) -> CompiledQuery:
    return CompiledQuery(list_statement(shape))


Reader = Annotated[Principal, Depends(require(Permission.CASES_READ))]


@router.get("/offset/cases")
async def offset_cases(
    svc: Svc,
    _who: Reader,
    status: Annotated[list[Status] | None, Query()] = None,
    location_id: int | None = None,
    limit: int = 50,
    offset: int = 0,
) -> Response:
    flt = CaseFilter(status=tuple(status or ()), location_id=location_id)
    # The keyset query without its cursor, paged by OFFSET instead; executed the same way.
    shape, params = list_parameters(flt, "created", None, limit)
    query = _offset_query(shape)
    async with read_only(svc.engine).connect() as conn:
        rows = [dict(r) for r in await fetch(conn, query, {**params, "offset": offset})]
        rows = rows[:limit]
        by_case = await assignees_of(conn, [r["id"] for r in rows])
    for row in rows:
        row["assignees"] = by_case[row["id"]]
    return JSON({"items": rows, "next_offset": offset + limit if len(rows) == limit else None})


@router.get("/n-plus-one/cases")
async def n_plus_one_cases(
    svc: Svc,
    _who: Reader,
    status: Annotated[list[Status] | None, Query()] = None,
    location_id: int | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Response:
    flt = CaseFilter(status=tuple(status or ()), location_id=location_id)
    shape, params = list_parameters(flt, "created", cursor, limit)
    async with read_only(svc.engine).connect() as conn:
        rows = [dict(r) for r in await fetch(conn, _keyset_query(shape), params)]
        more = len(rows) > limit
        rows = rows[:limit]
        for row in rows:  # one query per case: the N+1 pattern
            row["assignees"] = (await assignees_of(conn, [row["id"]]))[row["id"]]
    next_cursor = None
    if more and rows:
        next_cursor = cursors.encode("created", rows[-1]["created_at"], rows[-1]["id"])
    return JSON({"items": rows, "next_cursor": next_cursor})


def app() -> FastAPI:
    settings = Settings.from_env()
    assert settings.database_url, "set TRAGWERK_DATABASE_URL"
    application = build_app(settings, settings.database_url)
    application.include_router(router)
    return application


if __name__ == "__main__":
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("TRAGWERK_LOG_LEVEL", "warning")
    uvicorn.run(
        "bench.peers:app",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_config=None,
        access_log=False,
        server_header=False,
    )

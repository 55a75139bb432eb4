"""Serve one of the benchmark's contenders with the same uvicorn settings for all.

    python -m bench.serve tragwerk|fastapi|starlette --port P

`tragwerk` is the full app (`TRAGWERK_CACHE` on or off, from the environment). The
two bare apps serve the same JSON bytes that tragwerk serves for /v1/locations and
/v1/countries, read once from the database at start: `fastapi` validates and
serialises them through a response model on every request, as a plain FastAPI
endpoint does; `starlette` returns the bytes as they are: the Python stack's ceiling.

All run with tragwerk's uvicorn settings (tragwerk.api.http_server), including its
request-head limits; `TRAGWERK_BENCH_HTTP=httptools` runs uvicorn's own protocol
instead, to measure what those limits cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tragwerk.api.http_server import uvicorn_options

from tragwerk.api.schemas import Country, Location
from tragwerk.store.database import create_engine
from tragwerk.store.queries.directory import DirectoryStore


async def _rows(url: str) -> dict[str, list[dict[str, Any]]]:
    from tragwerk.domain.observability import SilentReporter

    engine = create_engine(url, pool_size=1)
    try:
        directory = DirectoryStore(engine, SilentReporter())
        return {"locations": await directory.locations(), "countries": await directory.countries()}
    finally:
        await engine.dispose()


def bare_fastapi(rows: dict[str, list[dict[str, Any]]]) -> FastAPI:
    app = FastAPI()
    locations = [dict(r) for r in rows["locations"]]
    countries = [dict(r) for r in rows["countries"]]

    @app.get("/v1/locations", response_model=list[Location])
    async def get_locations() -> Any:
        return locations

    @app.get("/v1/countries", response_model=list[Country])
    async def get_countries() -> Any:
        return countries

    return app


def bare_starlette(rows: dict[str, list[dict[str, Any]]]) -> Starlette:
    bodies = {
        name: orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS) for name, value in rows.items()
    }

    async def locations(_request: Request) -> Response:
        return Response(bodies["locations"], media_type="application/json")

    async def countries(_request: Request) -> Response:
        return Response(bodies["countries"], media_type="application/json")

    return Starlette(routes=[Route("/v1/locations", locations), Route("/v1/countries", countries)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("contender", choices=["tragwerk", "fastapi", "starlette"])
    parser.add_argument("--port", type=int, default=8200)
    args = parser.parse_args()
    url = os.environ["TRAGWERK_DATABASE_URL"]
    app: Any
    if args.contender == "tragwerk":
        from tragwerk.bootstrap import app_from_env

        app = app_from_env()
    else:
        rows = asyncio.run(_rows(url))
        app = bare_fastapi(rows) if args.contender == "fastapi" else bare_starlette(rows)
    options = uvicorn_options()
    if os.environ.get("TRAGWERK_BENCH_HTTP"):
        options["http"] = os.environ["TRAGWERK_BENCH_HTTP"]
    uvicorn.run(app, host="127.0.0.1", port=args.port, **options)


if __name__ == "__main__":
    main()

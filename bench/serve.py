"""Serve one of the benchmark's contenders on granian or on uvicorn.

    python -m bench.serve tragwerk|fastapi|starlette --port P [--server granian|uvicorn]

`tragwerk` is the full app (`TRAGWERK_CACHE` on or off, from the environment). The
two bare apps serve the same JSON bytes that tragwerk serves for /v1/locations and
/v1/countries, read once from the database at start: `fastapi` validates and
serialises them through a response model on every request, as a plain FastAPI
endpoint does; `starlette` returns the bytes as they are: the Python stack's ceiling.

On granian (the default) `tragwerk` is served exactly as `tragwerk api` serves it
(tragwerk.api.serving), and the bare apps with the same granian settings. On uvicorn,
`tragwerk` runs on the protocol tragwerk used before granian (bench.uvicorn_protocol,
kept for this comparison) and the bare apps on uvicorn's own httptools protocol;
`TRAGWERK_BENCH_HTTP=httptools` puts tragwerk on uvicorn's own protocol too.
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


def bare_from_env() -> Any:
    """Factory for granian: the bare contender named in BENCH_CONTENDER."""
    rows = asyncio.run(_rows(os.environ["TRAGWERK_DATABASE_URL"]))
    if os.environ["BENCH_CONTENDER"] == "fastapi":
        return bare_fastapi(rows)
    return bare_starlette(rows)


def _on_uvicorn(contender: str, port: int) -> None:

    from bench.uvicorn_protocol import BoundedHttpToolsProtocol, uvicorn_options

    app: Any
    if contender == "tragwerk":
        from tragwerk.bootstrap import app_from_env

        app = app_from_env()
        BoundedHttpToolsProtocol.configure(
            16_384, 100, app.state.services.metrics.module("http_server")
        )
    else:
        rows = asyncio.run(_rows(os.environ["TRAGWERK_DATABASE_URL"]))
        app = bare_fastapi(rows) if contender == "fastapi" else bare_starlette(rows)
    options = uvicorn_options()
    if contender != "tragwerk":
        options["http"] = "httptools"
    if os.environ.get("TRAGWERK_BENCH_HTTP"):
        options["http"] = os.environ["TRAGWERK_BENCH_HTTP"]
    uvicorn.run(app, host="127.0.0.1", port=port, **options)


def _on_granian(contender: str, port: int) -> None:
    from tragwerk.api import serving
    from tragwerk.monitoring.logging import configure_logging
    from tragwerk.settings import Settings

    settings = Settings.from_env().with_overrides(port=port)
    configure_logging(settings.log_level)
    if contender == "tragwerk":
        raise SystemExit(serving.serve(settings, workers=1))
    os.environ["BENCH_CONTENDER"] = contender
    serving.build_server(
        settings, workers=1, with_worker=False, target="bench.serve:bare_from_env"
    ).serve()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("contender", choices=["tragwerk", "fastapi", "starlette"])
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--server", choices=["granian", "uvicorn"], default="granian")
    args = parser.parse_args()
    if args.server == "uvicorn":
        _on_uvicorn(args.contender, args.port)
    else:
        _on_granian(args.contender, args.port)


if __name__ == "__main__":
    main()

"""The FastAPI application, assembled from already-built services."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.types import ASGIApp

import tragwerk
from tragwerk.api import errors, openapi
from tragwerk.api.client_address import ClientAddress
from tragwerk.api.fast_reference import TABLES as FAST_TABLES
from tragwerk.api.fast_reference import ReferenceFastPath
from tragwerk.api.gate import Gate
from tragwerk.api.limiting import Limiting
from tragwerk.api.routes import (
    admin,
    cases,
    health,
    instances,
    jobs,
    ops,
    reference,
    users,
    webhooks,
)
from tragwerk.api.services import Services


class TragwerkApp(FastAPI):
    """FastAPI with tragwerk's own layers outside FastAPI's middleware stack.

    Request order: Gate (request id, metrics, rate limit, admission, body limits) ->
    ReferenceFastPath -> FastAPI's stack (error middleware, routing, dependencies).
    Outside, the cached reference reads skip five layers they do not need
    (docs/decisions/0004); an unhandled error still becomes FastAPI's 500 response
    inside, which the gate counts on its way out.
    """

    outer: list[tuple[type, dict[str, Any]]]

    def build_middleware_stack(self) -> ASGIApp:
        app = super().build_middleware_stack()
        for layer, options in self.outer:
            app = layer(app, **options)
        return app


def create_app(services: Services) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Everything alive after start-up (modules, routes, schemas) lives as long as the
        # process. Freezing it keeps the garbage collector's full passes from walking it
        # again and again, which showed as a 3x p99 latency (docs/decisions/0003).
        gc.collect()
        gc.freeze()
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    app = TragwerkApp(
        title="tragwerk",
        version=tragwerk.__version__,
        description="Case management whose performance and scalability layer is the point.",
        lifespan=lifespan,
        # tragwerk reports through its own Prometheus metrics; FastAPI's native
        # OpenTelemetry probe costs environment look-ups on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.services = services
    errors.install(app)
    modules = (health, cases, reference, users, webhooks, admin, jobs, instances, ops)
    for module in modules:
        app.include_router(module.router)
    # Taken from the routers: FastAPI keeps included routers as routers of their own
    # (app.routes lists them, not their routes).
    api_routes = [
        route for module in modules for route in module.router.routes if isinstance(route, APIRoute)
    ]
    app.state.api_routes = api_routes
    openapi.install(app, api_routes)
    fast_routes = {route.path: route for route in api_routes if route.path in FAST_TABLES}
    settings = services.settings
    limiting = None
    if services.limiter is not None or services.admission is not None:
        limiting = Limiting(services, services.limiter, services.admission)
    # Innermost first: each wraps the ones before it.
    app.outer = [
        (ReferenceFastPath, {"services": services, "routes": fast_routes}),
        (
            Gate,
            {
                "metrics": services.metrics.http,
                "limiting": limiting,
                "body_limit": services.settings.max_body_bytes,
                "client_address": (
                    ClientAddress(settings.trusted_proxies, settings.forwarded_header)
                    if settings.trusted_proxies
                    else None
                ),
            },
        ),
    ]
    return app

"""`tragwerk worker`: one worker process with its health and metrics endpoints.

Serves /health/live, /health/ready (database and queue connection) and /metrics on
TRAGWERK_WORKER_PORT: when that port is taken (several workers on one host) on the
next free one above it, with 0 on one the system picks, with `off` on none; the log
says where. SIGTERM or Ctrl-C stops it gracefully (see Worker.stop). Exit status 0
after a requested stop, 1 when the queue connection failed, so that a supervisor
restarts it (docs/commands.md lists every status).
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import orjson
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import tragwerk
from tragwerk.jobs.worker import Worker
from tragwerk.monitoring.health_port import HealthServer
from tragwerk.monitoring.metrics import CONTENT_TYPE, Metrics
from tragwerk.monitoring.supervisor import Supervisor, SupervisorCollector
from tragwerk.settings import Settings
from tragwerk.store.database import check_ready, create_engine
from tragwerk.store.instances import InstanceRecorder, InstanceStore

log = structlog.get_logger("tragwerk.worker")


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def health_app(worker: Worker) -> Starlette:
    async def live(_request: Request) -> Response:
        return _json({"status": "ok"})

    async def ready(_request: Request) -> Response:
        checks = {"database": await check_ready(worker.engine), "queue": await worker.ready()}
        ok = all(v == "ok" for v in checks.values())
        return _json({"status": "ok" if ok else "failing", "checks": checks}, 200 if ok else 503)

    async def metrics(_request: Request) -> Response:
        return Response(worker.metrics.render(), media_type=CONTENT_TYPE)

    return Starlette(
        routes=[
            Route("/health/live", live),
            Route("/health/ready", ready),
            Route("/metrics", metrics),
        ]
    )


async def worker_states(worker: Worker) -> dict[str, Any]:
    """What a worker's instance record shows (GET /v1/admin/instances, /ops)."""
    states: dict[str, Any] = {
        "database": await check_ready(worker.engine),
        "queue": await worker.ready(),
        "smtp": worker.mail_state(),
        "running_jobs": worker.running_jobs,
        "jobs": worker.metrics.jobs.totals(),
        "breakers_open": sorted(worker.breakers.not_closed()),
    }
    return states


async def serve_worker(settings: Settings, database_url: str, concurrency: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def request_stop(_signum: int, _frame: object) -> None:
        loop.call_soon_threadsafe(stop.set)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    engine = create_engine(database_url, pool_size=min(10, concurrency), max_overflow=0)
    worker = Worker(settings, database_url, engine, Metrics(), concurrency=concurrency)
    health: HealthServer | None = None
    failed = False
    supervisor = Supervisor()
    worker.metrics.registry.register(SupervisorCollector(supervisor))
    recorder = InstanceRecorder(
        InstanceStore(engine),
        role="worker",
        version=tragwerk.__version__,
        states=lambda: worker_states(worker),
        interval=settings.instance_heartbeat_seconds,
    )
    try:
        await worker.start()
        if settings.worker_port is not None:
            health = HealthServer(health_app(worker), settings.host, settings.worker_port)
            recorder.address = health.address
            log.info("worker health and metrics", url=f"http://{health.address}/metrics")
            health.start()
        supervisor.start("instance", recorder.run)
        waiters = {asyncio.create_task(stop.wait()), asyncio.create_task(worker.wait())}
        done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("the job runner failed", error=repr(task.exception()))
        failed = not stop.is_set() or worker.failed
        if failed:
            log.error("the queue connection failed; stopping so that a supervisor restarts us")
    finally:
        await supervisor.stop()
        if health is not None:
            await health.stop()
        await worker.stop()
        await recorder.stopped()
        await engine.dispose()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("worker stopped")
    return 1 if failed else 0

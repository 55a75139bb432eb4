"""Serving the API: granian's worker processes, bounded by tragwerk's settings.

granian (docs/decisions/0009) parses HTTP in Rust and enforces, before any Python
runs, what tragwerk needs against floods and slow clients:

- a request head over TRAGWERK_MAX_HEAD_BYTES, or with more than 100 fields, is
  answered 431 and the connection closed (its HTTP/1 buffer; the field count is
  the server's own fixed limit);
- a head that has not arrived within TRAGWERK_HEADER_READ_TIMEOUT_SECONDS is cut off
  (slowloris);
- a worker process takes on at most TRAGWERK_BACKPRESSURE requests at once;
- a worker process that dies is started again (`respawn_failed_workers`), counted in
  tragwerk_api_worker_respawns_total (tragwerk.api.server_state) and logged by both
  granian and the new process. A worker that dies again within about five seconds of
  its respawn is a crash loop: granian stops, and so does the command, exit status 1,
  for the service manager to act on.

Stopping: SIGTERM or Ctrl-C. Readiness fails at once (the server is marked draining);
after TRAGWERK_DRAIN_SECONDS (0 by default) granian stops accepting, lets the requests
in flight finish and runs each app's shutdown, which stops its background work. The
whole stop after the drain fits in one grace period (TRAGWERK_SHUTDOWN_GRACE_SECONDS),
as a container orchestrator expects before it kills: up to a third of it (at most
10 s) waits for a worker process still starting its app, the rest is the time a
stopping worker process has before it is killed. The command returns once every
worker process has exited, so its caller (tragwerk up) stops the embedded PostgreSQL
last.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import structlog
from granian import Granian
from granian.constants import HTTPModes, Interfaces, Loops
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.server import MPServer, MTServer

from tragwerk.api.server_state import ENV as STATE_ENV
from tragwerk.api.server_state import ServerState
from tragwerk.settings import Settings

log = structlog.get_logger("tragwerk.serving")

# Factories each worker process calls to build its app (tragwerk.bootstrap).
API_ONLY = "tragwerk.bootstrap:app_from_env"
API_WITH_WORKER = "tragwerk.bootstrap:app_with_worker_from_env"

# granian's own log lines (worker spawned, died, respawned) go to the root logger,
# which tragwerk's configure_logging writes as JSON, instead of granian's console.
_GRANIAN_LOGGING: dict[str, Any] = {
    "loggers": {
        "_granian": {"handlers": [], "propagate": True},
        "granian.access": {"handlers": [], "propagate": False},
    }
}

_LOG_LEVELS = {level.value: level for level in LogLevels}


def grace_seconds(settings: Settings, *, with_worker: bool) -> int:
    """How long the stop may take after the drain: the wait for worker processes still
    starting (`starting_wait_seconds`), then the kill timeout (`kill_timeout_seconds`).

    With the in-process job worker (tragwerk up), its jobs get TRAGWERK_WORKER_GRACE_SECONDS
    to finish during the app's shutdown, so the kill timeout is at least that and 5 s
    more, and the grace period grows to hold it.
    """
    grace = settings.shutdown_grace_seconds
    if with_worker:
        # The smallest grace whose kill timeout (grace less the wait) still holds `needed`.
        needed = settings.worker_grace_seconds + 5
        grace = max(grace, needed + min(10.0, needed / 2))
    return max(1, round(grace))


def starting_wait_seconds(grace: float) -> float:
    """Of the grace period, how long a stop waits for worker processes still starting
    their app (granian's worker drops a stop signal that arrives then): a third, at
    most 10 s."""
    return min(10.0, grace / 3)


def kill_timeout_seconds(grace: float) -> int:
    """What the grace period leaves a stopping worker process before it is killed."""
    return max(1, round(grace - starting_wait_seconds(grace)))


def build_server(
    settings: Settings, *, workers: int, with_worker: bool, target: str | None = None
) -> MPServer | MTServer:
    """granian with tragwerk's settings; `target` (a factory) replaces the app (benchmarks)."""
    server: MPServer | MTServer = Granian(
        target or (API_WITH_WORKER if with_worker else API_ONLY),
        address=settings.host,
        port=settings.port,
        interface=Interfaces.ASGI,
        factory=True,
        workers=workers,
        loop=Loops.uvloop,
        # HTTP/1.1 only: what gateways and clients of this API speak; HTTP/2 would bring
        # its own header limits (16 MiB by default) for nobody's benefit.
        http=HTTPModes.http1,
        websockets=False,
        backpressure=settings.backpressure,
        http1_settings=HTTP1Settings(
            header_read_timeout=max(1, round(settings.header_read_timeout_seconds * 1000)),
            keep_alive=True,
            max_buffer_size=settings.max_head_bytes,
        ),
        log_level=_LOG_LEVELS.get(settings.log_level, LogLevels.info),
        log_dictconfig=_GRANIAN_LOGGING,
        log_access=False,  # per-request lines cost CPU; /metrics counts requests instead
        respawn_failed_workers=True,
        workers_kill_timeout=kill_timeout_seconds(grace_seconds(settings, with_worker=with_worker)),
    )
    return server


def serve(settings: Settings, *, workers: int, with_worker: bool = False) -> int:
    """Serve until SIGTERM or Ctrl-C; 0 after a requested stop, 1 after a crash loop.

    The worker processes build their apps from the environment (Settings.from_env), so
    what the command line or the embedded database changed is written there first.
    """
    if with_worker and workers != 1:
        raise ValueError("the in-process job worker runs in exactly one worker process")
    _export(settings)
    state = ServerState.create(workers)
    os.environ[STATE_ENV] = str(state.directory)
    server = build_server(settings, workers=workers, with_worker=with_worker)
    # granian installs its handlers for SIGINT and SIGTERM as it starts, then runs its
    # start-up hooks: SIGTERM is taken back there, to drain before granian stops.
    grace = grace_seconds(settings, with_worker=with_worker)
    wait = starting_wait_seconds(grace)
    server.on_startup(lambda: _drain_on_sigterm(state, settings.drain_seconds, wait))
    try:
        server.serve()
    except SystemExit as exc:  # granian exits 1 after a crash loop
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        state.remove()
        os.environ.pop(STATE_ENV, None)
    return 0


def _export(settings: Settings) -> None:
    """Write what worker processes must see but may not find in the environment."""
    if settings.database_url is not None:
        os.environ["TRAGWERK_DATABASE_URL"] = settings.database_url
    os.environ["TRAGWERK_HOST"] = settings.host
    os.environ["TRAGWERK_PORT"] = str(settings.port)
    os.environ["TRAGWERK_DATA_DIR"] = str(settings.data_dir)


def _drain_on_sigterm(state: ServerState, drain_seconds: float, starting_wait: float) -> None:
    """On SIGTERM: mark the server draining (readiness fails), then after `drain_seconds`
    send ourselves SIGINT, on which granian stops gracefully. A second SIGTERM or a
    Ctrl-C while draining stops at once.

    The SIGINT also waits (at most `starting_wait` seconds) for worker processes still
    starting their app: granian's worker drops a stop signal that arrives while its app
    starts, and would then be killed only after the kill timeout.
    """
    draining = threading.Event()
    main = os.getpid()
    main_thread = threading.main_thread().ident or 0

    def stop_when_started() -> None:
        time.sleep(drain_seconds)
        deadline = time.monotonic() + starting_wait
        while state.still_starting() and time.monotonic() < deadline:
            time.sleep(0.05)
        starting = state.still_starting()
        if starting:
            log.warning(
                "worker processes still starting their app at the stop; granian kills"
                " them after the kill timeout",
                pids=starting,
                waited_seconds=starting_wait,
            )
        stop_now()

    def stop_now() -> None:
        # To the main thread itself: a signal sent to the process from this thread may be
        # taken by this thread, and granian's main thread, blocked on a lock, would then
        # never run its handler (seen: a stop that never came).
        signal.pthread_kill(main_thread, signal.SIGINT)

    def on_sigterm(signum: int, _frame: object) -> None:
        if os.getpid() != main:
            # A worker process forked before granian set its own handlers in it: it is
            # still starting, and has nothing to finish. Stop it the default way.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if draining.is_set():
            stop_now()
            return
        draining.set()
        state.drain()
        log.info("draining: readiness fails, then the server stops", seconds=drain_seconds)
        threading.Thread(target=stop_when_started, name="drain", daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)

"""The health and metrics port of a process that is not the API (worker, autoscaler).

Several such processes on one host all read the same TRAGWERK_WORKER_PORT; each takes
the next free port above it, and the log says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import structlog
import uvicorn
from starlette.types import ASGIApp

log = structlog.get_logger("tragwerk.health_port")

PORTS_TRIED = 50  # a busy port: this many above it are tried before giving up


def bind_health_port(host: str, port: int) -> socket.socket:
    """A listening socket on `port`, or on the next free port above it; 0: any port.

    Several workers on one host all read the same TRAGWERK_WORKER_PORT; the second
    one found it taken and exited (status 3). Now each takes the next free port.
    """
    last: OSError | None = None
    for candidate in [0] if port == 0 else range(port, min(port + PORTS_TRIED, 65536)):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, candidate))
        except OSError as exc:
            sock.close()
            last = exc
            continue
        sock.listen(128)
        if port not in (candidate, 0):
            log.warning("worker port taken, using the next free one", wanted=port, port=candidate)
        return sock
    raise OSError(f"no free port from {port} to {port + PORTS_TRIED - 1}: {last}")


class HealthServer:
    """`app` (health and metrics) served by uvicorn on the port `bind_health_port` gives."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        self._sock = bind_health_port(host, port)
        bound_host, bound_port = self._sock.getsockname()[:2]
        self.address = f"{bound_host}:{bound_port}"
        config = uvicorn.Config(app, log_config=None, access_log=False, server_header=False)
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(BaseException):
            await self._task

"""A real HAProxy from `tragwerk gateway config`, and scripted backends to put behind it."""

from __future__ import annotations

import contextlib
import csv
import io
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tragwerk.scaling.gateway import GatewayConfig, Server, render

# What a scripted backend does with one request: (status, body, seconds to wait first),
# or None to close the connection without answering.
Behaviour = Callable[[str, str], tuple[int, bytes, float] | None]


def answer_ok(_method: str, _path: str) -> tuple[int, bytes, float] | None:
    return 200, b'{"ok":true}', 0.0


@dataclass
class Backend:
    """An HTTP server on loopback that counts requests by (method, path) and answers
    as `behaviour` says; /health/ready answers 200 unless `ready` is False."""

    behaviour: Behaviour = answer_ok
    ready: bool = True
    seen: Counter[tuple[str, str]] = field(default_factory=Counter)
    forwarded_for: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        backend = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                return None

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if self.path == "/health/ready":
                    status = 200 if backend.ready else 503
                    self._send(status, b"{}")
                    return
                with lock:
                    backend.seen[(self.command, self.path)] += 1
                    backend.forwarded_for.append(self.headers.get("X-Forwarded-For", ""))
                outcome = backend.behaviour(self.command, self.path)
                if outcome is None:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                status, body, wait = outcome
                if wait:
                    time.sleep(wait)
                self._send(status, body)

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def server(self) -> Server:
        return Server("127.0.0.1", self.port)

    def count(self, method: str) -> int:
        return sum(n for (m, _), n in self.seen.items() if m == method)

    def __enter__(self) -> Backend:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class Gateway:
    """HAProxy running the rendered configuration, in the foreground, until stopped."""

    def __init__(self, haproxy: str, tmp: Path, config: GatewayConfig) -> None:
        self.config = config
        self.path = tmp / f"haproxy-{config.bind.port}.cfg"
        self.path.write_text(render(config))
        self.log = tmp / f"haproxy-{config.bind.port}.log"
        self.haproxy = haproxy
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.bind.address}"

    def check(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.haproxy, "-c", "-f", str(self.path)],
            capture_output=True,
            text=True,
            check=False,
        )

    def __enter__(self) -> Gateway:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [self.haproxy, "-db", "-f", str(self.path)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"haproxy exited:\n{self.log.read_text()}")
            with contextlib.suppress(OSError):
                socket.create_connection((self.config.bind.host, self.config.bind.port), 1).close()
                return self
            time.sleep(0.05)
        self.proc.kill()
        raise AssertionError("haproxy did not start listening")

    def __exit__(self, *_: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def runtime(self, command: str) -> str:
        """One command on HAProxy's runtime API (the stats socket)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(self.config.socket)
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def server_states(self) -> dict[str, str]:
        """Server name -> status (UP, DOWN, DRAIN, MAINT, ...) from `show stat`."""
        text = self.runtime("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == "api" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_for(self, server: str, status: str, within: float = 15.0) -> float:
        """Seconds until `server` shows `status` (prefix match: 'UP' matches 'UP 1/2')."""
        started = time.monotonic()
        while time.monotonic() - started < within:
            if self.server_states().get(server, "").startswith(status):
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"{server} not {status} within {within} s: {self.server_states()}")


@contextlib.contextmanager
def backends(*behaviours: Behaviour) -> Iterator[list[Backend]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(Backend(b)) for b in behaviours]

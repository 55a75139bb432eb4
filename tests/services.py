"""Where the real services are, and how a test that needs one skips or fails."""

from __future__ import annotations

import os
import shutil
import socket

import pytest

SERVICE_PG_HOST = os.environ.get("TRAGWERK_TEST_PG_HOST", "127.0.0.1")
SERVICE_PG_PORT = int(os.environ.get("TRAGWERK_TEST_PG_PORT", "5432"))
SERVICE_PG_ADMIN_URL = f"postgresql://postgres@{SERVICE_PG_HOST}:{SERVICE_PG_PORT}/test"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip on a laptop without the service; fail in CI, where it must be there."""
    if reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: the service must be up)")
    pytest.skip(f"{message}; start it to run this test")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_program(name: str, install: str) -> str:
    """The program's path; skip without it, fail in CI (where .ci/run installs it)."""
    path = shutil.which(name)
    if path is None:
        if in_ci():
            pytest.fail(f"{name} is not installed (CI=true: .ci/run installs it)")
        pytest.skip(f"{name} is not installed; {install}")
    return path

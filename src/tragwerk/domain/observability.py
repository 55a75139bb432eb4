"""The reporting contract every module follows: state, duration of operations, errors.

Building blocks depend on this protocol only; `tragwerk.monitoring` implements it with
Prometheus, and the composition root passes the implementation in.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Protocol


class ModuleReporter(Protocol):
    def operation(self, name: str) -> AbstractContextManager[None]:
        """Time one operation; an exception leaving the block counts as an error."""

    def set_healthy(self, healthy: bool) -> None:
        """Report the module's state (up or failing)."""


class SilentReporter:
    """A reporter that records nothing: for unit tests and tools that run without metrics."""

    def operation(self, name: str) -> AbstractContextManager[None]:
        return nullcontext()

    def set_healthy(self, healthy: bool) -> None:
        return None

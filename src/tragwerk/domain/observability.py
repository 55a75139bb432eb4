"""The reporting contract every module follows: state, duration of operations, errors.

Building blocks depend on this protocol only; `tragwerk.monitoring` implements it with
Prometheus, and the composition root passes the implementation in.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol


class Tally:
    """A count its owner adds to directly (`tally.n += 1`), read when metrics are
    collected. For events on every request, where even a method call per count shows
    (docs/decisions/0005); `ModuleReporter.count` for the rest."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


class ModuleReporter(Protocol):
    def operation(self, name: str) -> AbstractContextManager[None]:
        """Time one operation; an exception leaving the block counts as an error."""

    def set_healthy(self, healthy: bool) -> None:
        """Report the module's state (up or failing)."""

    def count(self, event: str, amount: int = 1) -> None:
        """Count a notable event (a cache hit, an invalidation, a reconnect)."""

    def observe(self, name: str, read: Callable[[], float]) -> None:
        """Report a value read when metrics are collected (an age, a size)."""

    def tally(self, event: str) -> Tally:
        """A count of `event` kept by the caller: reported with the `count`ed events."""


class SilentReporter:
    """A reporter that records nothing: for unit tests and tools that run without metrics."""

    def operation(self, name: str) -> AbstractContextManager[None]:
        return nullcontext()

    def set_healthy(self, healthy: bool) -> None:
        return None

    def count(self, event: str, amount: int = 1) -> None:
        return None

    def observe(self, name: str, read: Callable[[], float]) -> None:
        return None

    def tally(self, event: str) -> Tally:
        return Tally()

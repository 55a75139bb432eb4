"""A circuit breaker per destination host.

After `threshold` consecutive failures the breaker opens: calls are refused at once
(no connection, no timeout spent) for `open_seconds`. Then one probe is let through;
its success closes the breaker, its failure opens it again. Written here rather than
taken from a library: see docs/decisions/0006-job-queue-and-deliveries.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerOpen(Exception):
    """The destination failed repeatedly; calls are refused until `retry_in` has passed."""

    def __init__(self, host: str, retry_in: float) -> None:
        super().__init__(
            f"circuit open for {host} after repeated failures; retry in {retry_in:.0f} s"
        )
        self.host = host
        self.retry_in = retry_in


@dataclass
class _Host:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


@dataclass
class CircuitBreakers:
    threshold: int = 5
    open_seconds: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _hosts: dict[str, _Host] = field(default_factory=dict)

    def state(self, host: str) -> BreakerState:
        entry = self._hosts.get(host)
        if entry is None or entry.opened_at is None:
            return BreakerState.CLOSED
        if self.clock() - entry.opened_at < self.open_seconds:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def before_call(self, host: str) -> None:
        """Raise BreakerOpen unless a call to `host` may go ahead now."""
        entry = self._hosts.get(host)
        if entry is None or entry.opened_at is None:
            return
        waited = self.clock() - entry.opened_at
        if waited < self.open_seconds:
            raise BreakerOpen(host, self.open_seconds - waited)
        if entry.probing:  # one probe at a time; the others wait for its outcome
            raise BreakerOpen(host, min(self.open_seconds, 5.0))
        entry.probing = True

    def succeeded(self, host: str) -> None:
        self._hosts.pop(host, None)

    def release(self, host: str) -> None:
        """The call let through by before_call ended without a verdict on the host (a
        429, a refusal by the SSRF guard, a cancellation, any other error): give the
        probe slot back, or the host would stay refused for the process's life.
        Called after every call; after succeeded() or failed() it changes nothing."""
        entry = self._hosts.get(host)
        if entry is not None:
            entry.probing = False

    def failed(self, host: str) -> None:
        entry = self._hosts.setdefault(host, _Host())
        entry.failures += 1
        entry.probing = False
        if entry.opened_at is not None or entry.failures >= self.threshold:
            entry.opened_at = self.clock()

    def not_closed(self) -> dict[str, BreakerState]:
        """Every host whose breaker is open or half-open, with its state."""
        states = {host: self.state(host) for host in list(self._hosts)}
        return {host: state for host, state in states.items() if state is not BreakerState.CLOSED}

    def open_hosts(self) -> int:
        return sum(1 for host in self._hosts if self.state(host) is not BreakerState.CLOSED)

"""The change feed: LISTEN for the triggers' notifications and pass them on.

One dedicated connection per process listens on `tragwerk_changes` (migration 0003).
Every notification becomes `on_change(table, ids)`; `ids` is None for "all rows".
While the connection is down nothing can be trusted, so `on_state(False)` is called
at once, and `on_state(True)` only after LISTEN is in place again: the caches drop
everything on both edges. Reconnects back off exponentially with jitter, capped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from tragwerk.domain.observability import ModuleReporter

CHANNEL = "tragwerk_changes"
APPLICATION_NAME = "tragwerk-changes"

log = logging.getLogger(__name__)


def plain_url(url: str) -> str:
    """asyncpg wants postgresql://, not SQLAlchemy's postgresql+asyncpg://."""
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


@dataclass
class ChangeFeed:
    url: str
    on_change: Callable[[str, list[Any] | None], None]
    on_state: Callable[[bool], None]
    reporter: ModuleReporter
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    probe_interval: float = 5.0
    random: random.Random = field(default_factory=random.Random)
    connected: bool = False
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_connected(self, within: float = 5.0) -> bool:
        """Wait up to `within` seconds for the first connection; False if not made yet."""
        try:
            await asyncio.wait_for(self._ready.wait(), within)
        except TimeoutError:
            log.warning("change feed not connected yet; caches stay off until it is")
            return False
        return True

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff (run under the supervisor)."""
        self.reporter.set_healthy(False)
        delay = self.backoff_initial
        try:
            while True:
                try:
                    await self._listen_once()
                    delay = self.backoff_initial  # it was up: start backing off afresh
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - any failure means: reconnect; logged
                    log.warning("change feed connection failed: %r", exc)
                    self.reporter.count("connect_failed")
                self._set_state(False)
                sleep = min(self.backoff_max, delay) * (0.5 + self.random.random())
                await asyncio.sleep(sleep)
                delay = min(self.backoff_max, delay * 2)
        finally:
            # Ended (stopped, or crashed in a callback): nothing announced can be trusted.
            self._set_state(False)

    async def _listen_once(self) -> None:
        lost = asyncio.Event()
        conn = await asyncpg.connect(
            plain_url(self.url), server_settings={"application_name": APPLICATION_NAME}
        )
        try:
            conn.add_termination_listener(lambda _c: lost.set())
            await conn.add_listener(CHANNEL, self._on_notification)
            self.reporter.count("connected")
            self._set_state(True)
            self._ready.set()
            while not lost.is_set():
                try:
                    await asyncio.wait_for(lost.wait(), self.probe_interval)
                except TimeoutError:
                    # A half-open connection never reports its end: probe it.
                    await conn.fetchval("SELECT 1", timeout=self.probe_interval)
            log.warning("change feed connection lost")
        finally:
            if not conn.is_closed():
                conn.terminate()

    def _set_state(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        self.reporter.set_healthy(connected)
        self.on_state(connected)

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
            table = message["table"]
            ids = message["ids"]
        except (ValueError, KeyError, TypeError):
            log.error("unreadable change notification: %r", payload)
            self.reporter.count("unreadable")
            return
        self.reporter.count("notification")
        self.on_change(table, ids)

"""Every tragwerk process records itself in PostgreSQL: who runs, where, in what state.

A process (`tragwerk api` worker process, `tragwerk worker`, `tragwerk up`) inserts its
row when it starts, beats every `interval` seconds with its module states, and marks
itself stopped on a clean stop. One that stops beating without stopping (SIGKILL, a
dead host) is shown `lost` after three intervals: the support team sees it in
GET /v1/admin/instances and on /ops without reading any metrics.

The heartbeat runs under the process's supervisor; a failed beat (the database
restarting) is logged and the next one tries again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tragwerk.store.queries import Row, read_only

log = logging.getLogger(__name__)

LOST_AFTER_BEATS = 3  # missed heartbeats before an instance counts as lost
KEEP = timedelta(days=1)  # rows are deleted this long after their last heartbeat

_REGISTER = text(
    """
    INSERT INTO instances (id, role, host, pid, version, address, modules)
    VALUES (:id, :role, :host, :pid, :version, :address, CAST(:modules AS jsonb))
    ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), modules = excluded.modules,
                                   stopped_at = NULL
    """
)
_BEAT = text(
    "UPDATE instances SET heartbeat_at = now(), modules = CAST(:modules AS jsonb) WHERE id = :id"
)
_STOPPED = text(
    "UPDATE instances SET heartbeat_at = now(), stopped_at = now(), "
    "modules = CAST(:modules AS jsonb) WHERE id = :id"
)
_PRUNE = text("DELETE FROM instances WHERE heartbeat_at < now() - CAST(:keep AS interval)")
_LIST = text(
    """
    SELECT id, role, host, pid, version, address, started_at, heartbeat_at, stopped_at,
           modules,
           CASE WHEN stopped_at IS NOT NULL THEN 'stopped'
                WHEN heartbeat_at < now() - CAST(:lost_after AS interval) THEN 'lost'
                ELSE 'up' END AS state,
           extract(epoch FROM now() - heartbeat_at)::float8 AS silent_seconds
    FROM instances
    ORDER BY (stopped_at IS NOT NULL), role, host, started_at
    """
)


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


class InstanceStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._reader = read_only(engine)

    async def listing(self, interval: float) -> list[Row]:
        """Every recorded instance with its state: up, lost (no heartbeat for three
        intervals) or stopped."""
        lost_after = timedelta(seconds=interval * LOST_AFTER_BEATS)
        async with self._reader.connect() as conn:
            rows = (await conn.execute(_LIST, {"lost_after": lost_after})).mappings()
            return [
                {
                    **row,
                    "id": str(row["id"]),
                    # A text() query leaves jsonb as its text.
                    "modules": _json(row["modules"]),
                }
                for row in rows
            ]

    async def execute(self, statement: Any, params: dict[str, Any]) -> int:
        """Run one statement in its own transaction; the number of rows it touched."""
        async with self._engine.begin() as conn:
            return int((await conn.execute(statement, params)).rowcount)


@dataclass
class InstanceRecorder:
    """This process's row: registered at the first beat, beaten, marked stopped."""

    store: InstanceStore
    role: str
    version: str
    states: Callable[[], Awaitable[dict[str, Any]]]  # module -> state, read at each beat
    interval: float = 10.0
    address: str | None = None
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    registered: bool = False
    _beats: int = 0

    def _params(self, modules: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.id, "modules": orjson.dumps(modules).decode()}

    async def beat(self) -> None:
        modules = await self.states()
        if self.registered and await self.store.execute(_BEAT, self._params(modules)) == 0:
            self.registered = False  # the row is gone (a restored database, a hand)
        if not self.registered:
            params = {
                **self._params(modules),
                "role": self.role,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "version": self.version,
                "address": self.address,
            }
            await self.store.execute(_REGISTER, params)
            self.registered = True
        self._beats += 1
        if self._beats % 360 == 1:  # at start, then about hourly
            await self.store.execute(_PRUNE, {"keep": KEEP})

    async def run(self) -> None:
        """Beat until cancelled; a failed beat is logged and tried again next time."""
        while True:
            try:
                await self.beat()
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                log.warning("instance heartbeat failed: %r", exc)
            await asyncio.sleep(self.interval)

    async def stopped(self) -> None:
        """Mark this instance stopped (a clean stop); failures only logged."""
        if not self.registered:
            return
        try:
            async with asyncio.timeout(5):
                await self.store.execute(_STOPPED, self._params(await self.states()))
        except Exception as exc:  # noqa: BLE001 - it will show as lost instead
            log.warning("could not mark the instance stopped: %r", exc)

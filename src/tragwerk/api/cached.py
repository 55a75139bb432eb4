"""The API's reads that go through the cache: reference lists and token lookups.

Reference lists are kept as the exact response bytes, so a hit costs no query and
no serialisation; single items are looked up in the same snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from tragwerk.api.responses import OPTIONS
from tragwerk.cache.caches import Caches
from tragwerk.cache.tagged import ALL, Loaded
from tragwerk.domain.directory import Principal
from tragwerk.store.queries import Row
from tragwerk.store.queries.directory import DirectoryStore, hash_token, principal_of


@dataclass(frozen=True)
class Snapshot:
    """One reference table as rows, as response bytes, and by key."""

    rows: list[Row]
    body: bytes
    by_key: dict[object, Row]


@dataclass(frozen=True)
class _Owner:
    principal: Principal
    expires_at: float | None  # POSIX seconds: time.time() is ~10x cheaper than datetime.now()


REFERENCE_KEYS = {"roles": "id", "locations": "id", "countries": "code"}


class CachedReads:
    def __init__(
        self,
        caches: Caches,
        directory: DirectoryStore,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.caches = caches
        self._directory = directory
        self._now = now
        self._loaders: dict[str, Callable[[], Awaitable[list[Row]]]] = {
            "roles": directory.roles,
            "locations": directory.locations,
            "countries": directory.countries,
        }

    async def reference(self, table: str) -> Snapshot:
        async def load() -> Loaded[Snapshot]:
            rows = await self._loaders[table]()
            key = REFERENCE_KEYS[table]
            snapshot = Snapshot(
                rows, orjson.dumps(rows, option=OPTIONS), {row[key]: row for row in rows}
            )
            return Loaded(snapshot, frozenset({(table, ALL)}))

        snapshot: Snapshot = await self.caches.reference.get(table, load)
        return snapshot

    async def principal(self, token: str) -> Principal | None:
        token_hash = hash_token(token)

        async def load() -> Loaded[_Owner | None]:
            row = await self._directory.token_owner(token_hash)
            if row is None:
                # Unknown tokens are not remembered: a token created a moment later
                # must work at once, and floods of wrong tokens are the limiter's job.
                return Loaded(None, keep=False)
            tags: set[tuple[str, Any]] = {
                ("api_tokens", row["token_id"]),
                ("roles", row["role_id"]),
            }
            if row["user_id"] is not None:
                tags.add(("users", row["user_id"]))
            if row["service_client_id"] is not None:
                tags.add(("service_clients", row["service_client_id"]))
            expires: datetime | None = row["expires_at"]
            owner = _Owner(principal_of(row), expires.timestamp() if expires else None)
            return Loaded(owner, frozenset(tags))

        owner: _Owner | None = await self.caches.principals.get(token_hash, load)
        return self._valid(owner)

    def principal_cached(self, token: str) -> Principal | None:
        """The principal of a token already in the cache and not expired; None otherwise
        (then `await principal(token)`, which looks it up). No coroutine on a hit."""
        return self._valid(self.caches.principals.peek(hash_token(token)))

    def _valid(self, owner: _Owner | None) -> Principal | None:
        if owner is None:
            return None
        if owner.expires_at is not None and owner.expires_at <= self._now():
            return None
        return owner.principal

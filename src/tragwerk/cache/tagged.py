"""An in-process cache whose entries are tagged with the rows they were built from.

- `peek(key)`: the value if cached, without a coroutine; None otherwise.
- `get(key, load)`: a hit returns at once; concurrent misses for one key share one
  load (no stampede); a load that raced with an invalidation is returned to its
  callers but not stored, so a stale value is never kept.
- `invalidate(table, ids)`: drops every entry tagged with one of those rows, or with
  the whole table; `ids=None` means every row of the table.
- While disabled (no change feed, or TRAGWERK_CACHE=off) every `get` loads: without
  notifications, memory cannot be trusted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tragwerk.domain.observability import ModuleReporter

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# A tag names the rows an entry depends on: ("locations", 7), or ("locations", ALL).
ALL = "*"
Tag = tuple[str, object]


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a failed load's exception as seen; the callers awaiting it re-raise it."""
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True)
class Loaded(Generic[V]):
    """What a loader returns: the value, the rows it depends on, and whether to keep it."""

    value: V
    tags: frozenset[Tag] = frozenset()
    keep: bool = True


@dataclass
class _Entry(Generic[V]):
    value: V
    tags: frozenset[Tag]
    stored_at: float


@dataclass
class TaggedCache(Generic[K, V]):
    reporter: ModuleReporter
    ttl_seconds: float = 300.0
    clock: Callable[[], float] = time.monotonic
    enabled: bool = False
    _entries: dict[K, _Entry[V]] = field(default_factory=dict)
    _by_tag: dict[Tag, set[K]] = field(default_factory=dict)
    _loading: dict[K, asyncio.Future[V]] = field(default_factory=dict)
    _generation: int = 0

    def __post_init__(self) -> None:
        self.reporter.observe("entries", lambda: float(len(self._entries)))
        self.reporter.observe("oldest_entry_age_seconds", self.oldest_age)

    def peek(self, key: K) -> V | None:
        """The cached value, or None when it is not cached (then `await get(...)`).

        Synchronous: the hottest look-up (a request's token) costs no coroutine when
        it hits. Counted as a hit; a miss is counted by the `get` that follows.
        """
        if not self.enabled:
            return None
        entry = self._entries.get(key)
        if entry is None or self.clock() - entry.stored_at >= self.ttl_seconds:
            return None
        self.reporter.count("hit")
        return entry.value

    async def get(self, key: K, load: Callable[[], Awaitable[Loaded[V]]]) -> V:
        if not self.enabled:
            self.reporter.count("bypass")
            return (await load()).value
        entry = self._entries.get(key)
        if entry is not None:
            if self.clock() - entry.stored_at < self.ttl_seconds:
                self.reporter.count("hit")
                return entry.value
            self.reporter.count("expired")
            self._drop(key)
        pending = self._loading.get(key)
        if pending is None:
            self.reporter.count("miss")
            # The load runs as a task of its own: a caller that goes away (a client
            # disconnecting) does not cancel it for the others waiting on it.
            pending = asyncio.ensure_future(self._load(key, load, self._generation))
            pending.add_done_callback(_retrieve)
            self._loading[key] = pending
        else:
            self.reporter.count("coalesced")
        return await asyncio.shield(pending)

    async def _load(self, key: K, load: Callable[[], Awaitable[Loaded[V]]], generation: int) -> V:
        try:
            loaded = await load()
        finally:
            del self._loading[key]
        self.reporter.count("load")
        # Stored only if nothing was invalidated meanwhile: the load may have read
        # the rows before a change whose notification has already been applied.
        if loaded.keep and self.enabled and generation == self._generation:
            self._store(key, loaded)
        return loaded.value

    def _store(self, key: K, loaded: Loaded[V]) -> None:
        self._drop(key)
        self._entries[key] = _Entry(loaded.value, loaded.tags, self.clock())
        for tag in loaded.tags:
            self._by_tag.setdefault(tag, set()).add(key)

    def _drop(self, key: K) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        for tag in entry.tags:
            keys = self._by_tag.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_tag[tag]

    def invalidate(self, table: str, ids: Iterable[object] | None) -> None:
        """Drop what depends on these rows of `table` (all rows when ids is None)."""
        self._generation += 1
        self.reporter.count("invalidation")
        doomed: set[K] = set(self._by_tag.get((table, ALL), ()))
        if ids is None:
            for (tag_table, _), keys in self._by_tag.items():
                if tag_table == table:
                    doomed |= keys
        else:
            for row_id in ids:
                doomed |= self._by_tag.get((table, row_id), set())
        for key in doomed:
            self._drop(key)
        if doomed:
            self.reporter.count("dropped", len(doomed))

    def clear(self) -> None:
        self._generation += 1
        self._entries.clear()
        self._by_tag.clear()
        self.reporter.count("cleared")

    def set_enabled(self, enabled: bool) -> None:
        """Enable or disable; either way the contents are dropped (they may be stale)."""
        self.clear()
        self.enabled = enabled

    def oldest_age(self) -> float:
        if not self._entries:
            return 0.0
        now = self.clock()
        return max(now - e.stored_at for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

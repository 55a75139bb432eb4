"""The process's caches, invalidated together by the change feed or a local write."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tragwerk.cache.tagged import TaggedCache
from tragwerk.domain.observability import ModuleReporter


@dataclass
class Caches:
    """Reference data (roles, locations, countries) and token -> principal lookups."""

    reference: TaggedCache[str, Any]
    principals: TaggedCache[bytes, Any]

    @classmethod
    def create(
        cls,
        reference_reporter: ModuleReporter,
        principal_reporter: ModuleReporter,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> Caches:
        return cls(
            reference=TaggedCache(reference_reporter, ttl_seconds, clock),
            principals=TaggedCache(principal_reporter, ttl_seconds, clock),
        )

    def changed(self, table: str, ids: Iterable[object] | None) -> None:
        """Rows of `table` changed (all of them when ids is None): drop what used them."""
        id_list = None if ids is None else list(ids)
        self.reference.invalidate(table, id_list)
        self.principals.invalidate(table, id_list)

    def set_enabled(self, enabled: bool) -> None:
        self.reference.set_enabled(enabled)
        self.principals.set_enabled(enabled)

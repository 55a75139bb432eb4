"""What a budget asks of its store of sliding windows, in memory or in Redis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from limits import RateLimitItem

# (limit, key, tokens wanted, fewest worth granting): grant min(wanted, free), or
# nothing when fewer than `fewest` are free.
Ask = tuple[RateLimitItem, str, int, int]
# (tokens granted, tokens left in the window after the grant, seconds until `fewest`
# tokens are free again, or until the window ends when some were granted)
Grant = tuple[int, int, float]


class WindowStore(Protocol):
    async def reserve(self, asks: Sequence[Ask]) -> list[Grant]:
        """One grant per ask, in order; several asks may cost one round trip."""
        ...

    async def close(self) -> None: ...

"""Sliding windows in Redis, reserved from in one script call per client and one
round trip per set of clients.

Why not the `limits` library's Redis strategy, which tragwerk used before: a
reservation needs "grant up to N, at least M, and say what is left", and `limits`
offers `hit` (all or nothing) and `get_window_stats` as separate calls, so a
reservation was one to four round trips; nor can several clients' calls share one.
A round trip costs the API process ~260 µs of CPU on the two-core benchmark machine
(most of it the kernel waking Redis), so round trips per request are what the
shared budget's cost on the hot path comes down to (docs/decisions/0005).

The arithmetic is that of `limits`' sliding-window counter and of
`tragwerk.ratelimit.local_windows` (the same tests run against both): the previous
window's count, weighted by how much of it still overlaps, plus the current one.
Windows are aligned to multiples of their length on Redis's clock (`TIME`), so
every instance agrees on them whatever its own clock says.
"""

from __future__ import annotations

from collections.abc import Sequence

from limits import RateLimitItem
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from tragwerk.ratelimit.windows import Ask, Grant

# KEYS[1]: the client's hash (fields w: window index, c: current count, p: previous).
# ARGV: limit, window length in ms, tokens wanted, fewest worth granting.
# Returns {granted, left in the window after the grant, ms until `fewest` are free}.
RESERVE = """
local limit = tonumber(ARGV[1])
local length = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local fewest = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local index = math.floor(now / length)
local start = index * length
local h = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local w = tonumber(h[1])
local current = tonumber(h[2]) or 0
local previous = tonumber(h[3]) or 0
if w ~= index then
  if w == index - 1 then previous = current else previous = 0 end
  current = 0
end
local elapsed = now - start
local free = math.floor(limit - (previous * (length - elapsed) / length + current))
local granted = 0
if free >= fewest then granted = math.min(want, free) end
current = current + granted
redis.call('HSET', KEYS[1], 'w', index, 'c', current, 'p', previous)
redis.call('PEXPIRE', KEYS[1], 2 * length)
local wait = start + length - now
if granted == 0 and previous > 0 and current + fewest <= limit then
  -- the previous window slides out linearly: wait until enough of it has
  wait = math.ceil(length * (1 - (limit - fewest - current) / previous)) - elapsed
end
if wait < 1 then wait = 1 end
local left = free - granted
if left < 0 then left = 0 end
return {granted, left, wait}
"""


class RedisWindows:
    """`reserve()` against Redis: one EVALSHA per ask, all asks in one pipeline."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._sha: str | None = None

    async def reserve(self, asks: Sequence[Ask]) -> list[Grant]:
        """Grants in the order of `asks`; raises the client's error if Redis fails."""
        sha = self._sha or await self._load()
        try:
            return await self._run(sha, asks)
        except NoScriptError:  # Redis restarted or flushed its scripts: load it again
            return await self._run(await self._load(), asks)

    async def _load(self) -> str:
        self._sha = sha = await self.redis.script_load(RESERVE)
        return sha

    async def _run(self, sha: str, asks: Sequence[Ask]) -> list[Grant]:
        if len(asks) == 1:  # the usual foreground ask: no pipeline object
            return [_grant(await self.redis.evalsha(sha, 1, *_arguments(asks[0])))]
        pipe = self.redis.pipeline(transaction=False)
        for ask in asks:
            pipe.evalsha(sha, 1, *_arguments(ask))
        return [_grant(reply) for reply in await pipe.execute()]

    async def close(self) -> None:
        await self.redis.aclose()


def _arguments(ask: Ask) -> tuple[str, int, int, int, int]:
    limit, key, want, fewest = ask
    length_ms = int(limit.get_expiry() * 1000)
    # The window length is part of the key: a limit changed to another period starts
    # a fresh window instead of misreading the old one's counts.
    return f"{key}:{length_ms}", limit.amount, length_ms, want, fewest


def _grant(reply: list[int]) -> Grant:
    granted, left, wait_ms = reply
    return int(granted), int(left), int(wait_ms) / 1000


def window_key(limit: RateLimitItem, key: str) -> str:
    """The Redis key of `key`'s window under `limit` (tests and operators)."""
    return _arguments((limit, key, 0, 0))[0]

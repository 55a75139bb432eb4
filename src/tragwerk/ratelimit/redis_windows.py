"""Sliding windows in Redis, reserved from for many clients in one script call.

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

One call carries many clients' keys, which a Redis Cluster refuses unless they share
a hash slot: tragwerk's budgets live on one Redis server (with replicas, if wanted).
"""

from __future__ import annotations

from collections.abc import Sequence

from limits import RateLimitItem
from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from tragwerk.ratelimit.windows import Ask, Grant

# KEYS: one hash per client (fields w: window index, c: current count, p: previous).
# ARGV[1]: four numbers per key, separated by spaces: limit, window length in ms,
# tokens wanted, fewest worth granting (one argument: redis-py encodes each argument
# in Python, and for many keys that cost more than the whole round trip).
# Returns three per key: granted, left in the window after the grant, ms until
# `fewest` are free. One call for many clients: a command costs the API process far
# more than a loop iteration costs Redis (docs/decisions/0005).
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = {}
for number in string.gmatch(ARGV[1], '%d+') do n[#n + 1] = tonumber(number) end
local out = {}
for i, key in ipairs(KEYS) do
  local a = (i - 1) * 4
  local limit = n[a + 1]
  local length = n[a + 2]
  local want = n[a + 3]
  local fewest = n[a + 4]
  local index = math.floor(now / length)
  local start = index * length
  local h = redis.call('HMGET', key, 'w', 'c', 'p')
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
  redis.call('HSET', key, 'w', index, 'c', current, 'p', previous)
  redis.call('PEXPIRE', key, 2 * length)
  local wait = start + length - now
  if granted == 0 and previous > 0 and current + fewest <= limit then
    -- the previous window slides out linearly: wait until enough of it has
    wait = math.ceil(length * (1 - (limit - fewest - current) / previous)) - elapsed
  end
  if wait < 1 then wait = 1 end
  local left = free - granted
  if left < 0 then left = 0 end
  out[#out + 1] = granted
  out[#out + 1] = left
  out[#out + 1] = wait
end
return out
"""

# Clients per script call: a call runs alone in Redis, so a very long one would hold
# up every other client of the server; 256 take well under a millisecond there.
KEYS_PER_CALL = 256


class RedisWindows:
    """`reserve()` against Redis: one EVALSHA for up to KEYS_PER_CALL asks."""

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
        if len(asks) <= KEYS_PER_CALL:  # the usual case: one command, no pipeline object
            return _grants(await self.redis.evalsha(sha, len(asks), *_arguments(asks)))
        pipe = self.redis.pipeline(transaction=False)
        for first in range(0, len(asks), KEYS_PER_CALL):
            part = asks[first : first + KEYS_PER_CALL]
            pipe.evalsha(sha, len(part), *_arguments(part))
        return [grant for reply in await pipe.execute() for grant in _grants(reply)]

    async def close(self) -> None:
        await self.redis.aclose()


def _arguments(asks: Sequence[Ask]) -> list[str]:
    """The script's KEYS, then its one ARGV: four numbers per ask, in the same order."""
    keys = []
    numbers = []
    for limit, key, want, fewest in asks:
        length_ms = int(limit.get_expiry() * 1000)
        # The window length is part of the key: a limit changed to another period
        # starts a fresh window instead of misreading the old one's counts.
        keys.append(f"{key}:{length_ms}")
        numbers.append(f"{limit.amount} {length_ms} {want} {fewest}")
    keys.append(" ".join(numbers))
    return keys


def _grants(reply: list[int]) -> list[Grant]:
    return [
        (int(reply[i]), int(reply[i + 1]), int(reply[i + 2]) / 1000)
        for i in range(0, len(reply), 3)
    ]


def window_key(limit: RateLimitItem, key: str) -> str:
    """The Redis key of `key`'s window under `limit` (tests and operators)."""
    return _arguments([(limit, key, 0, 0)])[0]

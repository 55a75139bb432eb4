"""The notation of one rate limit, checked strictly before the limits library reads it.

The library reads '0/minute' as a limit that refuses everything, '1/0 second' as one
per second, and '10/minute;5/second' as two limits of which tragwerk would apply the
first: none of them is what the person who wrote it meant. Accepted here: one rate,
a positive count per an optional positive number of one unit.
"""

from __future__ import annotations

import re

_RATE = re.compile(
    r"\s*(?P<amount>\d+)\s*(?:/|\s+per\s+)\s*(?P<multiples>\d+\s*)?"
    r"(?P<unit>second|minute|hour|day|month|year)s?\s*",
    re.IGNORECASE,
)


def rate_problem(text: str) -> str | None:
    """Why `text` is not one positive rate like '1200/minute' or '100 per 10 minutes'."""
    match = _RATE.fullmatch(text)
    if match is None:
        return f"{text!r} is not one rate like '1200/minute' or '100 per 10 minutes'"
    if int(match["amount"]) < 1:
        return f"{text!r} allows nothing; the count must be at least 1"
    if match["multiples"] is not None and int(match["multiples"]) < 1:
        return f"{text!r} has a window of zero; the number of units must be at least 1"
    return None

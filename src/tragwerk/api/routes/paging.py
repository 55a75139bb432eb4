"""Shared query parameters and helpers of paged listings and versioned writes."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Path, Query

from tragwerk.api.errors import PreconditionFailed, PreconditionRequired
from tragwerk.api.services import Services
from tragwerk.domain.errors import InvalidInput, StaleVersion
from tragwerk.store.queries import Row

PathId = Annotated[int, Path(ge=1, le=2**63 - 1)]
Cursor = Annotated[
    str | None, Query(max_length=512, description="next_cursor of the previous page")
]
Limit = Annotated[
    int | None, Query(ge=1, description="Page size (default 50, at most TRAGWERK_PAGE_SIZE_MAX)")
]

_ETAG = re.compile(r'^\s*(?:W/)?"?(\d{1,10})"?\s*$')


def page_size(svc: Services, limit: int | None) -> int:
    settings = svc.settings
    if limit is None:
        return settings.page_size_default
    if limit > settings.page_size_max:
        raise InvalidInput(f"limit must be at most {settings.page_size_max}, got {limit}")
    return limit


def page(items: list[Any], next_cursor: str | None) -> dict[str, Any]:
    return {"items": items, "next_cursor": next_cursor}


def etag(version: int) -> str:
    return f'"{version}"'


def expected_version(body_version: int | None, if_match: str | None) -> tuple[int, bool]:
    """The version a write expects, and whether it came from If-Match (412 semantics)."""
    if if_match is not None:
        match = _ETAG.match(if_match)
        if match is None:
            raise InvalidInput('If-Match must name one version, like "3"')
        version = int(match.group(1))
        if body_version is not None and body_version != version:
            raise InvalidInput("If-Match and the body's version disagree")
        return version, True
    if body_version is None:
        raise PreconditionRequired
    return body_version, False


async def versioned(
    write: Callable[[int], Awaitable[Row]], body_version: int | None, if_match: str | None
) -> Row:
    """Run a write that must name the version it is based on (428 without one).

    A stale version is 409, or 412 when it came as If-Match (RFC 9110 semantics).
    """
    version, from_header = expected_version(body_version, if_match)
    try:
        return await write(version)
    except StaleVersion as exc:
        if from_header:
            raise PreconditionFailed(exc.detail, exc.current_version) from None
        raise


async def versioned_optional(
    write: Callable[[int | None], Awaitable[Row]], body_version: int | None, if_match: str | None
) -> Row:
    """Like `versioned` for writes that commute: a version is checked only when given."""
    if body_version is None and if_match is None:
        return await write(None)
    return await versioned(write, body_version, if_match)

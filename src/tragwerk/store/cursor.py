"""Opaque keyset cursors: base64url of a small JSON naming the sort and the last row's key."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime

from tragwerk.domain.errors import InvalidCursor

MAX_CURSOR_LENGTH = 512


def encode(sort: str, key: datetime | int | None, row_id: int) -> str:
    payload = {"s": sort, "k": key.isoformat() if isinstance(key, datetime) else key, "i": row_id}
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_timestamp(cursor: str, sort: str) -> tuple[datetime, int]:
    """Return (timestamp, id) after the row the cursor names; InvalidCursor if it is not ours."""
    key, row_id = _decode(cursor, sort)
    if not isinstance(key, str):
        raise InvalidCursor("the cursor does not belong to this listing")
    try:
        stamp = datetime.fromisoformat(key)
    except ValueError:
        raise InvalidCursor("the cursor is malformed") from None
    if stamp.tzinfo is None:
        raise InvalidCursor("the cursor is malformed")
    return stamp, row_id


def decode_id(cursor: str, sort: str) -> int:
    _key, row_id = _decode(cursor, sort)
    return row_id


def _decode(cursor: str, sort: str) -> tuple[object, int]:
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise InvalidCursor("the cursor is too long to be one of ours")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError):
        raise InvalidCursor(
            "the cursor is malformed; pass back the value a page returned"
        ) from None
    if not isinstance(payload, dict) or set(payload) != {"s", "k", "i"}:
        raise InvalidCursor("the cursor is malformed; pass back the value a page returned")
    if payload["s"] != sort:
        raise InvalidCursor(
            f"the cursor was made for sort '{payload['s']}', not '{sort}'; start again without it"
        )
    row_id = payload["i"]
    if not isinstance(row_id, int) or isinstance(row_id, bool) or row_id < 0:
        raise InvalidCursor("the cursor is malformed")
    return payload["k"], row_id

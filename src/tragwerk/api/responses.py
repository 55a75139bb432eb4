"""JSON responses rendered with orjson from plain rows (no model round trip on hot paths)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

# SQLAlchemy row keys are str subclasses (quoted_name), which orjson accepts only with
# OPT_NON_STR_KEYS.
OPTIONS = orjson.OPT_NON_STR_KEYS


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=OPTIONS)


class ProblemJSON(JSON):
    media_type = "application/problem+json"

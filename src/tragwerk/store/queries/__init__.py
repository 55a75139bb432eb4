"""The hot queries, one module per area. Each names the index it relies on."""

from __future__ import annotations

from typing import Any

Row = dict[str, Any]

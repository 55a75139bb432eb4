"""`tragwerk gateway config`: print the HAProxy configuration for a set of API instances.

Kept apart from tragwerk.cli so that the command's options sit next to what they
render (tragwerk.scaling.gateway). docs/deployment.md shows it in use.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from tragwerk.scaling.gateway import GatewayConfig, parse_address, render


def add_parser(sub: Any) -> None:
    gateway = sub.add_parser("gateway", help="the HAProxy gateway in front of the API instances")
    gateway_sub = gateway.add_subparsers(dest="gateway_command", required=True, metavar="ACTION")
    config = gateway_sub.add_parser(
        "config",
        help="print a complete haproxy.cfg for the given API instances",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    config.add_argument(
        "--api",
        action="append",
        required=True,
        metavar="HOST:PORT",
        help="an API instance (`tragwerk api`); give it once per instance",
    )
    config.add_argument("--bind", default="0.0.0.0:8080", help="public address")
    config.add_argument(
        "--stats",
        default="127.0.0.1:8404",
        help="address of the stats page (/stats) and Prometheus exporter (/metrics); 'off'",
    )
    config.add_argument(
        "--socket", default="/run/haproxy/admin.sock", help="runtime API socket (drain, ready)"
    )
    config.add_argument(
        "--internal-network",
        action="append",
        default=[],
        metavar="CIDR",
        help="sources whose requests go first and reach /metrics, /health, /v1/admin",
    )
    config.add_argument(
        "--flood-rate", type=int, default=1000, help="requests per 10 s per source address"
    )
    config.add_argument("--maxconn", type=int, default=100, help="requests at once per instance")
    config.add_argument(
        "--queue-timeout", type=float, default=5.0, help="seconds a request may wait in the queue"
    )
    config.add_argument(
        "--check-interval", type=float, default=1.0, help="seconds between health checks"
    )
    config.add_argument(
        "--expose-ops",
        action="store_true",
        help="serve /metrics, /health/* and /v1/admin/* on the public address to everyone",
    )
    config.add_argument("--output", type=Path, metavar="FILE", help="write to FILE, not stdout")


def run(args: argparse.Namespace) -> int:
    try:
        config = GatewayConfig(
            servers=[parse_address(value, "--api") for value in args.api],
            bind=parse_address(args.bind, "--bind"),
            stats=None if args.stats == "off" else parse_address(args.stats, "--stats"),
            socket=args.socket,
            internal_networks=tuple(args.internal_network),
            flood_rate=args.flood_rate,
            maxconn_per_server=args.maxconn,
            queue_timeout_seconds=args.queue_timeout,
            check_interval_seconds=args.check_interval,
            expose_ops=args.expose_ops,
        )
    except ValueError as exc:
        print(f"tragwerk: {exc}", file=sys.stderr)
        return 2
    text = render(config)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    temporary = args.output.with_name(args.output.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, args.output)  # a running reload never reads half a file
    print(f"tragwerk: wrote {args.output} ({len(config.servers)} API instances)", file=sys.stderr)
    return 0

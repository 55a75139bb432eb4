"""`tragwerk reconcile [--since DURATION] [--dry-run]`: find and re-drive lost work.

Compares the last DURATION (default 1h) of case history with the queue and the
fanned-out events, and the fanned-out events with the webhook delivery log
(tragwerk.store.queries.reconcile); every gap is printed and, unless --dry-run, queued
again once. Exit status 0: nothing missing; 1: gaps found (and re-driven); 2: a bad
argument. Workers run the same check every TRAGWERK_RECONCILE_SECONDS by themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from datetime import timedelta
from pathlib import Path

from tragwerk.domain.observability import SilentReporter
from tragwerk.settings import Settings
from tragwerk.store.database import create_engine
from tragwerk.store.queries.cases import CaseStore
from tragwerk.store.queries.reconcile import Report, reconcile

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """'90s', '30m', '1h', '2d' (or a plain number of seconds); more than zero."""
    duration = parse_grace(text)
    if not duration:
        raise argparse.ArgumentTypeError("the duration must be positive")
    return duration


def parse_grace(text: str) -> timedelta:
    """A duration like parse_duration's, where 0 is allowed."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 30m, 1h, 2d)")
    return timedelta(seconds=float(match.group(1)) * UNITS[match.group(2) or "s"])


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "reconcile", help="find case events and webhook deliveries that went missing; re-drive"
    )
    parser.add_argument(
        "--since",
        type=parse_duration,
        default=timedelta(hours=1),
        help="how far back to compare (default 1h; at most TRAGWERK_JOB_LOG_RETENTION_HOURS)",
    )
    parser.add_argument("--dry-run", action="store_true", help="report gaps, queue nothing")
    parser.add_argument(
        "--grace",
        type=parse_grace,
        default=timedelta(minutes=2),
        help="leave changes younger than this alone (their jobs may not have run yet)",
    )
    parser.add_argument("--data-dir", type=Path, help="embedded database directory (./var)")


def run(settings: Settings, url: str, args: argparse.Namespace) -> int:
    keep = timedelta(hours=settings.job_log_retention_hours)
    if args.since > keep:
        print(
            f"tragwerk: --since {args.since} reaches past what is kept "
            f"(TRAGWERK_JOB_LOG_RETENTION_HOURS = {settings.job_log_retention_hours:g}): "
            "deliveries pruned since would show as gaps",
            file=sys.stderr,
        )
        return 2

    async def go() -> Report:
        engine = create_engine(url, pool_size=1)
        try:
            cases = CaseStore(engine, SilentReporter(), settings.sla_policy)
            return await reconcile(
                engine, cases.read_in, since=args.since, grace=args.grace, dry_run=args.dry_run
            )
        finally:
            await engine.dispose()

    report = asyncio.run(go())
    if report.skipped:
        print("tragwerk: another process is reconciling right now; try again", file=sys.stderr)
        return 1
    verb = "would queue again" if args.dry_run else "queued again"
    for event in report.missing_events:
        print(
            f"missing event   {event['event_id']}  {event['event_type']:<20} case "
            f"{event['case_id']} at {event['at']:%Y-%m-%d %H:%M:%S}: {verb}"
        )
    for gap in report.missing_deliveries:
        print(
            f"missing delivery {gap['event_id']}  {gap['event_type']:<20} subscription "
            f"{gap['subscription_id']}: {verb}"
        )
    for notice in report.missing_notifications:
        print(
            f"missing notice   {notice['event_id']}  {notice['event_type']:<20} user "
            f"{notice['user_id']}: {'would write again' if args.dry_run else 'written again'}"
        )
    print(
        f"tragwerk: {len(report.missing_events)} missing event(s), "
        f"{len(report.missing_notifications)} missing notification(s), "
        f"{len(report.missing_deliveries)} missing deliver(y/ies) in the last {args.since}",
        file=sys.stderr,
    )
    return 1 if report.gaps else 0

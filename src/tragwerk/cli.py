"""`tragwerk` commands: up, api, worker, jobs, token, gateway, migrate, seed. See
docs/commands.md."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tragwerk import cli_gateway, cli_reconcile
from tragwerk.settings import Settings, SettingsError

if TYPE_CHECKING:  # imported where used at run time: commands stay fast to start
    from tragwerk.store.queries.jobs import JobStore

T = TypeVar("T")

ADMIN_EMAIL = "admin@localhost"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tragwerk", description="Case management with a performance and scalability layer."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="start everything: database (embedded unless TRAGWERK_DATABASE_URL), migrations, API",
    )
    up.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    up.add_argument("--port", type=int, help="port to listen on (default 8000)")
    up.add_argument("--data-dir", type=Path, help="where the embedded database lives (./var)")

    api = sub.add_parser("api", help="serve the API against TRAGWERK_DATABASE_URL (scaled profile)")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.add_argument(
        "--workers", type=int, default=1, help="HTTP worker processes, respawned if they die (1)"
    )

    worker = sub.add_parser(
        "worker", help="run jobs (emails, notifications, webhooks, SLA monitor) from the queue"
    )
    worker.add_argument(
        "--concurrency", type=int, help="jobs run at once (default TRAGWERK_WORKER_CONCURRENCY, 50)"
    )
    worker.add_argument(
        "--batch",
        type=int,
        help="jobs claimed per statement (default TRAGWERK_WORKER_BATCH, or min(100, concurrency))",
    )
    worker.add_argument(
        "--autoscale",
        metavar="MIN:MAX",
        help="run between MIN and MAX worker processes, one more when a priority class waits"
        " past its budget (TRAGWERK_QUEUE_BUDGETS), one fewer when the queue is idle",
    )

    jobs = sub.add_parser(
        "jobs", help="held jobs: list them, queue them again; jobs of dead workers"
    )
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    held = jobs_sub.add_parser("held", help="list held jobs with their last error")
    held.add_argument("--limit", type=int, default=100)
    held.add_argument("--data-dir", type=Path, help="embedded database directory (./var)")
    orphaned = jobs_sub.add_parser(
        "orphaned", help="list jobs claimed by a worker that stopped sending heartbeats"
    )
    orphaned.add_argument("--limit", type=int, default=100)
    orphaned.add_argument("--data-dir", type=Path, help="embedded database directory (./var)")
    requeue = jobs_sub.add_parser("requeue", help="queue held jobs again (attempts reset)")
    requeue.add_argument("ids", nargs="*", type=int, help="job ids (see 'tragwerk jobs held')")
    requeue.add_argument("--all", action="store_true", help="every held job")
    requeue.add_argument("--data-dir", type=Path, help="embedded database directory (./var)")

    token = sub.add_parser("token", help="create or revoke API tokens from the command line")
    token_sub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = token_sub.add_parser(
        "create", help="a token for a user (created if missing); printed once, or --output"
    )
    create.add_argument("--user", required=True, metavar="EMAIL", help="the token's owner")
    create.add_argument(
        "--role", default="admin", help="role of a user created now (default admin)"
    )
    create.add_argument("--name", default="created by tragwerk token create")
    create.add_argument(
        "--expires", metavar="DURATION", help="lifetime, e.g. 30d, 12h, 90m (default: none)"
    )
    create.add_argument(
        "--output", type=Path, metavar="FILE", help="write the token to FILE (mode 0600)"
    )
    create.add_argument("--data-dir", type=Path, help="embedded database directory (./var)")
    revoke = token_sub.add_parser("revoke", help="revoke tokens by id, or every token of a user")
    revoke.add_argument("ids", nargs="*", type=int, help="token ids (GET /v1/tokens?all=true)")
    revoke.add_argument("--user", metavar="EMAIL", help="every live token of this user")
    revoke.add_argument("--data-dir", type=Path, help="embedded database directory (./var)")

    cli_gateway.add_parser(sub)
    cli_reconcile.add_parser(sub)

    migrate = sub.add_parser("migrate", help="bring the database schema up to date")
    migrate.add_argument("--data-dir", type=Path, help="embedded database directory (./var)")

    seed = sub.add_parser("seed", help="fill the database with realistic data, fast (COPY)")
    seed.add_argument("--cases", type=int, required=True, help="how many cases to add")
    seed.add_argument("--users", type=int, help="seeded agents wanted (default cases/200)")
    seed.add_argument("--random-seed", type=int, default=7)
    seed.add_argument("--data-dir", type=Path, help="embedded database directory (./var)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911, PLR0912 - one per command
    args = _parser().parse_args(argv)
    if args.command == "gateway":  # needs no settings, no database
        return cli_gateway.run(args)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"tragwerk: {exc}", file=sys.stderr)
        return 2
    overrides: dict[str, object] = {}
    for name in ("host", "port", "data_dir"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    settings = settings.with_overrides(**overrides)

    from tragwerk.monitoring.logging import configure_logging

    configure_logging(settings.log_level)
    command = args.command
    if command == "up":
        return _up(settings)
    if command == "api":
        return _api(settings, args.workers)
    if command == "worker":
        if args.batch is not None and args.batch < 1:
            print("tragwerk: --batch must be at least 1", file=sys.stderr)
            return 2
        if args.batch is not None:
            settings = settings.with_overrides(worker_batch=args.batch)
        return _worker(settings, args.concurrency or settings.worker_concurrency, args.autoscale)
    if command == "jobs":
        if args.jobs_command == "held":
            return _with_database(settings, lambda url: _jobs_held(url, args.limit))
        if args.jobs_command == "orphaned":
            timeout = timedelta(seconds=settings.job_heartbeat_timeout_seconds)
            return _with_database(settings, lambda url: _jobs_orphaned(url, timeout, args.limit))
        if bool(args.ids) == bool(args.all):
            print("tragwerk: give job ids or --all", file=sys.stderr)
            return 2
        ids = None if args.all else args.ids
        return _with_database(settings, lambda url: _jobs_requeue(url, ids))
    if command == "reconcile":
        return _with_database(settings, lambda url: cli_reconcile.run(settings, url, args))
    if command == "token":
        return _token_command(settings, args)
    if command == "migrate":
        return _with_database(settings, _migrate)
    if command == "seed":
        if args.cases < 1:
            print("tragwerk: --cases must be at least 1", file=sys.stderr)
            return 2
        return _with_database(
            settings, lambda url: _seed(settings, url, args.cases, args.users, args.random_seed)
        )
    raise AssertionError(command)  # argparse refuses unknown commands


def _with_database(settings: Settings, run: object) -> int:
    """Run `run(url)` against the configured database, starting the embedded one if needed.

    SIGTERM and Ctrl-C unwind through here at any point, so the embedded PostgreSQL is
    stopped on the way out; while it is starting or stopping they wait until it has.
    """
    from tragwerk.store.embedded import EmbeddedPostgres

    assert callable(run)
    embedded = None
    url = settings.database_url
    previous = _catch_stop_signals()
    try:
        if url is None:
            embedded = EmbeddedPostgres(settings.data_dir)
            print(
                f"tragwerk: starting the embedded PostgreSQL in {settings.data_dir.resolve()}",
                file=sys.stderr,
            )
            with _stop_deferred():
                url = embedded.start()
        result = run(url)
        return int(result) if isinstance(result, int) else 0
    except _Stop:
        print("tragwerk: stopped", file=sys.stderr)
        return 0
    finally:
        if embedded is not None:
            with _stop_deferred():
                embedded.stop()
        _restore_signals(previous)


def _migrate(url: str) -> int:
    from tragwerk.store.database import create_engine
    from tragwerk.store.migrate import current_revision, upgrade

    async def go() -> None:
        engine = create_engine(url, pool_size=1, max_overflow=0)
        try:
            await upgrade(engine)
            print(f"tragwerk: schema at revision {await current_revision(engine)}", file=sys.stderr)
        finally:
            await engine.dispose()

    asyncio.run(go())
    return 0


def _seed(settings: Settings, url: str, cases: int, users: int | None, random_seed: int) -> int:
    from tqdm import tqdm

    from tragwerk.store.database import create_engine
    from tragwerk.store.migrate import upgrade
    from tragwerk.store.seed import seed

    async def go() -> None:
        engine = create_engine(url, pool_size=1, max_overflow=0)
        try:
            await upgrade(engine)
            started = time.monotonic()
            with tqdm(total=cases, unit="case", unit_scale=True, desc="copying") as bar:
                await seed(
                    engine,
                    cases,
                    sla=settings.sla_policy,
                    users=users,
                    random_seed=random_seed,
                    progress=bar.update,
                    phase=lambda text: bar.write(f"tragwerk: {text}", file=sys.stderr),
                )
            print(
                f"tragwerk: seeded {cases:,} cases in {time.monotonic() - started:.1f} s",
                file=sys.stderr,
            )
        finally:
            await engine.dispose()

    asyncio.run(go())
    return 0


async def _ensure_admin(url: str, token_file: Path) -> str | None:
    """On first start create an admin user and write its token to `token_file` (0600)."""
    from sqlalchemy import func, select

    from tragwerk.monitoring.metrics import Metrics
    from tragwerk.store.database import create_engine
    from tragwerk.store.queries.directory import DirectoryStore
    from tragwerk.store.tables import users

    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        directory = DirectoryStore(engine, Metrics().module("directory"))
        async with engine.begin() as conn:
            if await conn.scalar(select(func.count()).select_from(users)):
                return None
            role_id = await directory.role_id(conn, "admin")
            admin = await directory.create_user(
                {"email": ADMIN_EMAIL, "name": "Administrator", "role_id": role_id}, conn=conn
            )
            token, _row = await directory.create_token(
                name="created by tragwerk up",
                user_id=admin["id"],
                service_client_id=None,
                expires_at=None,
                conn=conn,
            )
            # Written before commit: if writing fails, no admin exists without its token.
            token_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(token + "\n")
            os.chmod(token_file, 0o600)
        return token
    finally:
        await engine.dispose()


class _Stop(Exception):
    """SIGTERM or Ctrl-C arrived; unwind so that the embedded PostgreSQL is stopped."""


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_deferral = {"active": False, "pending": False}


def _on_stop_signal(_signum: int, _frame: object) -> None:
    if _deferral["active"]:
        _deferral["pending"] = True
        return
    raise _Stop


def _catch_stop_signals() -> dict[int, Any]:
    return {sig: signal.signal(sig, _on_stop_signal) for sig in _STOP_SIGNALS}


def _restore_signals(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@contextlib.contextmanager
def _stop_deferred() -> Iterator[None]:
    """Hold a stop signal until the block is done (starting or stopping a database:
    interrupted half-way, it could be left running with nobody to stop it)."""
    _deferral["active"] = True
    try:
        yield
    finally:
        _deferral["active"] = False
    if _deferral["pending"]:
        _deferral["pending"] = False
        raise _Stop


def _serve(settings: Settings, url: str, *, workers: int = 1, with_worker: bool = False) -> int:
    """Serve through granian until SIGTERM or Ctrl-C (tragwerk.api.serving)."""
    from tragwerk.api.serving import serve

    try:
        return serve(
            settings.with_overrides(database_url=url), workers=workers, with_worker=with_worker
        )
    finally:
        _catch_stop_signals()  # granian's handlers are gone with granian


async def _schema_behind(url: str) -> str | None:
    """Why the database's schema is not the one this code needs, or None."""
    from alembic.script import ScriptDirectory

    from tragwerk.store.database import create_engine
    from tragwerk.store.migrate import alembic_config, current_revision

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    engine = create_engine(url, pool_size=1)
    try:
        current = await current_revision(engine)
    finally:
        await engine.dispose()
    if current != head:
        return f"the database schema is at revision {current or 'none'}, this code needs {head}"
    return None


def _up(settings: Settings) -> int:
    token_file = settings.data_dir / "admin.token"

    def run(url: str) -> int:
        _migrate(url)
        created = asyncio.run(_ensure_admin(url, token_file))
        where = token_file.resolve()
        if created:
            print(
                f"tragwerk: created the admin user {ADMIN_EMAIL}; its token is in {where}",
                file=sys.stderr,
            )
        elif token_file.exists():
            print(f"tragwerk: the admin token is in {where}", file=sys.stderr)
        print(
            f"tragwerk: serving on http://{settings.host}:{settings.port} "
            f"(API docs at /docs); Ctrl-C stops",
            file=sys.stderr,
        )
        code = _serve(settings, url, with_worker=True)
        print("tragwerk: stopped", file=sys.stderr)
        return code

    return _with_database(settings, run)


def _refuse_shared(settings: Settings, command: str, hint: str) -> bool:
    """Say why `command` cannot serve the shared database, if it cannot; True then."""
    if settings.database_url is None:
        print(
            f"tragwerk: '{command}' serves a shared database; set TRAGWERK_DATABASE_URL ({hint})",
            file=sys.stderr,
        )
        return True
    behind = asyncio.run(_schema_behind(settings.database_url))
    if behind:
        print(f"tragwerk: {behind}; run 'tragwerk migrate' first", file=sys.stderr)
        return True
    return False


def _api(settings: Settings, workers: int) -> int:
    if workers < 1:
        print("tragwerk: --workers must be at least 1", file=sys.stderr)
        return 2
    if _refuse_shared(settings, "api", "or use 'tragwerk up' for the embedded one"):
        return 2
    return _with_database(settings, lambda url: _serve(settings, url, workers=workers))


def _worker(settings: Settings, concurrency: int, autoscale: str | None = None) -> int:
    if concurrency < 2:
        print("tragwerk: --concurrency must be at least 2", file=sys.stderr)
        return 2
    scale = None
    if autoscale is not None:
        from tragwerk.domain.queue_scaling import ScaleRange

        try:
            scale = ScaleRange.parse(autoscale)
        except ValueError as exc:
            print(f"tragwerk: {exc}", file=sys.stderr)
            return 2
    if _refuse_shared(settings, "worker", "'tragwerk up' runs a worker inside its own process"):
        return 2
    assert settings.database_url is not None
    if scale is not None:
        from tragwerk.scaling.autoscale import serve_autoscaled

        return asyncio.run(serve_autoscaled(settings, settings.database_url, scale, concurrency))
    from tragwerk.jobs.process import serve_worker

    return asyncio.run(serve_worker(settings, settings.database_url, concurrency))


def _token_command(settings: Settings, args: argparse.Namespace) -> int:
    from tragwerk.cli_tokens import create_token, parse_duration, revoke_tokens

    if args.token_command == "create":  # noqa: S105 - a subcommand's name, not a secret
        try:
            lifetime = parse_duration(args.expires) if args.expires else None
        except ValueError as exc:
            print(f"tragwerk: --expires: {exc}", file=sys.stderr)
            return 2
        return _with_database(
            settings,
            lambda url: create_token(url, args.user, args.role, args.name, lifetime, args.output),
        )
    if bool(args.ids) == bool(args.user):
        print("tragwerk: give token ids or --user", file=sys.stderr)
        return 2
    return _with_database(settings, lambda url: revoke_tokens(url, args.ids, args.user))


def _on_jobs(url: str, action: Callable[[JobStore], Awaitable[T]]) -> T:
    """Run one JobStore action on a one-connection engine, for the `jobs` commands."""
    from tragwerk.store.database import create_engine
    from tragwerk.store.queries.jobs import JobStore

    async def go() -> T:
        engine = create_engine(url, pool_size=1)
        try:
            return await action(JobStore(engine))
        finally:
            await engine.dispose()

    return asyncio.run(go())


def _jobs_held(url: str, limit: int) -> int:
    rows = _on_jobs(url, lambda jobs: jobs.held(0, limit))
    if not rows:
        print("tragwerk: no held jobs", file=sys.stderr)
        return 0
    print(f"{'id':>10}  {'kind':<11} {'attempts':>8}  {'held since':<19}  last error")
    for row in rows:
        since = row["updated"].strftime("%Y-%m-%d %H:%M:%S")
        print(
            f"{row['id']:>10}  {row['kind']!s:<11} {row['attempts']:>8}  {since:<19}  "
            f"{row['last_error'] or '-'}"
        )
    return 0


def _jobs_orphaned(url: str, timeout: timedelta, limit: int) -> int:
    rows = _on_jobs(url, lambda jobs: jobs.orphaned(timeout, 0, limit))
    if not rows:
        print("tragwerk: no orphaned jobs", file=sys.stderr)
        return 0
    print(f"{'id':>10}  {'kind':<11} {'attempts':>8}  {'silent for':>10}  worker")
    for row in rows:
        silent = f"{row['silent_seconds']:.0f} s"
        print(
            f"{row['id']:>10}  {row['kind']!s:<11} {row['attempts']:>8}  {silent:>10}  "
            f"{row['worker']}"
        )
    return 0


def _jobs_requeue(url: str, ids: list[int] | None) -> int:
    requeued = _on_jobs(url, lambda jobs: jobs.requeue(ids))
    print(f"tragwerk: requeued {len(requeued)} job(s) {requeued if requeued else ''}".rstrip())
    if ids:
        missing = sorted(set(ids) - set(requeued))
        if missing:
            print(f"tragwerk: not held (unknown or not failed): {missing}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

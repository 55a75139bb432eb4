"""`tragwerk token create | revoke`: a first admin token for an existing database, and
revocation, without starting a server (docs/commands.md)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select, update

from tragwerk.domain.errors import DomainError
from tragwerk.monitoring.metrics import Metrics
from tragwerk.store.database import create_engine
from tragwerk.store.queries.directory import DirectoryStore
from tragwerk.store.tables import api_tokens, users

_DURATION = re.compile(r"(\d+)\s*([dhm])")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '90m' (one number and unit)."""
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None or int(match[1]) < 1:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h or 90m")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def write_secret(path: Path, secret: str) -> None:
    """Write `secret` to `path`, readable by its owner only (0600) from the start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    os.chmod(path, 0o600)


def create_token(
    url: str,
    email: str,
    role: str,
    name: str,
    lifetime: timedelta | None,
    output: Path | None,
) -> int:
    where = output.resolve() if output is not None else None

    async def go() -> int:
        engine = create_engine(url, pool_size=1, max_overflow=0)
        directory = DirectoryStore(engine, Metrics().module("directory"))
        try:
            async with engine.begin() as conn:
                user_id = await conn.scalar(
                    select(users.c.id).where(func.lower(users.c.email) == email.lower())
                )
                if user_id is None:
                    role_id = await directory.role_id(conn, role)
                    created = await directory.create_user(
                        {
                            "email": email,
                            "name": email.split("@", maxsplit=1)[0],
                            "role_id": role_id,
                        },
                        conn=conn,
                    )
                    user_id = created["id"]
                    print(f"tragwerk: created the user {email} ({role})", file=sys.stderr)
                expires = datetime.now(UTC) + lifetime if lifetime else None
                token, row = await directory.create_token(
                    name=name,
                    user_id=user_id,
                    service_client_id=None,
                    expires_at=expires,
                    conn=conn,
                )
                # Written before commit: if writing fails, no token exists unseen.
                if output is not None:
                    write_secret(output, token)
        except DomainError as exc:
            print(f"tragwerk: {exc}", file=sys.stderr)
            return 2
        finally:
            await engine.dispose()
        if output is None:
            print(token)  # stdout alone, so that it can be piped or captured
        else:
            print(f"tragwerk: the token is in {where}", file=sys.stderr)
        until = f", valid until {expires:%Y-%m-%d %H:%M} UTC" if expires else ""
        print(f"tragwerk: token {row['id']} for {email}{until}", file=sys.stderr)
        return 0

    return asyncio.run(go())


def revoke_tokens(url: str, ids: list[int], email: str | None) -> int:
    async def go() -> int:
        engine = create_engine(url, pool_size=1, max_overflow=0)
        try:
            async with engine.begin() as conn:
                query = update(api_tokens).where(api_tokens.c.revoked_at.is_(None))
                if email is not None:
                    owner = select(users.c.id).where(func.lower(users.c.email) == email.lower())
                    query = query.where(api_tokens.c.user_id == owner.scalar_subquery())
                else:
                    query = query.where(api_tokens.c.id.in_(ids))
                rows = await conn.execute(
                    query.values(revoked_at=func.now()).returning(api_tokens.c.id)
                )
                revoked = sorted(r[0] for r in rows)
        finally:
            await engine.dispose()
        # Every instance drops them from its cache on the database's change notification.
        print(f"tragwerk: revoked {len(revoked)} token(s) {revoked if revoked else ''}".rstrip())
        missing = sorted(set(ids) - set(revoked))
        if missing:
            print(f"tragwerk: not live (unknown or revoked already): {missing}", file=sys.stderr)
            return 1
        return 0

    return asyncio.run(go())

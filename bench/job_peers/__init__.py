"""The same two jobs for every queue in bench/jobs.py: a no-op, and a realistic job that
writes one notification row; plus the sentinel that marks the end of a run.

Configured by environment variables set by bench/jobs.py:
BENCH_DSN (PostgreSQL, plain libpq form), BENCH_MARKER (file the sentinel writes the
time to), BENCH_USER_ID (the notification's recipient).
"""

from __future__ import annotations

import os
import threading
import time

_local = threading.local()


def mark_done() -> None:
    """The sentinel: the last job queued; its start time ends the measurement."""
    path = os.environ["BENCH_MARKER"]
    with open(path + ".tmp", "w") as fh:
        fh.write(repr(time.time()))
    os.replace(path + ".tmp", path)


def write_notification_sync() -> None:
    import psycopg

    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = psycopg.connect(os.environ["BENCH_DSN"], autocommit=True)
    conn.execute(
        "INSERT INTO notifications (user_id, kind, title, body) VALUES (%s, 'notice', 'bench', '')",
        (int(os.environ["BENCH_USER_ID"]),),
    )

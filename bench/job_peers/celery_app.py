"""Celery with the Redis broker (database 15): tasks; results are not stored."""

from __future__ import annotations

import sys

from celery import Celery

from bench.job_peers import mark_done, write_notification_sync

app = Celery("bench", broker="redis://127.0.0.1:6379/15")
app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False)


@app.task(name="noop")
def noop() -> None:
    return None


@app.task(name="notify")
def notify() -> None:
    write_notification_sync()


@app.task(name="sentinel")
def sentinel() -> None:
    mark_done()


if __name__ == "__main__":
    kind, count = sys.argv[2], int(sys.argv[3])
    task = noop if kind == "noop" else notify
    with app.producer_or_acquire() as producer:
        for _ in range(count):
            task.apply_async(producer=producer)
    sentinel.delay()

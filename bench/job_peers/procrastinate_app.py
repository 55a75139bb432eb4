"""procrastinate (PostgreSQL, psycopg 3): tasks and the worker entrypoint."""

from __future__ import annotations

import asyncio
import os
import sys

import procrastinate
from psycopg_pool import AsyncConnectionPool

from bench.job_peers import mark_done

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=os.environ["BENCH_DSN"]))
_pools: list[AsyncConnectionPool] = []  # opened by the first realistic job


@app.task(name="noop")
async def noop() -> None:
    return None


@app.task(name="notify")
async def notify() -> None:
    if not _pools:
        pool = AsyncConnectionPool(os.environ["BENCH_DSN"], min_size=1, max_size=10, open=False)
        await pool.open()
        _pools.append(pool)
    async with _pools[0].connection() as conn:
        await conn.execute(
            "INSERT INTO notifications (user_id, kind, title, body) "
            "VALUES (%s, 'notice', 'bench', '')",
            (int(os.environ["BENCH_USER_ID"]),),
        )


@app.task(name="sentinel")
async def sentinel() -> None:
    mark_done()


async def enqueue(kind: str, count: int) -> None:
    async with app.open_async():
        task = noop if kind == "noop" else notify
        for start in range(0, count, 1000):
            await task.batch_defer_async(*([{}] * min(1000, count - start)))
        await sentinel.defer_async()


async def work(concurrency: int) -> None:
    async with app.open_async():
        await app.run_worker_async(concurrency=concurrency, wait=True)


if __name__ == "__main__":
    if sys.argv[1] == "schema":

        async def schema() -> None:
            async with app.open_async():
                await app.schema_manager.apply_schema_async()

        asyncio.run(schema())
    elif sys.argv[1] == "enqueue":
        asyncio.run(enqueue(sys.argv[2], int(sys.argv[3])))
    else:
        asyncio.run(work(int(sys.argv[2])))

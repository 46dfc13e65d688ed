"""arq + Redis (db 13). Workers: ``arq bench.peers.arq_redis.WorkerSettings``.

arq polls Redis: with its defaults (``max_jobs=10``, ``poll_delay=0.5``) one worker reads at most
100 job ids every 0.5 s, so it cannot drain faster than 200 jobs/s and an idle worker adds up to
0.5 s of latency. Here ``max_jobs`` is 64 (the concurrency the other async workers get) and
``poll_delay`` 0.05 s.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Function, func

from bench.peers.base import Peer, python_m
from bench.record import record
from bench.servers import (
    REDIS_DB,
    REDIS_HOST,
    REDIS_PORT,
    clear_redis_db,
    redis_url,
    unreachable,
)

QUEUE = "bench:arq"
MAX_JOBS = 64
POLL_DELAY = 0.05
BULK_WINDOW = 50  # concurrent enqueue_job calls in the bulk fill (the pool holds 100)
REDIS = RedisSettings(host=REDIS_HOST, port=REDIS_PORT, database=REDIS_DB["arq"])


async def noop(ctx: dict[str, Any], i: int) -> None:
    record(i)


async def noop_result(ctx: dict[str, Any], i: int) -> int:
    record(i)
    return i


class WorkerSettings:
    functions: ClassVar[list[Function]] = [func(noop, keep_result=0), func(noop_result)]
    redis_settings = REDIS
    queue_name = QUEUE
    max_jobs = MAX_JOBS
    poll_delay = POLL_DELAY


class ArqPeer(Peer):
    key = "arq"
    title = "arq + Redis"
    settings = (
        f"`max_jobs={MAX_JOBS}`, `poll_delay={POLL_DELAY}` s (defaults 10 and 0.5 s cap a worker "
        "at 200 jobs/s); 2 procs = 2 workers; acks by deleting the job after it ran"
    )
    bulk = f"`asyncio.gather` of `enqueue_job` calls, {BULK_WINDOW} at a time (arq has no bulk API)"
    results = "Redis (arq's default `keep_result` of 1 h)"

    def __init__(self) -> None:
        self._pool: ArqRedis | None = None

    @property
    def pool(self) -> ArqRedis:
        assert self._pool is not None, "not open"
        return self._pool

    def unavailable(self) -> str | None:
        return unreachable(redis_url("arq"))

    async def open(self) -> None:
        self._pool = await create_pool(REDIS, default_queue_name=QUEUE)

    async def close(self) -> None:
        await self.pool.aclose()
        clear_redis_db("arq")

    async def send(self, i: int, *, results: bool = False) -> None:
        await self.pool.enqueue_job("noop_result" if results else "noop", i)

    async def send_bulk(self, ids: range, *, results: bool = False) -> None:
        name = "noop_result" if results else "noop"
        for lo in range(ids.start, ids.stop, BULK_WINDOW):
            window = range(lo, min(lo + BULK_WINDOW, ids.stop))
            await asyncio.gather(*(self.pool.enqueue_job(name, i) for i in window))

    async def purge(self) -> None:
        """Delete the queue and every arq key (db 13 belongs to this benchmark)."""
        await self.pool.delete(QUEUE)
        batch: list[bytes] = []
        async for key in self.pool.scan_iter(match="arq:*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                await self.pool.unlink(*batch)
                batch.clear()
        if batch:
            await self.pool.unlink(*batch)

    def worker_commands(
        self, procs: int, *, results: bool = False, latency: bool = False
    ) -> list[list[str]]:
        return [python_m("arq", f"{__name__}.WorkerSettings")] * procs

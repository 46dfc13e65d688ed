"""Limits across the cluster: a rate limit, a concurrency cap and unique jobs.

Each limit holds for all workers together (it lives in a KV bucket, not in a worker's memory).
Run it with a worker going (``jsqueue worker -A examples.limits:app``) or with ``--burst`` to
run a worker in this process: ``python -m examples.limits --burst``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

from jsqueue import App
from jsqueue.testing import running_worker

app = App("limits-example")


@app.task(rate_limit="10/s")  # at most 10 starts a second, all workers together
async def call_partner_api(n: int) -> int:
    return n


@app.task(max_concurrency=2)  # at most 2 running at once, all workers together
async def rebuild_index(shard: int) -> int:
    await asyncio.sleep(0.1)
    return shard


@app.task(unique_for=600)  # the same call again, while the first is not over, is the first
async def send_digest(user_id: int) -> str:
    await asyncio.sleep(0.2)
    return f"digest for {user_id}"


async def main(in_process: bool) -> None:
    async with app:
        worker = running_worker(app, concurrency=8) if in_process else contextlib.nullcontext()
        async with worker:
            began = time.monotonic()
            calls = await call_partner_api.map(range(21))
            await asyncio.gather(*(c.get(timeout=30) for c in calls))
            print(f"21 rate-limited calls took {time.monotonic() - began:.1f}s at 10/s")
            began = time.monotonic()
            shards = await rebuild_index.map(range(6))
            await asyncio.gather(*(s.get(timeout=30) for s in shards))
            print(f"6 capped jobs of 0.1s took {time.monotonic() - began:.1f}s, 2 at a time")
            first = await send_digest.delay(7)
            second = await send_digest.delay(7)
            print("same job:", first.id == second.id, await second.get(timeout=30))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", action="store_true", help="run a worker in this process")
    asyncio.run(main(parser.parse_args().burst))

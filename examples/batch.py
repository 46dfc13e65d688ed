"""A batch: enqueue many jobs in one pipelined call, drain them, collect every result.

Panini's pull example fetched a fixed ten messages in a loop. Here ``starmap`` sends a whole
batch with one round trip for the lot, a burst worker drains the queue and exits, and the
results come back in order. Run it with ``python -m examples.batch [N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from jsqueue.testing import burst
from worker.app import add, app


async def run_batch(size: int) -> None:
    async with app:
        started = time.perf_counter()
        jobs = await add.starmap((i, i) for i in range(size))
        enqueued = time.perf_counter()
        stats = await burst(app, concurrency=64)
        results = await asyncio.gather(*(job.get(timeout=30) for job in jobs))
        done = time.perf_counter()
    assert results == [2 * i for i in range(size)]
    print(
        f"batch of {size}: enqueued in {enqueued - started:.2f}s, drained and collected in "
        f"{done - enqueued:.2f}s; sum of results = {sum(results)} ({stats.summary()})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("size", nargs="?", type=int, default=1000)
    asyncio.run(run_batch(parser.parse_args().size))


if __name__ == "__main__":
    main()

"""A consumer: a worker embedded in your own program instead of the ``jsqueue worker`` command.

Panini's push consumer printed messages and never acked them; its pull consumer fetched ten and
stopped. ``run_worker`` pulls only as many jobs as it can run, acks each after it succeeded,
retries failures on the server with the task's backoff and dead-letters what can never succeed.
Run it with ``python -m examples.consumer`` (``--burst`` to exit once the queue is empty).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from jsqueue.worker import Worker
from worker.app import app


async def consume(burst: bool, concurrency: int) -> None:
    worker = Worker(app, concurrency=concurrency, burst=burst)
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, worker.stop)
    try:
        stats = await worker.run(wait_for_server=30)
    finally:
        await app.close()
    print(f"consumer done: {stats.summary()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    asyncio.run(consume(args.burst, args.concurrency))


if __name__ == "__main__":
    main()

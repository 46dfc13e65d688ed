"""A producer: enqueues a few jobs every few seconds and logs their ids and results.

Panini's publisher fired a timer in every running copy and published into a stream nobody
owned. Here jobs go to durable work queues with an id the server deduplicates, and the producer
gets each job's outcome back. Run it with ``python -m examples.producer`` (the Procfile does).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from jsqueue import JsqueueError
from worker.app import add, app, resize_image, send_welcome_email

log = logging.getLogger("producer")


async def produce(rounds: int, interval: float) -> None:
    await app.connect(wait=30)  # the server may still be starting (honcho starts all at once)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    n = 0
    try:
        while not stop.is_set() and (rounds == 0 or n < rounds):
            n += 1
            total = await add.delay(n, n)
            email = await send_welcome_email.delay(f"user{n}@example.com")
            thumb = await resize_image.apply_async(args=("cat.png", 100 * n), job_id=f"thumb-{n}")
            log.info(
                "round %d: enqueued add %s, email %s, resize %s", n, total.id, email.id, thumb.id
            )
            try:
                log.info("round %d: add(%d, %d) = %s", n, n, n, await total.get(timeout=10))
                log.info("round %d: resize -> %s", n, await thumb.get(timeout=10))
            except JsqueueError as exc:
                log.warning("round %d: %s", n, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    finally:
        await app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=0, help="stop after N rounds (0: forever)")
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between rounds")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    asyncio.run(produce(args.rounds, args.interval))


if __name__ == "__main__":
    main()

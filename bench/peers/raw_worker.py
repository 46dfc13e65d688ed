"""The raw nats-py ceiling's worker: ``pull_subscribe`` + ``fetch(batch)`` + ``ack()``, serially.

Run as ``python -m bench.peers.raw_worker --url nats://... --batch 256``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import nats
from nats.errors import TimeoutError as NatsTimeout

from bench.record import record

STREAM = "BENCH_RAW"
SUBJECT = "bench.raw"
DURABLE = "bench_raw"


async def work(url: str, batch: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(SUBJECT, durable=DURABLE, stream=STREAM)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(batch, timeout=1.0)
            except NatsTimeout:
                continue
            for msg in msgs:
                record(int(msg.data))
                await msg.ack()
    finally:
        with contextlib.suppress(Exception):
            await nc.flush()  # the last acks (drain() hangs with a pull subscription)
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    asyncio.run(work(args.url, args.batch))


if __name__ == "__main__":
    main()

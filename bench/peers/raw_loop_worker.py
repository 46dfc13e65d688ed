"""The hand-made pull loop on raw nats-py: the ceiling a Python worker can reach on this machine.

A callback subscription on an inbox; ``$JS.API.CONSUMER.MSG.NEXT`` requests keep ``--window``
messages requested and are topped up once half of them arrived; each message is decoded (JSON)
and dispatched inline to a no-op task, then acked by publishing ``+ACK`` to its reply subject.
Status messages (408/409) give back their pending count. No results, no heartbeats, no
drain beyond a last flush: what is left in the window comes back after ``ack_wait``.

Run as ``python -m bench.peers.raw_loop_worker --url nats://... --window 256``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.msg import Msg

from bench.record import record

STREAM = "BENCH_RAWLOOP"
SUBJECT = "bench.rawloop"
DURABLE = "bench_rawloop"
_ACK = b"+ACK"


def noop(i: int) -> None:
    record(i)


TASKS: dict[str, Callable[..., Any]] = {"noop": noop}


async def work(url: str, window: int) -> None:
    nc = await nats.connect(url)
    inbox = nc.new_inbox()
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{DURABLE}"
    outstanding = 0
    stopping = False

    async def pull() -> None:
        nonlocal outstanding
        want = window - outstanding
        if want <= 0 or stopping:
            return
        outstanding += want
        request = {"batch": want, "expires": 30_000_000_000, "idle_heartbeat": 5_000_000_000}
        await nc.publish(next_subject, json.dumps(request).encode(), reply=inbox)

    async def on_msg(msg: Msg) -> None:
        nonlocal outstanding
        if not msg.reply:  # a status message: 100 heartbeat, 408 expired, 409 conflict
            headers = msg.headers or {}
            if headers.get("Status") in ("408", "409"):
                outstanding -= int(headers.get("Nats-Pending-Messages", "0") or 0)
                await pull()
            return
        outstanding -= 1
        job = json.loads(msg.data)
        TASKS[job["task"]](*job["args"])
        await nc.publish(msg.reply, _ACK)
        if outstanding <= window // 2:
            await pull()

    await nc.subscribe(inbox, cb=on_msg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await pull()
        await stop.wait()
        stopping = True
    finally:
        with contextlib.suppress(Exception):
            await nc.flush()  # the last acks
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--window", type=int, default=256)
    args = parser.parse_args()
    asyncio.run(work(args.url, args.window))


if __name__ == "__main__":
    main()

"""Canvas: a chain, a group and a chord on the reference service.

The chord's callback runs exactly once, even if workers are killed mid-way: each member's
completion is one KV key, and the member that completes the set claims the callback in KV before
sending it. Run it with a worker going (``jsqueue worker -A worker.app:app``) or with ``--burst``
to run a worker in this process: ``python -m examples.canvas --burst``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from jsqueue import chain, chord, group
from jsqueue.testing import running_worker
from worker.app import add, app, mul, tsum


async def main(in_process: bool) -> None:
    async with app:
        worker = running_worker(app) if in_process else contextlib.nullcontext()
        async with worker:
            total = await chain(add.s(1, 2), mul.s(10), add.s(5)).delay()
            print("chain (1 + 2) * 10 + 5 =", await total.get(timeout=10))
            squares = await group(mul.s(i, i) for i in range(10)).delay()
            print("group of squares:", await squares.get(timeout=10))
            summed = await chord(group(add.s(i, i) for i in range(100)), tsum.s()).delay()
            print("chord sum of 2i for i < 100 =", await summed.get(timeout=10))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--burst", action="store_true", help="run a worker in this process")
    asyncio.run(main(parser.parse_args().burst))

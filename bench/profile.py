"""Profile one jsqueue worker draining a backlog of no-op jobs, in this process.

``python -m bench.profile [--jobs 50000] [--results] [--out profile.txt]``: starts the bundled
nats-server, fills the backlog with ``task.starmap``, then runs ``run_worker(burst=True)`` under
pyinstrument and prints the time spent by function (the hot path's top lines) and the drain rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path

import psutil

from bench.peers.jsqueue_nats import CONCURRENCY, app, noop, noop_result
from bench.recording import Recording
from bench.servers import bundled_nats
from jsqueue import run_worker


async def drain(jobs: int, results: bool, profiler: object | None, server_pid: int) -> None:
    await app.connect()
    task = noop_result if results else noop
    for lo in range(0, jobs, 20_000):
        await task.starmap([(i,) for i in range(lo, min(lo + 20_000, jobs))])
    if profiler is not None:
        profiler.start()  # type: ignore[attr-defined]
    server = psutil.Process(server_pid)
    server_cpu = sum(server.cpu_times()[:2])
    cpu = time.process_time()
    await run_worker(app, concurrency=CONCURRENCY, burst=True)
    cpu = time.process_time() - cpu
    server_cpu = sum(server.cpu_times()[:2]) - server_cpu
    if profiler is not None:
        profiler.stop()  # type: ignore[attr-defined]
    print(f"worker CPU: {cpu / jobs * 1e6:.1f} us a job (its start included)")
    print(f"nats-server CPU meanwhile: {server_cpu / jobs * 1e6:.1f} us a job")
    await (await app.broker()).destroy_prefix()
    await app.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("--jobs", type=int, default=50_000)
    parser.add_argument("--results", action="store_true", help="the task's result is stored")
    parser.add_argument("--no-profile", action="store_true", help="only the drain rate")
    parser.add_argument("--out", type=Path, default=None, help="write the profile here too")
    args = parser.parse_args()
    profiler = None
    if not args.no_profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0002, async_mode="disabled")
    with Recording() as rec, bundled_nats() as server:
        os.environ.update(rec.env)
        app.configure(url=server.url)
        started = time.perf_counter()
        assert server.pid is not None
        asyncio.run(drain(args.jobs, args.results, profiler, server.pid))
        took = time.perf_counter() - started
        rate = rec.check(range(args.jobs)).rate()
    print(
        f"drained {args.jobs:,} jobs at {rate:,.0f} jobs/s (first start to last finish; "
        f"{took:.1f}s in all)"
    )
    if profiler is not None:
        text = profiler.output_text(unicode=False, color=False, show_all=False)
        print(text)
        if args.out is not None:
            args.out.write_text(text)


if __name__ == "__main__":
    main()

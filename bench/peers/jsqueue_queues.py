"""jsqueue's queues under load, for ``python -m bench.run --queues``: a backlog of low-priority
jobs of a few milliseconds, urgent probes that overtake it, jobs that fail and retry in an hour,
and healthy no-op jobs. Workers: ``jsqueue worker -A bench.peers.jsqueue_queues:app``."""

from __future__ import annotations

import asyncio
import time

from bench.record import record
from jsqueue import App, Retry

#: where the urgent probes record themselves (apart from the backlog, so each is seen at once)
PROBE_DIR_ENV = "BENCH_PROBE_DIR"
#: how long a backlog job takes, in seconds (a busy worker of short jobs)
BACKLOG_JOB = 0.003

app = App("benchq", prefix="benchq")


@app.task(ignore_result=True, priority=0)
async def low(i: int) -> None:
    started = time.time()
    await asyncio.sleep(BACKLOG_JOB)
    record(i, started)


@app.task(ignore_result=True, priority=3)
async def urgent(i: int) -> None:
    record(i, dir_env=PROBE_DIR_ENV)


@app.task(ignore_result=True)
async def healthy(i: int) -> None:
    record(i)


@app.task(ignore_result=True)
async def flaky(i: int) -> None:
    record(i)
    raise Retry(delay=3600)  # past schedule_retries_after: it waits on a server schedule

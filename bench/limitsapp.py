"""The limits benchmark's tasks: no-ops that record when they ran, plain, rate-limited and
capped. The prefix and the rate come from the environment (``BENCH_PREFIX``, ``BENCH_RATE``)."""

from __future__ import annotations

import os

from bench.record import record
from jsqueue import App

app = App("bench-limits", prefix=os.environ.get("BENCH_PREFIX", "benchlim"))


@app.task(name="plain", ignore_result=True)
async def plain(i: int) -> None:
    record(i)


@app.task(name="limited", ignore_result=True, rate_limit=os.environ.get("BENCH_RATE", "100/s"))
async def limited(i: int) -> None:
    record(i)


@app.task(
    name="capped", ignore_result=True, max_concurrency=int(os.environ.get("BENCH_CAP", "10000"))
)
async def capped(i: int) -> None:
    record(i)

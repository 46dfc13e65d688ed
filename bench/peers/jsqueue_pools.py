"""jsqueue's pools, for ``python -m bench.run --pools``: plain ``def`` tasks, so that they run in
the worker's pool (threads, or process-pool children that import this module by ``-A``)."""

from __future__ import annotations

import time

from bench.record import record
from bench.work import spin
from jsqueue import App

app = App("benchpool", prefix="benchpool")


@app.task(ignore_result=True)
def cpu(i: int, n: int) -> None:
    started = time.time()
    spin(n)
    record(i, started)


@app.task(ignore_result=True)
def noop(i: int) -> None:
    record(i)

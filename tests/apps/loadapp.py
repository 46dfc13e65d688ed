"""Tasks for the queues-under-load tests, run by real worker processes: jobs that hold a slot
until told, quick jobs that log when they start, jobs that retry in an hour. The prefix and
``max_ack_pending`` come from the environment; marks are files a task writes so the test can see
what happened."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from jsqueue import App, Retry, current_job

app = App(
    "loadapp",
    prefix=os.environ.get("JSQ_TEST_PREFIX", "loadapp"),
    max_ack_pending=int(os.environ.get("JSQ_TEST_MAX_ACK_PENDING", "20000")),
)


def _line(marks: str, name: str, text: str) -> None:
    with Path(marks, name).open("a") as f:
        f.write(text + "\n")


@app.task(queue="b")
def hold(marks: str) -> None:
    """Holds its slot (a thread) until the file ``go`` exists."""
    _line(marks, "held", f"{current_job().id} {current_job().attempt}")
    deadline = time.monotonic() + 60
    while not Path(marks, "go").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


@app.task
async def quick(marks: str, tag: str) -> None:
    """Logs ``<tag> <start time>`` and takes a few milliseconds."""
    _line(marks, "started", f"{tag} {time.time()}")
    await asyncio.sleep(0.003)


@app.task
async def once(marks: str) -> None:
    """Leaves one line per execution in ``<job id>.ran``."""
    _line(marks, f"{current_job().id}.ran", str(current_job().attempt))


@app.task
async def later(marks: str) -> None:
    """Fails, to be tried again in an hour."""
    _line(marks, "later", current_job().id)
    raise Retry(delay=3600)

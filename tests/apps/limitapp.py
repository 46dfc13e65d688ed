"""Tasks for the cluster-wide limits tests, run by real worker processes: a rate-limited task,
a capped one, a free one beside them on the same queue, and a unique one. Each writes a line
``<kind> <job id> <pid> <wall time> <attempt>`` to the file ``marks`` in the directory it is
given, so the test sees when and where jobs ran. The prefix, ``ack_wait`` and ``max_deliver``
come from the environment."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from jsqueue import App, Retry, current_job

app = App(
    "limitapp",
    prefix=os.environ.get("JSQ_TEST_PREFIX", "limitapp"),
    ack_wait=float(os.environ.get("JSQ_TEST_ACK_WAIT", "30")),
    max_deliver=int(os.environ.get("JSQ_TEST_MAX_DELIVER", "5")),
)

RATE = 25.0


def mark(marks: str, kind: str) -> None:
    job = current_job()
    line = f"{kind} {job.id} {os.getpid()} {time.time()} {job.attempt}\n"
    with Path(marks, "marks").open("a") as f:
        f.write(line)


@app.task(rate_limit=f"{RATE:g}/s")
async def limited(marks: str) -> None:
    mark(marks, "limited")


@app.task(max_concurrency=3)
async def capped(marks: str, seconds: float) -> None:
    mark(marks, "start")
    await asyncio.sleep(seconds)
    mark(marks, "end")


@app.task
async def free(marks: str) -> None:
    mark(marks, "free")


@app.task(unique_for=60)
def unique(marks: str, seconds: float) -> str:
    """Takes ``seconds``; a negative number: until the file ``go`` exists (60 s at most)."""
    mark(marks, "unique")
    deadline = time.monotonic() + (60 if seconds < 0 else seconds)
    while time.monotonic() < deadline and not (seconds < 0 and Path(marks, "go").exists()):
        time.sleep(0.01)
    return current_job().id


@app.task(unique_for=1)
async def briefly_unique(marks: str) -> None:
    mark(marks, "briefly")


@app.task(unique_for=60)
async def retrying(marks: str) -> None:
    """Fails its first attempt, to be tried again in an hour (on a server schedule)."""
    mark(marks, "retrying")
    if current_job().attempt == 1:
        raise Retry(delay=3600)

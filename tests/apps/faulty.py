"""Tasks for tests that run workers as separate processes (and kill them).

The prefix and ack_wait come from the environment so each test gets its own streams.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from tenacity import stop_after_attempt, wait_fixed

from jsqueue import App, RetryPolicy, current_job

app = App(
    "faulty",
    prefix=os.environ.get("JSQ_TEST_PREFIX", "faulty"),
    ack_wait=float(os.environ.get("JSQ_TEST_ACK_WAIT", "2")),
    max_deliver=int(os.environ.get("JSQ_TEST_MAX_DELIVER", "3")),
)


def _mark(directory: str, name: str) -> None:
    path = Path(directory) / name
    with open(path, "a") as f:
        f.write(f"{current_job().attempt} {os.getpid()} {time.time()}\n")


@app.task
async def slow(seconds: float, marks: str) -> str:
    """Record the start, sleep, record the end."""
    job = current_job()
    _mark(marks, f"{job.id}.start")
    await asyncio.sleep(seconds)
    _mark(marks, f"{job.id}.end")
    return job.id


@app.task
def crash() -> None:
    """Kill the worker process itself, every time."""
    os._exit(3)


@app.task(ignore_result=True)
async def quick(i: int) -> int:
    return i


@app.task(retry=RetryPolicy(stop=stop_after_attempt(2), wait=wait_fixed(0.2)))
async def flaky(i: int) -> int:
    """Fail every time: one retry, then the dead-letter stream."""
    raise ValueError(f"flaky {i} failed")


@app.task(queue="stubborn", retry=RetryPolicy(stop=stop_after_attempt(3), wait=wait_fixed(3600)))
async def stubborn() -> None:
    """Fail, and wait an hour before the next attempt: a job that stays RETRYING."""
    raise ValueError("not now")

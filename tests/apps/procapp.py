"""Tasks for worker processes run with --pool process (and some with the thread pool): they spin,
crash, hog memory, overrun soft and hard limits, and clean up. The prefix comes from the
environment; marks are files a task writes so the test can see what happened."""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from pathlib import Path

from tenacity import retry_if_exception_type, stop_after_attempt, wait_fixed

from jsqueue import App, ChildDied, RetryPolicy, SoftTimeLimitExceeded, current_job

app = App(
    "procapp",
    prefix=os.environ.get("JSQ_TEST_PREFIX", "procapp"),
    ack_wait=float(os.environ.get("JSQ_TEST_ACK_WAIT", "5")),
)
_HOARD: list[bytes] = []
CRASH_RETRY = RetryPolicy(
    stop=stop_after_attempt(2), wait=wait_fixed(0.1), retry=retry_if_exception_type(ChildDied)
)


def mark(marks: str, what: str) -> None:
    """A line "pid time attempt" in <marks>/<job id>.<what>, one per run."""
    with Path(marks, f"{current_job().id}.{what}").open("a") as f:
        f.write(f"{os.getpid()} {time.time()} {current_job().attempt}\n")


@app.task
def whoami() -> int:
    return os.getpid()


@app.task
def work(i: int) -> int:
    time.sleep(0.01)
    return i


@app.task(time_limit=1, queue="limits")  # a thread pool on "default" need not refuse it
def spin(marks: str) -> None:
    mark(marks, "start")
    while True:
        pass


@app.task
def spin_forever(marks: str) -> None:
    mark(marks, "start")
    while True:
        pass


@app.task
def hog() -> int:
    _HOARD.append(b"x" * (200 * 2**20))
    return os.getpid()


@app.task(retry=CRASH_RETRY)
def exits() -> None:
    os._exit(1)


@app.task(retry=CRASH_RETRY)
def segfault() -> None:
    ctypes.string_at(0)


@app.task(soft_time_limit=0.5, time_limit=5, queue="limits")
def soft_cleanup(marks: str) -> str:
    try:
        while True:
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        mark(marks, "cleanup")
        return "cleaned up"


@app.task(soft_time_limit=0.3, time_limit=1, queue="limits")
def soft_ignored(marks: str) -> None:
    mark(marks, "start")
    while True:
        try:
            time.sleep(0.01)
        except SoftTimeLimitExceeded:
            mark(marks, "ignored")


@app.task(soft_time_limit=0.5, time_limit=5)
async def async_soft_cleanup(marks: str) -> str:
    try:
        await asyncio.sleep(30)
    except SoftTimeLimitExceeded:
        mark(marks, "cleanup")
        await asyncio.sleep(0.01)  # it may still await while it cleans up
        return "cleaned up"
    return "slept"


@app.task
def long_def(marks: str) -> None:
    mark(marks, "start")
    time.sleep(60)
    mark(marks, "end")


@app.task
async def long_async(marks: str) -> None:
    mark(marks, "start")
    await asyncio.sleep(60)
    mark(marks, "end")


@app.task
def reports_then_waits(marks: str) -> str:
    from jsqueue.pools import report

    report("stage", step=2, of=3)
    mark(marks, "reported")
    time.sleep(3)
    return "done"


@app.task
def progresses(marks: str, steps: int) -> int:
    """Reports progress ``steps`` times as fast as it can, then waits for a "go" mark."""
    for i in range(steps):
        current_job().progress(i + 1, steps, stage="child")
    mark(marks, "reported")
    go = Path(marks, f"{current_job().id}.go")
    deadline = time.monotonic() + 30
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return steps


@app.task
async def echo(i: int) -> int:
    return i


@app.task(queue="limits")
def gated(marks: str) -> int:
    """Marks its start, then waits (up to 30 s) for the file ``go`` in ``marks``."""
    mark(marks, "start")
    deadline = time.monotonic() + 30
    while not Path(marks, "go").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()

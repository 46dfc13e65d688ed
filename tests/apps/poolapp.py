"""Tasks for the process pool tests: they crash, spin, hog memory, report and misbehave on the
way back, each in a pool child. Nothing here connects anywhere."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from typing import Any

from jsqueue import App, Reject, Retry, current_job
from jsqueue.errors import SoftTimeLimitExceeded
from jsqueue.pools import report

app = App("pool")

#: what hog() keeps referenced, so the memory stays resident after the job
_HOARD: list[bytes] = []


class TwoPartError(Exception):
    """Pickles, but its __init__ does not fit its args, so it cannot be unpickled."""

    def __init__(self, left: str, right: str) -> None:
        super().__init__(f"{left}/{right}")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def whoami() -> int:
    return os.getpid()


@app.task
def job_info() -> dict[str, Any]:
    job = current_job()
    return {
        "id": job.id,
        "task": job.task,
        "attempt": job.attempt,
        "queue": job.queue,
        "worker": job.worker,
        "headers": job.headers,
        "parent_id": job.parent_id,
        "root_id": job.root_id,
        "pid": os.getpid(),
    }


@app.task
def spin() -> None:
    report("spinning", pid=os.getpid())
    while True:
        pass


@app.task
def exit_hard(code: int) -> None:
    os._exit(code)


@app.task
def segfault() -> None:
    ctypes.string_at(0)


@app.task
def connection_lost(message: str) -> None:
    raise ConnectionError(message)


@app.task
def two_part_error() -> None:
    raise TwoPartError("left", "right")


@app.task
def unpicklable_value() -> Any:
    return threading.Lock()


@app.task
def retry_later() -> None:
    raise Retry(3.0, "the printer is busy")


@app.task
def reject() -> None:
    raise Reject("the input is malformed")


@app.task
def soft_cleanup(seconds: float) -> str:
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "finished"


@app.task
def stubborn() -> None:
    while True:
        try:
            while True:
                pass
        except SoftTimeLimitExceeded:
            report("soft limit ignored")


@app.task
def hog(megabytes: int) -> int:
    _HOARD.append(b"x" * (megabytes << 20))  # written, so resident
    return os.getpid()


@app.task
def progress(steps: int) -> int:
    for step in range(steps):
        report("progress", step=step)
    return steps


@app.task
async def async_add(x: int, y: int) -> int:
    return x + y


@app.task
def gated(marks: str, name: str) -> int:
    """Writes ``<marks>/<name>`` as it starts, then waits (up to 30 s) for ``<marks>/go``."""
    with open(os.path.join(marks, name), "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(marks, "go")) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()

"""What running one job on a pool child produced, as the worker sees it.

A value or an exception comes back as itself when it can make the trip, so the worker's retry
policy matches exception classes as if the task had run in-process. When it cannot, a stand-in
says why: :class:`SerializeError` for a value, :class:`RemoteError` (type name, message and
traceback text) for an exception. The child's traceback text is ``ChildOutcome.traceback``, since
a pickled exception loses its ``__traceback__``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jsqueue.errors import PoolClosed, RemoteError, SerializeError
from jsqueue.pools import protocol
from jsqueue.pools.protocol import ChildJob, Done, RunJob


@dataclass(frozen=True)
class ChildOutcome:
    """What running one job on a child produced: ``value``, or ``error`` (what the task raised,
    or a stand-in such as :class:`ChildDied`)."""

    value: Any = None
    error: BaseException | None = None
    pid: int = 0
    #: the child's resident memory after the job (None when the child did not survive it)
    rss_mb: float | None = None
    duration: float = 0.0
    #: the traceback of a task's error as the child formatted it; "" for errors made here
    traceback: str = ""


def from_done(done: Done, job: ChildJob, pid: int, rss_mb: float | None = None) -> ChildOutcome:
    """The parent's view of a Done: unpickled value or error, or a stand-in that says why not.
    ``rss_mb``: the child's last known memory, when this Done did not carry it."""
    rss = done.rss_mb if done.rss_mb is not None else rss_mb
    common: dict[str, Any] = {"pid": pid, "rss_mb": rss, "duration": done.duration}
    if done.ok:
        try:
            value = None if done.value is None else protocol.load_blob(done.value)
            return ChildOutcome(value=value, **common)
        except Exception as exc:
            error: BaseException = SerializeError(
                f"the return value of task {job.task} (job {job.job_id}) cannot be unpickled in "
                f"the worker: {exc!r}"
            )
            return ChildOutcome(error=error, **common)
    error = RemoteError(done.error_type, done.error_message, done.traceback)
    if done.error is not None:
        with contextlib.suppress(Exception):
            loaded = protocol.load_blob(done.error)
            if isinstance(loaded, BaseException):
                error = loaded
    return ChildOutcome(error=error, traceback=done.traceback, **common)


@dataclass(frozen=True)
class ChildInfo:
    """One child of the pool: what it runs (``started`` is Unix seconds) and has run."""

    pid: int
    job_id: str | None
    started: float | None
    rss_mb: float | None
    jobs_done: int


@dataclass
class Busy:
    """A job handed to a child: running there, or next in its socket (``started`` is 0 until
    the child starts it)."""

    job: ChildJob
    future: asyncio.Future[ChildOutcome]
    started: float  # Unix seconds, for ChildInfo
    began: float  # loop time, for durations
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    kill_reason: BaseException | None = None
    #: called once when the child starts the job
    on_start: Callable[[], None] | None = None
    #: the frame that hands the job over (sent again if its child dies before starting it)
    message: RunJob | None = None

    @property
    def label(self) -> str:
        return f"job {self.job.job_id} ({self.job.task})"


def closed_before(job: ChildJob) -> ChildOutcome:
    """The outcome of a job the pool closed before it started."""
    return ChildOutcome(error=PoolClosed(f"the pool was closed before job {job.job_id} started"))

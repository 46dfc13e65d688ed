"""The thread pool: ``def`` tasks in threads of the worker process, the default.

It has the process pool's interface (:meth:`run` a :class:`ChildJob`, get a
:class:`ChildOutcome`), so the worker treats both alike, and it says what it cannot do: a thread
cannot be stopped (``terminate`` is False, time limits are not enforced), and a crash in one
thread takes the whole worker with every job in flight. What it knows is which job runs since
when, so the worker can name a job that runs past its time limit.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jsqueue import progress
from jsqueue.app import App
from jsqueue.context import ReportCallback, Sink, current_job, reset_current, set_current, sink_to
from jsqueue.errors import NotRegistered
from jsqueue.middleware import Middleware, run_job_sync
from jsqueue.pools.outcome import ChildOutcome
from jsqueue.pools.protocol import ChildJob

#: the name prefix of task threads (the CLI does not wait for them at exit)
THREAD_PREFIX = "jsqueue-task"


class ThreadPool:
    """``size`` threads that run the ``def`` tasks of ``app``."""

    kind = "thread"

    def __init__(self, app: App, size: int, *, on_report: ReportCallback | None = None) -> None:
        self.app = app
        self.size = size
        self._on_report = on_report
        self._executor = ThreadPoolExecutor(size, thread_name_prefix=THREAD_PREFIX)
        #: job id -> (task name, Unix time it started) of the jobs in a thread now
        self.running: dict[str, tuple[str, float]] = {}

    async def start(self) -> None:
        """Nothing to start: threads come as jobs do."""

    async def run(
        self, job: ChildJob, *, ahead: bool = False, on_start: Callable[[], None] | None = None
    ) -> ChildOutcome:
        """Run ``job`` in a thread; never raises for what the task does. A thread is never
        handed a job ahead: ``on_start`` is called at once."""
        if on_start is not None:
            on_start()
        task = self.app.tasks.get(job.task)
        if task is None:
            return ChildOutcome(error=NotRegistered(f"no task named {job.task!r} is registered"))
        loop = asyncio.get_running_loop()
        sink = sink_to(self._on_report, job.job_id, progress.on_loop(loop))
        call = functools.partial(_call, task.fn, job, sink, self.app.middleware)
        began = time.monotonic()
        self.running[job.job_id] = (job.task, time.time())
        try:
            ok, value = await loop.run_in_executor(
                self._executor, contextvars.copy_context().run, call
            )
        finally:
            self.running.pop(job.job_id, None)
        duration = time.monotonic() - began
        if ok:
            return ChildOutcome(value=value, pid=os.getpid(), duration=duration)
        return ChildOutcome(error=value, pid=os.getpid(), duration=duration)

    async def terminate(self, job_id: str) -> bool:
        """A thread cannot be stopped: always False."""
        return False

    def children(self) -> list[Any]:
        return []

    def handed(self) -> list[ChildJob]:
        return []

    async def close(self, *, kill: bool = False) -> None:
        """Start nothing new; threads still running finish on their own (their jobs were
        given back)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _call(
    fn: Any, job: ChildJob, sink: Sink | None, middleware: list[Middleware]
) -> tuple[bool, Any]:
    token = set_current(job.envelope(), job.attempt, job.worker, sink)
    try:
        if middleware:
            call = functools.partial(fn, *job.args, **job.kwargs)
            return True, run_job_sync(middleware, current_job(), call)
        return True, fn(*job.args, **job.kwargs)
    except BaseException as exc:
        return False, exc
    finally:
        reset_current(token)

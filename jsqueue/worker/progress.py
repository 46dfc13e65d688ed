"""Progress of running jobs, written where users look: into the job's STARTED record, at most
about once a second per job however often the task reports, and as a "progress" event.

Reports reach :meth:`ProgressWriter.offer` on the worker's loop (from coroutine tasks, threads and
pool children alike; see :mod:`jsqueue.progress`). A report for a job that no longer runs here
is dropped, and a write never replaces a final record or another attempt's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jsqueue.errors import JsqueueError
from jsqueue.hooks import Hooks, JobEvent, emit
from jsqueue.progress import Latest, Progress, on_loop
from jsqueue.services.results import ResultBackend

log = logging.getLogger("jsqueue.worker")

#: job id -> (task, queue, started at, attempt) of the jobs running in this worker now
Running = Callable[[], Mapping[str, tuple[str, str, float, int]]]


class ProgressWriter:
    """Records what running jobs report, throttled to one write per ``interval`` per job."""

    def __init__(
        self,
        results: ResultBackend,
        hooks: Sequence[Hooks],
        running: Running,
        worker_id: str,
        recorded: Callable[[str], bool] = lambda task: True,
        interval: float = 1.0,
    ) -> None:
        self.results = results
        #: whether a task's results are recorded (an ``ignore_result`` task's progress is only
        #: an event: a record of it would stay STARTED, since no outcome replaces it)
        self.recorded = recorded
        self.hooks = hooks
        self.running = running
        self.worker_id = worker_id
        self.interval = interval
        self._latest: dict[str, Latest[Progress]] = {}
        self._writes: set[asyncio.Task[None]] = set()
        #: records written (for tests and ``inspect``: writes, not reports, are what cost)
        self.written = 0

    def offer(self, job_id: str, data: dict[str, Any]) -> None:
        """A report of ``job_id`` (``Progress.to_dict()``); call on the worker's loop."""
        report = Progress.of({"progress": data})
        running = self.running()
        if report is None or job_id not in running:
            return
        for gone in set(self._latest) - set(running):
            del self._latest[gone]
        latest = self._latest.get(job_id)
        if latest is None:
            loop = asyncio.get_running_loop()
            deliver = functools.partial(self._spawn, job_id)
            latest = self._latest[job_id] = Latest(self.interval, deliver, on_loop(loop))
        latest.offer(report)

    def _spawn(self, job_id: str, report: Progress) -> None:
        task = asyncio.get_running_loop().create_task(self._write(job_id, report))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, job_id: str, report: Progress) -> None:
        job = self.running().get(job_id)
        if job is None:
            return
        task, queue, started, attempt = job
        started_record = {"task": task, "attempts": attempt, "worker": self.worker_id}
        started_record["at"] = started
        if self.recorded(task):
            try:
                wrote = await self.results.add_to_started(
                    job_id, started_record, progress=report.to_dict()
                )
            except JsqueueError as exc:
                log.debug("progress of job %s not recorded: %s", job_id, exc)
                return
            if not wrote:
                return
        self.written += 1
        event = JobEvent(
            "progress",
            job_id,
            task,
            queue,
            time.time(),
            attempt=attempt,
            worker=self.worker_id,
            progress=report.to_dict(),
        )
        await emit(self.hooks, event)

    async def close(self) -> None:
        """Wait for the writes under way (briefly) and drop the rest."""
        self._latest.clear()
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=2)

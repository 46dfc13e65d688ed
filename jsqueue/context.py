"""The job a task is running: ``jsqueue.current_job()`` inside a task."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jsqueue import progress
from jsqueue.envelope import Envelope
from jsqueue.errors import JsqueueError

#: where a running job's progress reports go (its worker, by way of a pool child's channel)
Sink = Callable[[progress.Progress], None]
#: ``on_report(job_id, kind, data)``: how a pool hands the worker what a running job reported
ReportCallback = Callable[[str, str, dict[str, Any]], None]


@dataclass(frozen=True)
class JobContext:
    """What a running task knows about its job."""

    id: str
    task: str
    attempt: int
    queue: str
    worker: str
    headers: dict[str, str] = field(default_factory=dict)
    parent_id: str | None = None
    root_id: str | None = None
    eta: float | None = None
    #: more about the job: ``chord_id`` for a member of a chord
    extra: dict[str, Any] = field(default_factory=dict)
    sink: Sink | None = field(default=None, repr=False, compare=False)

    def progress(self, done: float, total: float | None = None, **info: Any) -> None:
        """Report how far the job is: ``done`` of ``total``, with ``info`` (small JSON).

        Call it as often as you like: the worker records the latest report at most about once
        a second, where ``await job.progress()``, ``jsqueue inspect job`` and the "progress"
        event show it. ``ValueError``/``TypeError`` for a report that is not numbers and JSON.
        """
        report = progress.report(done, total, **info)
        if self.sink is not None:
            self.sink(report)


#: What the worker knows while a task runs: (envelope, attempt, worker id, progress sink). The
#: JobContext is built only when the task asks for it: jobs that never ask pay nothing.
_Running = tuple[Envelope, int, str, Sink | None]
_current: contextvars.ContextVar[_Running] = contextvars.ContextVar("jsqueue_current_job")


def current_job() -> JobContext:
    """The job the calling task runs for; an error outside a task."""
    try:
        env, attempt, worker, sink = _current.get()
    except LookupError:
        raise JsqueueError("current_job() is only available inside a running task") from None
    return context_of(env, attempt, worker, sink)


def context_of(env: Envelope, attempt: int, worker: str, sink: Sink | None = None) -> JobContext:
    """The :class:`JobContext` of ``env`` (its headers a copy, free to change)."""
    return JobContext(
        id=env.id,
        task=env.task,
        attempt=attempt,
        queue=env.queue,
        worker=worker,
        headers=dict(env.headers or {}),
        parent_id=env.parent_id,
        root_id=env.root_id,
        eta=env.eta,
        extra={"chord_id": str(env.chord["id"])} if env.chord else {},
        sink=sink,
    )


def set_current(
    env: Envelope, attempt: int, worker: str, sink: Sink | None = None
) -> contextvars.Token[_Running]:
    return _current.set((env, attempt, worker, sink))


def sink_to(report: ReportCallback | None, job_id: str, later: progress.Later) -> Sink | None:
    """A sink that hands ``job_id``'s reports to ``report(job_id, "progress", data)`` (a
    pool's ``on_report``) at most four times a second. What keeps the pace is made at the
    first report: most jobs never report."""
    if report is None:
        return None
    latest: progress.Latest[progress.Progress] | None = None

    def deliver(item: progress.Progress) -> None:
        report(job_id, "progress", item.to_dict())

    def sink(item: progress.Progress) -> None:
        nonlocal latest
        if latest is None:
            with _first_report:  # reports may come from the task's threads
                if latest is None:
                    latest = progress.Latest(0.25, deliver, later)
        latest.offer(item)

    return sink


#: held while a sink makes what keeps its pace (once per job that reports at all)
_first_report = threading.Lock()


def reset_current(token: contextvars.Token[_Running]) -> None:
    _current.reset(token)

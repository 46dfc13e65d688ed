"""The job a task is running: ``jsqueue.current_job()`` inside a task."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any

from jsqueue.envelope import Envelope
from jsqueue.errors import JsqueueError


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
    extra: dict[str, Any] = field(default_factory=dict)


#: What the worker knows while a task runs: (envelope, attempt, worker id). The JobContext is
#: built only when the task asks for it, so jobs that never call current_job() pay nothing.
_Running = tuple[Envelope, int, str]
_current: contextvars.ContextVar[_Running] = contextvars.ContextVar("jsqueue_current_job")


def current_job() -> JobContext:
    """The job the calling task runs for; an error outside a task."""
    try:
        env, attempt, worker = _current.get()
    except LookupError:
        raise JsqueueError("current_job() is only available inside a running task") from None
    return JobContext(
        id=env.id,
        task=env.task,
        attempt=attempt,
        queue=env.queue,
        worker=worker,
        headers=env.headers or {},
        parent_id=env.parent_id,
        root_id=env.root_id,
        eta=env.eta,
    )


def set_current(env: Envelope, attempt: int, worker: str) -> contextvars.Token[_Running]:
    return _current.set((env, attempt, worker))


def reset_current(token: contextvars.Token[_Running]) -> None:
    _current.reset(token)

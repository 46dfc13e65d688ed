"""The job a task is running: ``jsqueue.current_job()`` inside a task."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any

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


_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("jsqueue_current_job")


def current_job() -> JobContext:
    """The job the calling task runs for; an error outside a task."""
    try:
        return _current.get()
    except LookupError:
        raise JsqueueError("current_job() is only available inside a running task") from None


def set_current(ctx: JobContext) -> contextvars.Token[JobContext]:
    return _current.set(ctx)


def reset_current(token: contextvars.Token[JobContext]) -> None:
    _current.reset(token)

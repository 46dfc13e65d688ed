"""Hooks: observe the life of jobs without touching the hot path when nobody listens.

A hook is an object with async methods that do nothing by default; subclass :class:`Hooks`,
override what you need and ``app.add_hook(...)``. A hook that raises is logged, and the job goes
on. Lifecycle events and Prometheus metrics are both hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger("jsqueue.hooks")

#: What can happen to a job, in the order it usually happens.
EVENT_KINDS = (
    "enqueued",
    "started",
    "succeeded",
    "retried",
    "failed",
    "dead_lettered",
    "expired",
    "revoked",
)


@dataclass(frozen=True)
class JobEvent:
    """One thing that happened to a job. ``duration`` and ``delay`` are seconds."""

    kind: str
    job_id: str
    task: str
    queue: str
    time: float
    attempt: int = 0
    worker: str = ""
    duration: float | None = None
    delay: float | None = None
    error: str | None = None
    #: for "progress": what the task reported (``done``, ``total``, ``info``, ``at``)
    progress: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != ""}


class Hooks:
    """Base class of hooks: every method is a no-op."""

    async def on_event(self, event: JobEvent) -> None:
        """A job was enqueued, started, succeeded, retried, failed, dead-lettered, ..."""

    async def on_queue_stats(self, queue: str, ready: int, unacked: int) -> None:
        """A worker's periodic look at a queue it consumes (every few seconds)."""

    async def on_worker_stop(self) -> None:
        """The worker stopped; flush what needs flushing."""


async def emit(hooks: Sequence[Hooks], event: JobEvent) -> None:
    """Hand ``event`` to every hook; a failing hook is logged and the others still run."""
    for hook in hooks:
        try:
            await hook.on_event(event)
        except Exception:
            log.exception(
                "hook %s failed on %s of job %s", type(hook).__name__, event.kind, event.job_id
            )


async def queue_stats(hooks: Sequence[Hooks], queue: str, ready: int, unacked: int) -> None:
    for hook in hooks:
        try:
            await hook.on_queue_stats(queue, ready, unacked)
        except Exception:
            log.exception("hook %s failed on queue stats", type(hook).__name__)

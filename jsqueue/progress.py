"""Progress a running task reports: ``current_job().progress(done, total, **info)``.

The task's call is checked here and handed to its worker (in the same process, or from a pool
child over its channel); the worker writes the latest report into the job's STARTED record at
most about once a second (:mod:`jsqueue.worker.progress`), where ``AsyncResult.progress()``,
``jsqueue inspect job`` and the "progress" event find it.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
#: ``later(delay, fn)``: call ``fn()`` after ``delay`` seconds, somewhere
Later = Callable[[float, Callable[[], None]], None]

#: the most a report's ``info`` may take as JSON: progress is a line on a dashboard, not data
INFO_MAX_BYTES = 4096


@dataclass(frozen=True)
class Progress:
    """How far a running job is: ``done`` of ``total`` (None: unknown), with the task's
    ``info``, as reported at Unix time ``at``."""

    done: float
    total: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    at: float = 0.0

    @property
    def fraction(self) -> float | None:
        """``done / total`` (None without a positive total)."""
        return self.done / self.total if self.total else None

    def to_dict(self) -> dict[str, Any]:
        return {"done": self.done, "total": self.total, "info": self.info, "at": self.at}

    @classmethod
    def of(cls, record: dict[str, Any]) -> Progress | None:
        """The progress in a result record, if it has any (a record is data from the bucket:
        anything unreadable counts as none)."""
        doc = record.get("progress")
        if not isinstance(doc, dict) or not _is_number(doc.get("done")):
            return None
        total: Any = doc.get("total")
        info: Any = doc.get("info")
        at: Any = doc.get("at")
        return cls(
            done=float(doc["done"]),
            total=float(total) if _is_number(total) else None,
            info=info if isinstance(info, dict) else {},
            at=float(at) if _is_number(at) else 0.0,
        )


def report(done: Any, total: Any = None, **info: Any) -> Progress:
    """A task's progress call, checked: numbers, and ``info`` that is small JSON."""
    if not _is_number(done) or not math.isfinite(done) or done < 0:
        raise ValueError(f"progress(done=...): expected a number >= 0, not {done!r}")
    if total is not None and (not _is_number(total) or not math.isfinite(total) or total < 0):
        raise ValueError(f"progress(total=...): expected a number >= 0 or None, not {total!r}")
    try:
        size = len(json.dumps(info, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"progress(**info): the info must be plain JSON: {exc}") from None
    if size > INFO_MAX_BYTES:
        raise ValueError(
            f"progress(**info): {size} bytes of info as JSON, more than {INFO_MAX_BYTES}; "
            "report a summary, and return the data as the result"
        )
    return Progress(float(done), None if total is None else float(total), info, time.time())


class Latest(Generic[T]):
    """Hands on the latest of what it is offered, at most once per ``interval`` seconds and
    never leaving the last offer behind: a task may call ``progress()`` a million times a
    second and cost one hand-on per interval. Offers may come from any thread; ``later``
    decides where ``deliver`` runs."""

    def __init__(self, interval: float, deliver: Callable[[T], None], later: Later) -> None:
        self.interval = interval
        self._deliver = deliver
        self._later = later
        self._lock = threading.Lock()
        self._pending: T | None = None
        self._scheduled = False
        self._last = -math.inf

    def offer(self, item: T) -> None:
        with self._lock:
            self._pending = item
            if self._scheduled:
                return
            self._scheduled = True
            delay = max(0.0, self._last + self.interval - time.monotonic())
        self._later(delay, self._flush)

    def _flush(self) -> None:
        with self._lock:
            item, self._pending = self._pending, None
            self._scheduled = False
            self._last = time.monotonic()
        if item is not None:
            self._deliver(item)


def on_loop(loop: asyncio.AbstractEventLoop) -> Later:
    """``later`` that runs on ``loop``, from whichever thread offers."""

    def later(delay: float, fn: Callable[[], None]) -> None:
        loop.call_soon_threadsafe(loop.call_later, delay, fn)

    return later


def in_thread(delay: float, fn: Callable[[], None]) -> None:
    """``later`` for a process without a loop (a pool child): now in the caller, or after
    ``delay`` in a timer thread."""
    if delay <= 0:
        fn()
        return
    timer = threading.Timer(delay, fn)
    timer.daemon = True
    timer.start()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

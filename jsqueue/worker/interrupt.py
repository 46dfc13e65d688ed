"""Interrupting an ``async def`` task with an exception of our choosing, never a bare cancel.

asyncio can only cancel a task: ``CancelledError`` lands at the task's ``await``. For a soft time
limit the task must see :class:`SoftTimeLimitExceeded` instead, so that ``except
SoftTimeLimitExceeded:`` cleans up the same way in a child process and on the loop. So the worker
runs the task's coroutine through :class:`Interruptible`, which drives it step by step: to
interrupt it, the worker records the exception and cancels the asyncio task; the driver catches
that cancel, takes it back (``Task.uncancel``) and throws the recorded exception into the
coroutine in its place. A cancel that nobody recorded (the worker shutting down) passes through
as it is, and so does :meth:`stop`'s (revoke with ``terminate=True``): a task may catch an
exception and go on, but not a stop.

Each step of the coroutine runs in a context of its own, copied when it is created (as a task
of its own would): the worker runs one job after another in a slot's asyncio task, and nothing a
task sets in a context variable leaks into the next job.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Generator
from typing import Any


class Interruptible:
    """Await ``Interruptible(coro)`` in a task; :meth:`interrupt` throws into ``coro``."""

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self._context = contextvars.copy_context()
        self._task: asyncio.Task[Any] | None = None
        self._pending: BaseException | None = None
        #: :meth:`stop` was called: a CancelledError out of ``await`` is ours
        self.stopped = False

    def stop(self) -> bool:
        """Cancel the coroutine (a CancelledError at its ``await``); False if not running."""
        task = self._task
        if task is None or task.done():
            return False
        self.stopped = True
        task.cancel()
        return True

    def interrupt(self, error: BaseException) -> bool:
        """Raise ``error`` inside the coroutine at its next ``await``; False if it is not
        running (not started yet, or finished)."""
        task = self._task
        if task is None or task.done():
            return False
        self._pending = error
        task.cancel()
        return True

    def __await__(self) -> Generator[Any, Any, Any]:
        coro = self._coro
        run = self._context.run
        sent: Any = None
        thrown: BaseException | None = None
        done = False
        try:
            while True:
                try:
                    yielded = run(coro.send, sent) if thrown is None else run(coro.throw, thrown)
                except StopIteration as stop:
                    done = True  # finished: nothing to close
                    return stop.value
                sent, thrown = None, None
                if self._task is None:
                    # Running from its first suspension on: only then can anything else (a
                    # timer, a revoke) run and interrupt it, and a coroutine that finishes
                    # in one step (most do) never asks asyncio for its task.
                    self._task = asyncio.current_task()
                try:
                    sent = yield yielded
                except asyncio.CancelledError as cancel:
                    thrown = self._take_back(cancel)
                except BaseException as exc:
                    thrown = exc
        finally:
            self._task = None
            if not done:
                coro.close()

    def _take_back(self, cancel: asyncio.CancelledError) -> BaseException:
        """Ours (an interrupt): the exception to throw instead, the cancel withdrawn."""
        pending, self._pending = self._pending, None
        if pending is None or self.stopped:
            return cancel
        if self._task is not None:
            self._task.uncancel()
        return pending

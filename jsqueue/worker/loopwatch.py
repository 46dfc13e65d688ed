"""Naming the task that blocks the worker's event loop, and for how long.

An ``async def`` task that calls blocking code (``time.sleep``, a sync HTTP client, a CPU loop)
stops every other job on the loop, and the worker's heartbeats with them: the server then
redelivers jobs that are in fact running. The worker cannot preempt it, but it can say so. A tick
on the loop records the time every ``interval``; a watchdog thread notices when the tick is late
by more than ``threshold``, looks at the loop thread's stack (``sys._current_frames``, which
debuggers and faulthandler use too) for the job being executed, and logs a warning naming it.
When the loop runs again, one more line says how long it was blocked in all.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("jsqueue.worker")

#: Given the loop thread's current frame, the job running in it ("task[id]"), if any.
Culprit = Callable[[FrameType], str | None]


class LoopWatch:
    """Warns when the running event loop is blocked for longer than ``threshold`` seconds."""

    def __init__(self, threshold: float, culprit: Culprit, interval: float | None = None) -> None:
        self.threshold = threshold
        self.interval = interval or min(0.1, threshold / 4)
        self._culprit = culprit
        self._last = time.monotonic()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._loop_thread = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: set by the watchdog thread while the loop is blocked: (who, since)
        self._blocked: tuple[str, float] | None = None
        self.warnings = 0

    def start(self) -> None:
        """Start watching the running loop (call from inside it)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._last = time.monotonic()
        self._handle = self._loop.call_later(self.interval, self._tick)
        self._thread = threading.Thread(target=self._watch, name="jsqueue-loopwatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
        if self._thread is not None:
            self._thread.join(1)

    def _tick(self) -> None:
        now = time.monotonic()
        blocked, self._blocked = self._blocked, None
        if blocked is not None:
            who, since = blocked
            log.warning("%s blocked the event loop for %.1fs in all", who, now - since)
        self._last = now
        assert self._loop is not None
        self._handle = self._loop.call_later(self.interval, self._tick)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            last = self._last
            late = time.monotonic() - last
            if late <= self.threshold or self._blocked is not None:
                continue
            frame = sys._current_frames().get(self._loop_thread)
            who = (self._culprit(frame) if frame is not None else None) or "a callback"
            if self._last != last:
                continue  # the loop ran again meanwhile
            self._blocked = (who, last)
            self.warnings += 1
            log.warning(
                "%s has blocked the event loop for %.1fs: every job on this worker waits, and "
                "heartbeats stop (jobs may be redelivered); an async def task must not call "
                "blocking code: make it a plain def task, or await asyncio.to_thread(...)",
                who,
                late,
            )

"""A worker's share of cluster-wide limits, kept locally so that most jobs need no round trip.

:class:`Starts` holds rate-limit starts the worker reserved ahead (a few at a time at high
rates, one compare-and-set for them all) and hands them to its jobs in order. :class:`Slots`
holds the concurrency slots the worker took in the cluster's count: a job takes one, and a slot
freed by a job is kept a moment (``LINGER``) for the worker's next job of that task before it
is given back, so a steady stream of jobs reuses its slots instead of writing the key twice per
job. The cluster-wide records are :mod:`jsqueue.services.limits`'s.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque

from jsqueue.limits import Rate
from jsqueue.services import limits
from jsqueue.wire import KvStore

log = logging.getLogger("jsqueue.worker")

#: starts reserved at once cover this many seconds of the rate (at least one start)
BATCH_SECONDS = 0.05
#: a reserved start not taken this long after it is dropped: a job kept waiting by its worker
#: (its slots busy, the machine loaded) still takes its own start, one that came far too late
#: does not, since taking it then would bunch starts
START_SLACK = 1.0
#: seconds a freed slot is kept for this worker's next job of the task
LINGER = 0.1


class Starts:
    """Reserved rate-limit starts of one task, on one worker."""

    def __init__(self, store: KvStore, task: str, rate: Rate) -> None:
        self._store, self._task, self._rate = store, task, rate
        self._ahead: deque[float] = deque()
        self._lock = asyncio.Lock()
        self.batch = max(1, math.ceil(rate.per_second * BATCH_SECONDS))

    async def next(self) -> float:
        """The start (wall clock) of the next job: reserved ahead, or reserved now."""
        async with self._lock:
            now = time.time()
            while self._ahead and self._ahead[0] < now - START_SLACK:
                self._ahead.popleft()
            if not self._ahead:
                starts = await limits.reserve_starts(
                    self._store, self._task, self._rate, self.batch
                )
                self._ahead.extend(starts)
            return self._ahead.popleft()


class Slots:
    """The concurrency slots of one task that this worker holds in the cluster's count."""

    def __init__(self, store: KvStore, task: str, cap: int, worker: str, stale: float) -> None:
        self._store, self._task, self._cap = store, task, cap
        self._worker, self._stale = worker, stale
        self.granted = 0  # held in the cluster's count
        self.used = 0  # taken by jobs running here
        self._spare = 0  # given up here, still in the count (a trim that failed)
        self._lock = asyncio.Lock()
        self._trim: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def take(self) -> bool:
        """Take a slot for a job; False if the cluster has none free."""
        if self.used < self.granted:
            self.used += 1
            return True
        async with self._lock:
            if self.used >= self.granted:
                self.granted = await self._hold(self.granted + 1)
            if self.used < self.granted:
                self.used += 1
                return True
            return False

    def give(self) -> None:
        """A job gave its slot up: keep it a moment for the next, then give it back."""
        self.used = max(0, self.used - 1)
        if self._trim is None:
            self._trim = asyncio.get_running_loop().call_later(LINGER, self._start_trim)

    def _start_trim(self) -> None:
        self._trim = None
        task = asyncio.get_running_loop().create_task(self.trim())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def trim(self) -> None:
        """Give back what no job here uses."""
        async with self._lock:
            if self.granted <= self.used:
                return
            target, held = self.used, self.granted
            self.granted = target  # from now on no job here takes the slots given back
            try:
                self.granted = await self._hold(target)
            except Exception as exc:  # still ours in the count: given back at the next try
                log.warning("slots of %s not given back yet: %s", self._task, exc)
                self._spare = held - target

    async def close(self) -> None:
        """Give back every slot held here (the worker stops)."""
        if self._trim is not None:
            self._trim.cancel()
        async with self._lock:
            if self.granted > 0 or self._spare:
                self.granted = self._spare = 0
                await self._hold(0)

    async def renew(self) -> None:
        """Say that the slots held here are still in use (before they go stale), and give
        back what a failed trim kept."""
        if self.granted > 0 or self._spare:
            async with self._lock:
                self._spare = 0
                self.granted = await self._hold(self.granted, renew=True)

    async def _hold(self, want: int, renew: bool = False) -> int:
        return await limits.hold_slots(
            self._store, self._task, self._cap, self._worker, want, self._stale, renew
        )

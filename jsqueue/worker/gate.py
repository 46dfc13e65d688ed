"""Letting a suspect job run alone: a gate that jobs pass together, or one job alone.

In one worker process a job that kills the process (``os._exit``, a segfault in a C extension)
takes every job beside it down, and all of them are delivered again. To blame only the culprit,
a job delivered again after its worker died runs *alone*: it waits until the jobs beside it are
run and settled, and no other job starts until it is settled too (see "Attempts, waits and
crashes" in the design notes). A job holds the gate from before it runs until it is settled, so a
crash while one job runs alone can be nobody else's. Normal jobs pass with a counter update and
no await; only while a job waits to run alone, or runs alone, do the others wait.
"""

from __future__ import annotations

import asyncio


class Gate:
    """:meth:`enter` together (``alone=False``) or alone; :meth:`leave` the same way."""

    def __init__(self) -> None:
        self._together = 0
        self._alone = False
        self._queued_alone = 0
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def closed(self) -> bool:
        """Whether a job runs alone or waits to (other jobs wait)."""
        return self._alone or self._queued_alone > 0

    def enter_now(self) -> bool:
        """Enter together if that needs no wait (the common case, without an ``await``)."""
        if self._alone or self._queued_alone > 0:
            return False
        self._together += 1
        return True

    async def enter(self, *, alone: bool) -> None:
        if not alone:
            while self.closed:
                await self._wait()
            self._together += 1
            return
        self._queued_alone += 1
        try:
            while self._alone or self._together:
                await self._wait()
        except BaseException:
            self._queued_alone -= 1
            self._wake()  # the jobs it held back may go
            raise
        self._queued_alone -= 1
        self._alone = True

    def leave(self, *, alone: bool) -> None:
        if alone:
            self._alone = False
            self._wake()
            return
        self._together -= 1
        if self._together == 0 and self._waiters:
            self._wake()

    async def _wait(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

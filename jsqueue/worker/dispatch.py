"""Handing deliveries to job tasks: one lane per queue, never more jobs started than slots.

A delivery starts at once if its lane has a free slot, else waits in the lane's backlog (held,
its heartbeats sent); a settled job frees its slot for the next, and its puller asks the server
for more. At shutdown the pullers close first, so that a job given back cannot come back to this
worker's own open pull requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from jsqueue.wire import Delivery, Puller

log = logging.getLogger("jsqueue.worker")


@dataclass
class Lane:
    """One queue's puller, with the jobs it runs and those waiting for a slot."""

    puller: Puller
    running: int = 0
    backlog: deque[Delivery] = field(default_factory=deque)


class Dispatch:
    """Starts ``process(delivery)`` tasks, slot by slot, and gives jobs back when told to."""

    def __init__(
        self, process: Callable[[Delivery], Awaitable[None]], stopping: Callable[[], bool]
    ) -> None:
        self._process = process
        self._stopping = stopping
        self.lanes: dict[str, Lane] = {}
        #: the asyncio tasks of the jobs in flight (strong references)
        self.tasks: set[asyncio.Task[None]] = set()
        #: deliveries held (running or waiting for a slot) -> when they arrived (monotonic)
        self.active: dict[Delivery, float] = {}

    def add_lane(self, queue: str, puller: Puller) -> None:
        self.lanes[queue] = Lane(puller)

    def held(self) -> int:
        """Deliveries waiting for a slot, in every lane."""
        return sum(len(lane.backlog) for lane in self.lanes.values())

    def on_delivery(self, delivery: Delivery) -> None:
        lane = self.lanes[delivery.queue]
        if lane.running < lane.puller.capacity:
            self._start(lane, delivery)
        else:
            lane.backlog.append(delivery)
            self.active[delivery] = time.monotonic()

    def on_late(self, delivery: Delivery) -> None:
        """A job that arrived after we stopped pulling: give it back at once."""
        lane = self.lanes[delivery.queue]

        async def give_back() -> None:
            await self.give_back(delivery)
            await lane.puller.release()

        self._track(asyncio.get_running_loop().create_task(give_back()))

    def _start(self, lane: Lane, delivery: Delivery) -> None:
        lane.running += 1
        self.active[delivery] = time.monotonic()
        self._track(asyncio.get_running_loop().create_task(self._handle(lane, delivery)))

    def _track(self, task: asyncio.Task[None]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, lane: Lane, delivery: Delivery) -> None:
        try:
            await self._process(delivery)
        except asyncio.CancelledError:
            await self.give_back(delivery)
            raise
        except Exception:
            # Our own failure (e.g. the server went away while settling): the job stays
            # unacked and the server delivers it again after ack_wait.
            log.exception("job on %s (delivery %d) not settled", delivery.queue, delivery.attempt)
        finally:
            self.active.pop(delivery, None)
            lane.running -= 1
            if lane.backlog and not self._stopping():
                self._start(lane, lane.backlog.popleft())
            await lane.puller.release()

    async def give_back(self, delivery: Delivery) -> None:
        """``nak`` a delivery that is not settled, so that it runs again at once elsewhere."""
        self.active.pop(delivery, None)
        if not delivery.settled:
            try:
                await delivery.nak()
            except Exception as exc:  # disconnected: it comes back after ack_wait
                log.debug("nak at shutdown failed: %r", exc)

    async def drain(self, grace: float) -> None:
        """Stop pulling, let running jobs finish within ``grace``, give back the rest."""
        for lane in self.lanes.values():
            await lane.puller.close()
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=grace)
            if pending:
                log.warning(
                    "%d job(s) still running after %.1fs; giving them back", len(pending), grace
                )
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=10)
        for lane in self.lanes.values():
            while lane.backlog:
                delivery = lane.backlog.popleft()
                await self.give_back(delivery)
                await lane.puller.release()

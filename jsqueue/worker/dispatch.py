"""Handing deliveries to job tasks: one lane per queue and priority level, sharing the worker's
slots.

Every lane (a queue at one priority level, see :data:`jsqueue.config.LEVELS`) has a puller.
The worker's ``concurrency`` slots belong to no lane: a delivery starts when a slot is free, and
when several lanes have deliveries waiting, the next slot goes to the lane whose turn it is,
turns weighted by priority (a level gets twice the share of the one below it), so urgent work
overtakes a backlog and low work still moves while urgent work keeps coming. A lane that has
work may ask the server for up to ``concurrency + prefetch`` jobs (the worker's ``prefetch``),
and for half as many again as ``concurrency`` at least while other lanes have work too; one that
found nothing on its last request asks for one, which is enough to notice work. However many
lanes ask, the worker holds at most ``concurrency + max(prefetch, concurrency)`` jobs (running
plus waiting for a slot) and ``max(2, lanes)`` more for the one-job requests of idle lanes: a
bounded over-pull, so that a free slot finds a job of each busy lane to keep the turns, and a
worker on ``-Q a,b`` with ``a`` empty runs ``b`` on every slot.

A waiting delivery has its heartbeats sent, so its ack timer never runs out. A job that must
wait for a cluster-wide limit (``process`` returns when to try it again) is *parked*: it gives
its slot up, and up to ``concurrency`` parked jobs do not count against the over-pull, so the
jobs of other tasks behind it keep coming. A paused lane
starts nothing and asks for nothing; a delivery that waits on it longer than ``hold`` seconds
is handed back (re-published with its attempt carried, then acked: a wait is not an attempt).
At shutdown the pullers close first, so that a job given back cannot come back to this worker's
own open pull requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from jsqueue.config import PRIORITY_NORMAL
from jsqueue.wire import Delivery, Puller
from jsqueue.worker.lane import Lane

log = logging.getLogger("jsqueue.worker")

#: seconds a delivery may wait on a paused lane before it is handed back
PAUSE_HOLD = 30.0


class Dispatch:
    """Starts ``process(delivery)`` tasks, slot by slot, and gives jobs back when told to."""

    def __init__(
        self,
        process: Callable[[Delivery], Awaitable[float | None]],
        stopping: Callable[[], bool],
        concurrency: int = 1,
        hand_back: Callable[[Delivery], Awaitable[None]] | None = None,
        prefetch: int | None = None,
    ) -> None:
        self._process = process
        self._stopping = stopping
        self.concurrency = concurrency
        #: deliveries the worker may hold beyond ``concurrency``, waiting for a slot
        self.prefetch = concurrency if prefetch is None else prefetch
        self._hand_back = hand_back
        self.lanes: dict[tuple[str, int], Lane] = {}
        #: the asyncio tasks of the jobs in flight (strong references)
        self.tasks: set[asyncio.Task[None]] = set()
        #: deliveries held (running or waiting for a slot) -> when they arrived (monotonic)
        self.active: dict[Delivery, float] = {}
        self.running = 0
        self._clock = 0.0
        #: parked deliveries -> the timer that puts them back in their lane
        self._parked: dict[Delivery, asyncio.TimerHandle] = {}
        self._by_priority: list[Lane] = []
        self._fill_due, self._look_all = False, False
        self._yielding = 0  # runners that let the loop come round without waiting on I/O

    # -- lanes ---------------------------------------------------------------------------------

    def add_lane(self, queue: str, puller: Puller, priority: int = PRIORITY_NORMAL) -> None:
        self.lanes[(queue, priority)] = Lane(queue, priority, puller)
        self._by_priority = sorted(self.lanes.values(), key=lambda lane: -lane.priority)
        puller.on_idle_change = self._on_idle_change
        puller.room = self._pull_room
        self._set_caps()

    @property
    def budget(self) -> int:
        """Jobs the worker may hold and have requested, all lanes together."""
        return self.concurrency + max(self.prefetch, self.concurrency) + max(2, len(self.lanes))

    def held(self) -> int:
        """Deliveries waiting for a slot, in every lane."""
        return sum(len(lane.waiting) for lane in self.lanes.values())

    def held_by_queue(self) -> dict[str, int]:
        """Deliveries held and not running (waiting for a slot, or parked), per queue."""
        held: dict[str, int] = {}
        for lane in self.lanes.values():
            if count := len(lane.waiting) + lane.parked:
                held[lane.queue] = held.get(lane.queue, 0) + count
        return held

    def _set_caps(self) -> None:
        """A lane with work may ask for up to ``concurrency + prefetch`` jobs (while other
        lanes have work too, for at least half as many again as ``concurrency``, so that a free
        slot finds a job of each waiting and the turns can be kept), an idle one for one, a
        paused one for none; the budget bounds them together (see :meth:`_pull_room`)."""
        self._look_all = True
        only = len(self.lanes) == 1
        busy = sum(1 for lane in self.lanes.values() if not lane.puller.idle and not lane.paused)
        turns = max(1, self.concurrency // 2)  # jobs of each lane waiting, for the turns
        extra = max(self.prefetch, turns) if busy > 1 else self.prefetch
        share = self.concurrency + extra
        for lane in self.lanes.values():
            if lane.paused:
                lane.puller.capacity = lane.puller.held  # nothing new
            elif only or not lane.puller.idle:
                lane.puller.capacity = share + lane.parked
            else:
                lane.puller.capacity = lane.puller.held + 1

    def _on_idle_change(self) -> None:
        self._set_caps()
        self._refill_soon()

    def set_paused(self, queue: str, paused: bool) -> None:
        """Stop (or go on) starting and pulling ``queue``'s jobs, at every priority level."""
        changed = False
        for lane in self.lanes.values():
            if lane.queue == queue and lane.paused != paused:
                lane.paused = paused
                changed = True
                if not paused:
                    lane.turn = max(lane.turn, self._clock)
        if not changed:
            return
        self._set_caps()
        if not paused:
            self._fill()
            self._refill_soon()

    def paused_queues(self) -> set[str]:
        return {lane.queue for lane in self.lanes.values() if lane.paused}

    # -- deliveries ----------------------------------------------------------------------------

    def on_delivery(self, delivery: Delivery) -> None:
        lane = self.lanes[(delivery.queue, delivery.priority)]
        if not lane.waiting and not lane.running:
            lane.turn = max(lane.turn, self._clock)  # no credit for the time it had no work
        lane.waiting.append(delivery)
        self.active[delivery] = delivery.received
        (self._fill if self.running == 0 else self._fill_soon)()  # idle: start it now

    def on_late(self, delivery: Delivery) -> None:
        """A job that arrived after we stopped pulling: give it back at once."""
        lane = self.lanes[(delivery.queue, delivery.priority)]

        async def give_back() -> None:
            await self.give_back(delivery)
            await lane.puller.release()

        self.track(asyncio.get_running_loop().create_task(give_back()))

    def _fill(self) -> None:
        """Start a runner now, and one for each delivery still waiting when the loop comes round
        (every runner that could go on has then suspended: no job waits on a free slot)."""
        if self._start():
            self._fill_soon()

    def _start(self) -> bool:
        if self._stopping() or self.running >= self.concurrency:
            return False
        picked = self._next()
        if picked is None:
            return False
        self.track(asyncio.get_running_loop().create_task(self._run(*picked)))
        return True

    def _fill_soon(self) -> None:  # once the loop comes round
        if not self._fill_due:
            self._fill_due = True
            asyncio.get_running_loop().call_soon(self._fill_now)

    def _fill_now(self) -> None:
        self._fill_due = False
        if self._yielding:
            return  # a runner only let the loop send its pull request: it goes on after
        while self._start():
            pass

    def _next(self) -> tuple[Lane, Delivery] | None:
        """The next delivery to start, taken from the lane whose turn it is, its slot taken."""
        best: Lane | None = None
        for lane in self.lanes.values():
            if not lane.waiting or lane.paused:
                continue
            if best is None or (lane.turn, -lane.priority) < (best.turn, -best.priority):
                best = lane
        if best is None:
            return None
        self._clock = best.turn
        best.turn += 1.0 / best.weight
        best.running += 1
        self.running += 1
        return best, best.waiting.popleft()

    def track(self, task: asyncio.Task[None]) -> None:
        """Count ``task`` with the running jobs: a stop or a reconnect waits for it."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, lane: Lane, delivery: Delivery) -> None:
        """A slot's runner: job after job, no task each; a context each (:mod:`.interrupt`)."""
        while True:
            requests = lane.puller.requests
            await self._handle(lane, delivery)
            if lane.puller.requests != requests:
                await self._let_pull()
            if self._stopping() or (picked := self._next()) is None:
                return
            lane, delivery = picked

    async def _let_pull(self) -> None:
        """Let the loop send the pull request just made (what waits stays this runner's)."""
        self._yielding += 1
        try:
            await asyncio.sleep(0)
        finally:
            self._yielding -= 1
        if any(lane.waiting for lane in self._by_priority):
            self._fill_soon()  # should this runner's next job suspend, the rest start then

    async def _handle(self, lane: Lane, delivery: Delivery) -> None:
        again: float | None = None
        try:
            again = await self._process(delivery)
        except asyncio.CancelledError:
            await self.give_back(delivery)
            raise
        except Exception:
            # Our own failure (e.g. the server went away while settling): the job stays
            # unacked and the server delivers it again after ack_wait.
            log.exception("job on %s (delivery %d) not settled", delivery.queue, delivery.attempt)
        finally:
            lane.running -= 1
            self.running -= 1
            if again is not None and not self._stopping():
                self._park(lane, delivery, again)
            else:
                if again is not None:
                    await self.give_back(delivery)
                self.active.pop(delivery, None)
                lane.puller.held -= 1
            await self._refill(lane)

    # -- parking -------------------------------------------------------------------------------

    def park_room(self) -> bool:
        """Whether one more delivery may park here (see the module's docstring)."""
        return len(self._parked) < self.concurrency

    def _park(self, lane: Lane, delivery: Delivery, until: float) -> None:
        """Hold ``delivery`` without a slot until ``until`` (monotonic), then put it first in
        its lane again."""

        def wake() -> None:
            self._parked.pop(delivery, None)
            lane.parked -= 1
            lane.waiting.appendleft(delivery)
            self._set_caps()
            self._fill()

        delay = max(0.0, until - time.monotonic())
        self._parked[delivery] = asyncio.get_running_loop().call_later(delay, wake)
        lane.parked += 1
        self._set_caps()

    def _unpark_all(self) -> list[Delivery]:
        parked = list(self._parked)
        for delivery, timer in self._parked.items():
            timer.cancel()
            self.lanes[(delivery.queue, delivery.priority)].parked -= 1
        self._parked.clear()
        return parked

    # -- pulling -------------------------------------------------------------------------------

    def _pull_room(self) -> int:
        used = sum(lane.puller.held + lane.puller.outstanding for lane in self.lanes.values())
        room = self.budget + len(self._parked) - used
        if room <= 0:
            self._look_all = True  # a lane may be denied a pull: look at all of them later
        return room

    async def _refill(self, first: Lane | None = None) -> None:
        """Let lanes ask for more within the budget, ``first`` first (the others by priority)."""
        if first is not None:
            if not first.paused and first.puller.wants_more:
                if self._pull_room() <= 0:
                    return
                await first.puller.refill()
            if not self._look_all:
                return
        self._look_all = False
        for lane in self._by_priority:
            if lane is first or lane.paused or not lane.puller.wants_more:
                continue
            if self._pull_room() <= 0:
                return
            await lane.puller.refill()

    def _refill_soon(self) -> None:
        if not self._stopping():
            self.track(asyncio.get_running_loop().create_task(self._refill()))

    # -- giving back ---------------------------------------------------------------------------

    async def give_back(self, delivery: Delivery) -> None:
        """``nak`` a delivery that is not settled, so that it runs again at once elsewhere."""
        self.active.pop(delivery, None)
        if not delivery.settled:
            try:
                await delivery.nak()
            except Exception as exc:  # disconnected: it comes back after ack_wait
                log.debug("nak at shutdown failed: %r", exc)

    async def hand_back_held(self, hold: float = PAUSE_HOLD) -> int:
        """Hand back what waited on a paused lane longer than ``hold`` seconds; how many."""
        if self._hand_back is None:
            return 0
        now = time.monotonic()
        handed = 0
        for lane in self.lanes.values():
            if not lane.paused:
                continue
            while lane.waiting and now - self.active.get(lane.waiting[0], now) > hold:
                delivery = lane.waiting.popleft()
                try:
                    await self._hand_back(delivery)
                except Exception as exc:  # try again at the next look; it stays held
                    lane.waiting.appendleft(delivery)
                    log.warning("job on paused %s not handed back: %s", lane.queue, exc)
                    break
                self.active.pop(delivery, None)
                lane.puller.held -= 1
                handed += 1
        if handed:
            self._look_all = True
        return handed

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
        # jobs that never started here are handed back, not nak'ed: a wait is no attempt
        for delivery in self._unpark_all():
            await self._give_back_unstarted(delivery)
            self.lanes[(delivery.queue, delivery.priority)].puller.held -= 1
        for lane in self.lanes.values():
            while lane.waiting:
                delivery = lane.waiting.popleft()
                await self._give_back_unstarted(delivery)
                lane.puller.held -= 1

    async def _give_back_unstarted(self, delivery: Delivery) -> None:
        """Hand a delivery that never started back to the end of its queue, its attempts
        carried (a ``nak`` if that fails: it runs again at once elsewhere, one delivery on)."""
        if self._hand_back is not None and not delivery.settled:
            try:
                await self._hand_back(delivery)
                self.active.pop(delivery, None)
                return
            except Exception as exc:
                log.debug("hand-back at shutdown failed (%r): giving it back with a nak", exc)
        await self.give_back(delivery)

    def clear(self) -> None:
        """Forget every waiting delivery (their connection is gone: they come back)."""
        for delivery in self._unpark_all():
            self.active.pop(delivery, None)
        for lane in self.lanes.values():
            for delivery in lane.waiting:
                self.active.pop(delivery, None)
            lane.waiting.clear()

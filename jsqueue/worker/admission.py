"""Letting a limited task's job start: its rate-limit start time and its concurrency slot.

Before a job of a task with ``rate_limit`` or ``max_concurrency`` runs, the worker takes its
start time and one of its slots from the worker's share (:mod:`jsqueue.worker.leases`). A job
that must wait does so without a run slot and without a ``nak`` (a wait is not an attempt,
DESIGN "Attempts, waits and crashes"):

- it *parks* in the worker (its heartbeats go on) when the worker has room for it and the wait
  is short: until its reserved start (up to ``PARK_MAX``), or, waiting for a slot, to look
  again a little later each time (up to ``SLOT_PARK``);
- otherwise it is *handed back*: sent again on a server schedule with its attempts carried, and
  acked. It comes back on its queue's due level (:data:`jsqueue.config.LEVEL_DUE`), pulled
  before every other, so no backlog delays it: just before its reserved start (``Jsq-Start``,
  which it keeps), or, waiting for a slot, a while later (twice as long each time,
  ``Jsq-Waits`` counts them).

Either way the jobs of other tasks behind it go on.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass

from jsqueue.config import Settings
from jsqueue.services import limits, republish
from jsqueue.task import Task
from jsqueue.wire import Broker, Delivery, KvStore
from jsqueue.worker.leases import START_SLACK, Slots, Starts

log = logging.getLogger("jsqueue.worker")

#: the header of a handed-back job: how many times it was handed back to wait
WAITS_HEADER = "Jsq-Waits"
#: the header of a handed-back job: the rate-limit start it reserved (unix seconds)
START_HEADER = "Jsq-Start"
#: a wait up to this long for a reserved start parks in the worker (if it has room)
PARK_MAX = 2.0
#: a job handed back to its reserved start comes back this much before it (and parks)
EARLY = 0.5
#: how long a job that waits for a slot sleeps before it looks again (growing to SLOT_POLL_MAX)
SLOT_POLL = 0.05
SLOT_POLL_MAX = 0.5
#: how long a job waits for a slot parked here before it is handed back instead
SLOT_PARK = 5.0
#: the longest a handed-back job stays on its schedule
HAND_BACK_MAX = 30.0


@dataclass(frozen=True)
class Wait:
    """The job may not start before ``at`` (wall clock); ``why`` is ``rate`` or ``slot``;
    ``park``: whether it waits here (else it is handed back)."""

    at: float
    why: str
    park: bool
    #: the rate-limit start it reserved, which it keeps when it is handed back
    start: float | None = None


class Admission:
    """The limits of one worker's jobs: starts, slots, and the waits between."""

    def __init__(self, broker: Broker, settings: Settings, worker_id: str) -> None:
        self._broker = broker
        self._worker = worker_id
        self._stale = settings.ack_wait
        self._store: KvStore | None = None
        #: job id -> the start it reserved while it is parked here
        self._starts: dict[str, float] = {}
        #: job id -> (when it first found every slot taken here, how often since)
        self._slot_waits: dict[str, tuple[float, int]] = {}
        self._ahead: dict[str, Starts] = {}
        self.slots: dict[str, Slots] = {}

    async def _kv(self) -> KvStore:
        if self._store is None:
            self._store = await limits.bucket(self._broker)
        return self._store

    async def admit(
        self, task: Task[..., object], job_id: str, delivery: Delivery, room: bool
    ) -> Wait | None:
        """None when the job may start now (its slot, if any, is taken); else how it waits.
        ``room``: whether the worker may park one more job."""
        rate, cap = task.rate, task.options.max_concurrency
        if rate is None and cap is None:
            return None
        store = await self._kv()
        start = self._starts.get(job_id)
        if start is None and rate is not None:
            start = _header_float(delivery, START_HEADER)
        if start is not None and start < time.time() - START_SLACK:
            start = None  # it came far too late for its start: taking it now would bunch
        if start is None and rate is not None:
            if task.name not in self._ahead:
                self._ahead[task.name] = Starts(store, task.name, rate)
            start = await self._ahead[task.name].next()
        if start is not None:
            ahead = start - time.time()
            if ahead > 0.001:
                self._starts[job_id] = start
                return Wait(start, "rate", room and ahead <= PARK_MAX, start)
        if cap is not None:
            slots = self.slots.get(task.name)
            if slots is None:
                slots = Slots(store, task.name, cap, self._worker, self._stale)
                self.slots[task.name] = slots
            if not await slots.take():
                now = time.time()
                first, tries = self._slot_waits.get(job_id, (now, 0))
                self._slot_waits[job_id] = (first, tries + 1)
                if room and now - first < SLOT_PARK:  # look again soon, later each time
                    if start is not None:
                        self._starts[job_id] = start
                    return Wait(now + min(SLOT_POLL_MAX, SLOT_POLL * 1.5**tries), "slot", True)
                self.forget(job_id)
                return self._hand_back_wait(delivery, start)
        self.forget(job_id)
        return None

    @staticmethod
    def _hand_back_wait(delivery: Delivery, start: float | None) -> Wait:
        """Back on a schedule: 1 s after the first wait, twice as long each time (up to
        ``HAND_BACK_MAX``), jittered so that a backlog handed back together comes apart."""
        pause = min(HAND_BACK_MAX, 2.0 ** _waits(delivery)) * random.uniform(0.75, 1.25)
        return Wait(time.time() + pause, "slot", False, start)

    async def hand_back(self, delivery: Delivery, job_id: str, wait: Wait) -> None:
        """Send the job again on a server schedule for when its wait ends, then ack this
        delivery."""
        headers = {WAITS_HEADER: str(_waits(delivery) + 1)}
        at = wait.at
        if wait.start is not None:
            headers[START_HEADER] = repr(wait.start)
            if wait.why == "rate":
                at -= EARLY  # back just before its start, to park for the rest
        await republish.defer(self._broker, delivery, job_id=job_id, at=at, headers=headers)
        await delivery.ack()
        self.forget(job_id)

    async def release_unique(self, key: str, job_id: str) -> None:
        """Release unique ``key`` held by ``job_id``, which reached a final state."""
        try:
            await limits.unlock_unique(await self._kv(), key, job_id)
        except Exception as exc:  # the key's TTL (unique_for) frees it then
            log.warning("unique key %s of job %s not released (%s)", key, job_id, exc)

    def forget(self, job_id: str) -> None:
        """Drop what is remembered of a waiting job (it started, or left this worker)."""
        self._starts.pop(job_id, None)
        self._slot_waits.pop(job_id, None)

    def release(self, task: str) -> None:
        """A job of ``task`` that held a slot was settled."""
        slots = self.slots.get(task)
        if slots is not None:
            slots.give()

    async def close(self) -> None:
        """Give back the slots held here, so the cluster need not wait ``ack_wait`` for them."""
        for slots in list(self.slots.values()):
            try:
                await slots.close()
            except Exception as exc:  # they go stale after ack_wait
                log.warning("slots not given back at stop (%s): free after ack_wait", exc)

    async def refresh(self) -> None:
        """Tell the cluster that the slots held here are still in use (every ack_wait/3), and
        forget waits of jobs that left this worker without starting."""
        for slots in list(self.slots.values()):
            await slots.renew()
        now = time.time()
        for job_id in [j for j, start in self._starts.items() if start < now - 600]:
            self._starts.pop(job_id, None)
        for job_id in [j for j, (first, _) in self._slot_waits.items() if first < now - 600]:
            self._slot_waits.pop(job_id, None)


def _header_float(delivery: Delivery, name: str) -> float | None:
    """A header's number, or None if it is missing, not a number, or not a plausible time or
    count (a hostile header must not push a job years away)."""
    try:
        value = float(delivery.headers.get(name, ""))
    except ValueError:
        return None
    return value if math.isfinite(value) and 0 <= value < time.time() + 86400 * 366 else None


def _waits(delivery: Delivery) -> int:
    """How many times the job was handed back to wait (what ``Jsq-Waits`` says, bounded)."""
    text = delivery.headers.get(WAITS_HEADER, "0")
    return min(int(text), 64) if text.isascii() and text.isdigit() and len(text) < 4 else 0

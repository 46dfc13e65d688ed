"""Letting a limited task's job start: its rate-limit start time and its concurrency slot.

Before a job of a task with ``rate_limit`` or ``max_concurrency`` runs, the worker reserves its
start time (:func:`jsqueue.services.limits.reserve_start`) and takes one of its slots
(:func:`~jsqueue.services.limits.acquire_slot`). When it must wait, the job waits without a
run slot and without a ``nak`` (a wait is not an attempt, DESIGN "Attempts, waits and
crashes"): a short wait parks the delivery in the worker (its heartbeats go on), a long one, or
one beyond what the worker may park, hands it back on a server schedule
(:func:`jsqueue.services.republish.defer`) with its reserved start in ``Jsq-Start`` and its
waits so far in ``Jsq-Waits``. Either way the jobs of other tasks behind it go on.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass

from jsqueue.config import Settings
from jsqueue.services import limits, republish
from jsqueue.task import Task
from jsqueue.wire import Broker, Delivery, KvStore

log = logging.getLogger("jsqueue.worker")

#: the header of a handed-back job: the start time it reserved (unix seconds)
START_HEADER = "Jsq-Start"
#: the header of a handed-back job: how many times it was handed back to wait
WAITS_HEADER = "Jsq-Waits"
#: a wait up to this long parks in the worker; a longer one goes on a server schedule
PARK_MAX = 2.0
#: how long a job that waits for a slot sleeps before it looks again (growing to SLOT_POLL_MAX)
SLOT_POLL = 0.05
SLOT_POLL_MAX = 0.5
#: how long a job waits for a slot parked here before it goes on a schedule instead
SLOT_PARK = 5.0
#: the longest a job handed back to wait for a slot stays on its schedule
SLOT_WAIT_MAX = 30.0


@dataclass(frozen=True)
class Wait:
    """The job may not start before ``at`` (wall clock); ``why`` is ``rate`` or ``slot``."""

    at: float
    why: str
    #: whether it may park in the worker (else it goes on a server schedule)
    park: bool
    #: its reserved start, if it has one (carried when it is handed back)
    start: float | None = None


class Admission:
    """The limits of one worker's jobs: reserves starts, takes, refreshes and gives back slots."""

    def __init__(self, broker: Broker, settings: Settings, worker_id: str) -> None:
        self._broker = broker
        self._worker = worker_id
        self._stale = settings.ack_wait
        self._store: KvStore | None = None
        #: job id -> the start it reserved while it waits (parked) for a slot
        self._starts: dict[str, float] = {}
        #: job id -> (when it first found every slot taken here, how often since)
        self._slot_waits: dict[str, tuple[float, int]] = {}
        #: task -> job ids holding one of its slots here
        self.holding: defaultdict[str, set[str]] = defaultdict(set)

    async def _kv(self) -> KvStore:
        if self._store is None:
            self._store = await limits.bucket(self._broker)
        return self._store

    async def admit(self, task: Task[..., object], job_id: str, delivery: Delivery) -> Wait | None:
        """None when the job may start now (its slot, if any, is taken); else how to wait."""
        rate, cap = task.rate, task.options.max_concurrency
        if rate is None and cap is None:
            return None
        store = await self._kv()
        now = time.time()
        start = self._starts.get(job_id)
        if start is None and rate is not None:
            start = _header_float(delivery, START_HEADER)
            if start is None:
                start = await limits.reserve_start(store, task.name, rate)
            if start > now + 0.001:
                self._starts[job_id] = start
                return Wait(start, "rate", start - now <= PARK_MAX, start)
        if cap is not None:
            taken = await limits.acquire_slot(
                store, task.name, cap, job_id, self._worker, self._stale
            )
            if not taken:
                if start is not None:
                    self._starts[job_id] = start
                first, tries = self._slot_waits.get(job_id, (now, 0))
                self._slot_waits[job_id] = (first, tries + 1)
                if now - first < SLOT_PARK:  # look again soon, a little later each time
                    pause = min(SLOT_POLL_MAX, SLOT_POLL * 1.5**tries)
                    return Wait(now + pause, "slot", True, start)
                waits = int(_header_float(delivery, WAITS_HEADER) or 0)
                return Wait(now + min(SLOT_WAIT_MAX, 2.0 ** (waits + 1)), "slot", False, start)
            self.holding[task.name].add(job_id)
        self.forget(job_id)
        return None

    async def hand_back(self, delivery: Delivery, job_id: str, wait: Wait) -> None:
        """Send the job again on a server schedule for when its wait ends, then ack this
        delivery."""
        waits = delivery.headers.get(WAITS_HEADER, "0")
        headers = {WAITS_HEADER: str(int(waits) + 1 if waits.isdigit() else 1)}
        if wait.start is not None:
            headers[START_HEADER] = repr(wait.start)
        # a reserved start is met by arriving a little early and parking the rest
        at = wait.at - 0.5 if wait.why == "rate" else wait.at
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

    async def release(self, task: str, job_id: str) -> None:
        """Give back the slot ``job_id`` holds (its job was settled)."""
        held = self.holding.get(task)
        if held is None or job_id not in held:
            return
        held.discard(job_id)
        try:
            await limits.release_slots(await self._kv(), task, {job_id}, self._stale)
        except Exception as exc:  # it goes stale within ack_wait, and frees itself then
            log.warning(
                "slot of %s[%s] not given back (%s): free after ack_wait",
                task,
                job_id,
                exc,
            )

    async def refresh(self) -> None:
        """Tell the cluster that the slots held here are still in use (every ack_wait/3)."""
        if not any(self.holding.values()):
            return
        store = await self._kv()
        for task, job_ids in list(self.holding.items()):
            if job_ids:
                await limits.refresh_slots(store, task, set(job_ids), self._worker, self._stale)


def _header_float(delivery: Delivery, name: str) -> float | None:
    value = delivery.headers.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None

"""Which job each pool child runs now and which it was handed next, with their time limits.

A busy child may be handed its next job while it runs one: the frame waits in its socket, and
the child starts it the moment it has sent the Done of the one before, with no wait on the
parent in between. A handed job has not started: its time limits count, and the worker hears
that it runs, from that Done on. Terminated before it starts, it is settled at once and the
child is told to pass it over (a Skip, which the child reads before it starts a job); the child
is killed when it would have started it all the same, in case the two crossed. Should its child
die first, the pool hands it to another.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from jsqueue.errors import Terminated, TimeLimitExceeded
from jsqueue.pools import protocol
from jsqueue.pools.handle import ChildHandle
from jsqueue.pools.outcome import Busy, ChildInfo, ChildOutcome
from jsqueue.pools.protocol import ChildJob


class Assignments:
    """The jobs of a pool's children: ``running`` one each, ``next`` at most one each."""

    def __init__(self, max_tasks_per_child: int | None) -> None:
        self.running: dict[ChildHandle, Busy] = {}
        self.next: dict[ChildHandle, Busy] = {}
        self._max_tasks = max_tasks_per_child

    def child_for_next(self) -> ChildHandle | None:
        """A busy child that may be handed its next job: it has none yet, is not being killed
        or retired, and the job it runs is not its last (``max_tasks_per_child``)."""
        for handle, busy in self.running.items():
            last = self._max_tasks is not None and handle.jobs_done + 1 >= self._max_tasks
            taken = handle in self.next or busy.kill_reason is not None or handle.retiring
            if not taken and not last:
                return handle
        return None

    def hand(self, handle: ChildHandle, busy: Busy) -> None:
        """``busy`` goes to ``handle``: it starts now if the child is free, else next."""
        if handle in self.running:
            self.next[handle] = busy
        else:
            self.begin(handle, busy)

    def begin(self, handle: ChildHandle, busy: Busy) -> None:
        """The child starts ``busy``'s job now: its time limits and times count from here."""
        loop = asyncio.get_running_loop()
        busy.started, busy.began = time.time(), loop.time()
        self.running[handle] = busy
        job = busy.job
        if busy.kill_reason is not None:  # terminated while it waited: it must not run
            self.kill(handle, busy, busy.kill_reason)
            return
        if job.time_limit is not None:
            busy.timers.append(loop.call_later(job.time_limit, self._hard_limit, handle, busy))
        if job.soft_time_limit is not None:
            soft = loop.call_later(job.soft_time_limit, handle.signal, protocol.SOFT_LIMIT_SIGNAL)
            busy.timers.append(soft)
        if busy.on_start is not None:
            busy.on_start()

    def finish(self, handle: ChildHandle) -> Busy | None:
        """The child sent the Done of the job it ran: that job, and the next one (if it was
        handed one) starts."""
        _stop_timers(self.running.pop(handle))
        following = self.next.pop(handle, None)
        if following is not None:
            self.begin(handle, following)
        return following

    def lost(self, handle: ChildHandle) -> tuple[Busy | None, Busy | None]:
        """The child exited: the job it ran (its timers stopped) and the one it was handed
        next, neither of them its any more."""
        busy = self.running.pop(handle, None)
        if busy is not None:
            _stop_timers(busy)
        return busy, self.next.pop(handle, None)

    def holder(self, busy: Busy) -> ChildHandle | None:
        """The child that runs ``busy``'s job now, if one does."""
        return next((h for h, b in self.running.items() if b is busy), None)

    def terminate(self, job_id: str) -> bool:
        """Stop ``job_id``: kill its child if it runs, or settle it at once if it waits (the
        child is killed should it start it). False if no child has it."""
        for handle, busy in self.running.items():
            if busy.job.job_id == job_id:
                reason = Terminated(
                    f"{busy.label} was terminated on request; its pool child {handle.pid} "
                    "was killed"
                )
                self.kill(handle, busy, reason)
                return True
        for handle, busy in self.next.items():
            if busy.job.job_id == job_id and busy.kill_reason is None:
                reason = Terminated(f"{busy.label} was terminated before it started")
                self._skip(handle, busy, reason)
                if not busy.future.done():
                    busy.future.set_result(ChildOutcome(error=busy.kill_reason))
                return True
        return False

    def info(self, handle: ChildHandle) -> ChildInfo:
        """What the child runs, for ``inspect workers``."""
        busy = self.running.get(handle)
        job_id, started = (busy.job.job_id, busy.started) if busy else (None, None)
        return ChildInfo(handle.pid, job_id, started, handle.rss_mb, handle.jobs_done)

    def withdraw(self, busy: Busy, reason: BaseException) -> None:
        """Nobody waits for ``busy`` any more: kill its child if it runs, else see that it
        never does."""
        holder = self.holder(busy)
        if holder is not None:
            self.kill(holder, busy, reason)
            return
        for handle, waiting in self.next.items():
            if waiting is busy and busy.kill_reason is None:
                self._skip(handle, busy, reason)

    @staticmethod
    def _skip(handle: ChildHandle, busy: Busy, reason: BaseException) -> None:
        """Tell the child to pass over the job it was handed next (it is killed should it
        start it all the same: see :meth:`begin`)."""
        busy.kill_reason = reason
        with contextlib.suppress(OSError):
            handle.post(protocol.Skip(busy.job.job_id))

    def handed(self) -> list[ChildJob]:
        """The jobs handed to a busy child to run next (not started yet)."""
        return [busy.job for busy in self.next.values()]

    def _hard_limit(self, handle: ChildHandle, busy: Busy) -> None:
        reason = TimeLimitExceeded(
            f"{busy.label} ran past its time_limit of {busy.job.time_limit}s; its pool child "
            f"{handle.pid} was killed"
        )
        self.kill(handle, busy, reason)

    @staticmethod
    def kill(handle: ChildHandle, busy: Busy, reason: BaseException) -> None:
        if busy.kill_reason is None:
            busy.kill_reason = reason
        _stop_timers(busy)
        handle.kill()


def _stop_timers(busy: Busy) -> None:
    for timer in busy.timers:
        timer.cancel()

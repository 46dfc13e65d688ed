"""Plain successes settled behind their result writes: many writes in flight, one task.

A job whose task succeeded, whose result is to be stored and after which nothing follows needs
the server to confirm the result's KV write before its ack. Awaiting that in the job's runner
suspends the runner for a round trip per job, and with it the next job. Here the runner sends
the write and moves on; one task per worker waits for the confirmations in the order they were
sent and settles each job after its own confirmation: it tells the sender, acks, counts and
logs. The promise is the one the settler keeps (a job is acked only after its outcome is
recorded), at a fraction of the cost.

Anything but a plain confirmation (a record already there, a refusal, a time-out, a lost
connection) takes the settler's full path for that job, which writes again with first-final-wins
and tells a transient failure (the job stays unacked and comes back) from a permanent one.
At most ``limit`` jobs wait here; past that, the runner settles its job itself. A worker that
stops waits for this task like for a running job (``track``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from jsqueue.outcome import Action, FollowUp, Plan, Record
from jsqueue.services.results import ResultBackend
from jsqueue.wire import PendingCreate
from jsqueue.worker.job import Job
from jsqueue.worker.settle import Settler

log = logging.getLogger("jsqueue.worker")


class Pipelined:
    """The worker's successes whose result writes are in flight, settled in order."""

    def __init__(
        self,
        results: ResultBackend,
        settler: Settler,
        *,
        release: Callable[[Job], None],
        track: Callable[[asyncio.Task[None]], None],
        limit: int,
    ) -> None:
        self._results = results
        self._settler = settler
        self._release = release
        self._track = track
        self._limit = limit
        self._waiting: deque[tuple[Job, Plan, PendingCreate]] = deque()
        self._task: asyncio.Task[None] | None = None

    def takes(self, job: Job, plan: Plan) -> bool:
        """Whether ``job`` settles here: a success with a result in the bucket and nothing
        after it (no follow-up, no unique lock, not a suspect), while there is room."""
        env = job.env
        return (
            plan.record is Record.SUCCESS
            and plan.action is Action.ACK
            and plan.follow_up is FollowUp.NONE
            and job.result_object is None
            and env is not None
            and env.unique_key is None
            and not job.alone
            and len(self._waiting) < self._limit
        )

    async def submit(self, job: Job, plan: Plan) -> bool:
        """Send the result's write and queue the job's settlement; False if the write could
        not even be sent (the caller settles the job itself then)."""
        assert job.job_id is not None
        assert job.result is not None
        try:
            pending = await self._results.send_final(job.job_id, job.result)
        except Exception:
            return False
        self._waiting.append((job, plan, pending))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._settle_all())
            self._track(self._task)
        return True

    async def _settle_all(self) -> None:
        waiting = self._waiting
        batch: list[tuple[Job, Plan, bool]] = []
        try:
            while waiting:
                # the first write's answer, then every other one already here
                job, plan, pending = waiting[0]
                recorded = await _recorded(pending)
                waiting.popleft()
                batch.append((job, plan, recorded))
                while waiting and waiting[0][2].done():
                    job, plan, pending = waiting.popleft()
                    batch.append((job, plan, await _recorded(pending)))
                await self._settle(batch)
                for job, _, _ in batch:
                    self._release(job)
                batch.clear()
        finally:
            self._task = None
            for job, _, _ in batch:  # cancelled (a stop past its grace): these stay unacked
                self._release(job)
            while waiting:
                self._release(waiting.popleft()[0])

    async def _settle(self, batch: list[tuple[Job, Plan, bool]]) -> None:
        """Tell each sender of its recorded jobs in one notice, then settle each job."""
        notices: dict[str, list[tuple[str, bytes]]] = {}
        for job, _, recorded in batch:
            notify = job.env.notify if job.env is not None else None
            if recorded and notify is not None:
                assert job.job_id is not None
                assert job.result is not None
                notices.setdefault(notify, []).append((job.job_id, job.result))
        for subject, records in notices.items():
            await self._results.notify_all(subject, records)
        for job, plan, recorded in batch:
            try:
                if recorded:
                    await self._settler.finish(job, plan)
                else:  # the full path writes again and tells what a failure means
                    await self._settler.settle(job, plan)
            except asyncio.CancelledError:
                raise
            except Exception:
                # our own failure (the server went away while settling): the job stays
                # unacked and the server delivers it again after ack_wait
                log.exception("%s not settled", job.label)


async def _recorded(pending: PendingCreate) -> bool:
    """Whether the write was confirmed (anything else: the settler's full path decides)."""
    try:
        return await pending is not None
    except asyncio.CancelledError:
        raise
    except Exception:
        return False

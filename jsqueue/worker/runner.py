"""Running one job: decode it, check it, run its task, and plan its settlement.

The worker hands each delivery to :meth:`JobRunner.process`. Whatever a message holds or a task
does, the delivery ends in exactly one plan (:mod:`jsqueue.outcome`), carried out by the settler
(:mod:`jsqueue.worker.settle`): a malformed message is dead-lettered without running, a job whose
outcome is already recorded is acked without running again, a task's failure follows its retry
policy. Only a transient failure of the server leaves a job unacked, to come back. Nothing here
pulls, counts slots or handles signals.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence

from jsqueue import outcome
from jsqueue.app import App
from jsqueue.config import shorten
from jsqueue.envelope import decode
from jsqueue.errors import (
    ArgumentsError,
    DecodeError,
    JsqueueError,
    MalformedError,
    PoolClosed,
    Terminated,
    WorkerLost,
)
from jsqueue.hooks import Hooks, JobEvent, emit
from jsqueue.outcome import Action, Plan, Reason, Record
from jsqueue.services import republish
from jsqueue.services.continuation import has_followers
from jsqueue.services.results import (
    JobState,
    Outcome,
    ResultBackend,
    RevokedSet,
    state_record,
)
from jsqueue.wire import ATTEMPT_HEADER, Broker, Delivery
from jsqueue.worker import intake
from jsqueue.worker.admission import Admission, Wait
from jsqueue.worker.execute import TaskExecutor
from jsqueue.worker.job import Job, WorkerStats
from jsqueue.worker.pipelined import Pipelined
from jsqueue.worker.result_record import encode_result
from jsqueue.worker.settle import Settler, is_transient

log = logging.getLogger("jsqueue.worker")

__all__ = ["JobRunner", "WorkerStats"]


class CrashLoop(JsqueueError):
    """A job was delivered more than ``max_deliver`` times without an outcome."""


class JobRunner:
    """Processes deliveries for one worker."""

    def __init__(
        self,
        app: App,
        worker_id: str,
        broker: Broker,
        results: ResultBackend,
        revoked: RevokedSet,
        executor: TaskExecutor,
        hooks: Sequence[Hooks],
        stats: WorkerStats | None = None,
        park_room: Callable[[], bool] = lambda: True,
        track: Callable[[asyncio.Task[None]], None] | None = None,
        pipelined: int = 0,
    ) -> None:
        self.app = app
        self.id = worker_id
        self.broker = broker
        self.results = results
        self.revoked = revoked
        self.executor = executor
        self.hooks = hooks
        self.stats = stats if stats is not None else WorkerStats()
        self.settler = Settler(app, worker_id, broker, results, hooks, self.stats)
        self.admission = Admission(broker, app.settings, worker_id)
        #: whether the worker may park one more waiting delivery (see :mod:`.admission`)
        self.park_room = park_room
        #: job id -> (task, queue, wall-clock start, attempt) of the jobs running now
        self.running: dict[str, tuple[str, str, float, int]] = {}
        #: the jobs running here, to be waited for by a redelivery of one
        self._settled = intake.Settlements()
        #: up to ``pipelined`` plain successes settled behind their result writes (``track``
        #: is told of the task that settles them)
        self.pipelined = Pipelined(
            results, self.settler, release=self._release, track=track or _untracked, limit=pipelined
        )

    async def process(self, delivery: Delivery) -> float | None:
        """Decode, run and settle one delivery; only a transient server failure propagates.

        Returns when (monotonic) to process the delivery again if its job must wait for a
        limit and stays parked here (see :mod:`jsqueue.worker.admission`), else None."""
        job = Job(delivery)
        sent = False
        try:
            plan = await self._planned(job)
            if isinstance(plan, Wait):
                return await self._wait(job, plan)
            if self.pipelined.takes(job, plan):
                sent = await self.pipelined.submit(job, plan)
                if sent:
                    return None
            await self.settler.settle(job, plan)
            if job.alone and plan.record is Record.NONE and job.env is not None:
                await self.results.forget(job.env.id)  # the marker of a task without records
            if plan.final and job.env is not None and job.env.unique_key is not None:
                await self.admission.release_unique(job.env.unique_key, job.env.id)
        finally:
            if not sent:
                self._release(job)
        return None

    def _release(self, job: Job) -> None:
        """What a job holds until it is settled: its gate, its run, its concurrency slot."""
        if job.gate is not None:
            self.executor.gate.leave(alone=job.gate)
        if job.owns_run and job.env is not None:
            self._settled.end(job.env.id)
        if job.slot is not None:
            self.admission.release(job.slot)

    async def _wait(self, job: Job, wait: Wait) -> float | None:
        """Park a job that waits for a limit, or hand it back on a server schedule (then ack
        it): a wait is no attempt, and never a ``nak``."""
        assert job.job_id is not None
        if wait.park:  # the worker had room for it when it was admitted
            return time.monotonic() + max(0.0, wait.at - time.time())
        await self.admission.hand_back(job.delivery, job.job_id, wait)
        log.debug("%s waits for its %s until %.3f: on a schedule", job.label, wait.why, wait.at)
        return None

    async def _planned(self, job: Job) -> Plan | Wait:
        try:
            plan = await self._plan(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise
            log.exception("%s: jsqueue failed on this job", job.label)
            job.error = exc
            plan = outcome.dead(Reason.WORKER_ERROR, followers=False)
        if isinstance(plan, Plan) and job.task is not None and job.task.options.ignore_result:
            plan = plan.without_result()
        return plan

    async def _plan(self, job: Job) -> Plan | Wait:
        delivery = job.delivery
        settings = self.app.settings
        try:
            env = decode(delivery.data, self.app.settings.secret_key)
        except DecodeError as exc:
            return intake.undecodable(job, exc)
        job.env, job.job_id, job.task_name = env, env.id, env.task
        job.task = self.app.tasks.get(env.task)
        if env.notify is not None and not env.notify.startswith(settings.notify_prefix + "."):
            job.error = MalformedError(
                f"envelope is malformed: field 'notify': {shorten(env.notify)} is not a notify "
                f"subject of this app ({settings.notify_prefix}.<token>)",
                raw=delivery.data,
            )
            job.env = None  # nothing of it is trusted: no follow-ups, no notice
            return outcome.dead(Reason.MALFORMED, followers=False)
        if env.args_object is not None:
            loaded = await intake.arguments(self.broker, self.app.settings, job, env)
            if loaded is None:
                return outcome.dead(Reason.ARGUMENTS_LOST, followers=has_followers(env))
            job.env = env = loaded
        followers = has_followers(env)
        attempt = delivery.attempt
        running_here = env.id in self._settled
        if running_here:  # a redelivery of a job this worker runs now
            await self._settled.wait(env.id)
        recorded = None
        # a copy sent again (Jsq-Attempt) may follow an original whose ack was lost after it ran
        if attempt > 1 or running_here or ATTEMPT_HEADER in delivery.headers:
            recorded = await self._recorded(env.id)
            if recorded is not None and recorded.state.is_final:
                job.why = f"already {recorded.state} (delivery {attempt})"
                success = recorded.state is JobState.SUCCESS
                if success and followers:
                    job.value = recorded.value(settings.secret_key)
                return outcome.already_final(success, followers=followers)
            moved = recorded.record.get("moved") if recorded is not None else None
            if isinstance(moved, int) and delivery.carried < moved:
                return await self._moved_on(job, recorded, moved)
        if attempt > settings.max_deliver:
            job.error = CrashLoop(
                f"delivered {attempt} times without an outcome (max_deliver="
                f"{settings.max_deliver}): the job kills or hangs its worker"
            )
            return outcome.dead(Reason.CRASH_LOOP, followers=followers)
        if env.id in self.revoked:
            job.why = "revoked"
            return outcome.skipped(Record.REVOKED, followers=followers)
        if env.expires is not None and time.time() > env.expires:
            job.why = "expired before it could run"
            return outcome.skipped(Record.EXPIRED, followers=followers)
        task = job.task
        if task is None:
            job.error = LookupError(f"no task named {env.task!r} is registered on this worker")
            return outcome.unknown_task(
                attempt,
                settings.unknown_task_retries,
                settings.unknown_task_delay,
                followers=followers,
            )
        try:
            task.check_arguments(env.args, env.kwargs)
        except ArgumentsError as exc:
            job.error = exc
            return outcome.dead(Reason.WRONG_ARGUMENTS, followers=followers)
        if attempt > 1 and self.executor.in_worker(task) and intake.suspect(recorded, attempt):
            crashes = intake.crashes_alone(recorded, attempt - 1)
            if crashes >= intake.CRASHES_ALONE:
                return self._killed_its_worker(job, recorded)
            job.alone = True
            job.crashes_alone = crashes
        if task.rate is not None or task.options.max_concurrency is not None:
            wait = await self.admission.admit(task, env.id, delivery, self.park_room())
            if wait is not None:
                return wait
            if task.options.max_concurrency is not None:
                job.slot = task.name
        return await self._run(job)

    async def _moved_on(self, job: Job, recorded: Outcome | None, moved: int) -> Plan:
        """An old message of a job whose retry moved onto a server schedule after attempt
        ``moved`` (its ack was lost): send the schedule again, idempotently, and ack this one
        without running it."""
        assert job.job_id is not None
        retry_at = recorded.record.get("retry_at") if recorded is not None else None
        at = float(retry_at) if isinstance(retry_at, int | float) else time.time()
        await republish.schedule_retry(
            self.broker, job.delivery, job_id=job.job_id, attempts=moved, at=at
        )
        job.why = f"moved onto a retry schedule after attempt {moved}"
        return outcome.skipped_moved()

    def _killed_its_worker(self, job: Job, recorded: Outcome | None) -> Plan:
        """The job's worker died each of the last ``CRASHES_ALONE`` times it ran alone there: it
        kills its worker. That is its failed attempt; its policy decides what follows, and no
        other job is blamed."""
        env, task = job.env, job.task
        assert env is not None
        assert task is not None
        worker = recorded.record.get("worker", "?") if recorded else "?"
        attempt = job.delivery.attempt - 1
        job.error = WorkerLost(
            f"{env.task}[{env.id}] killed its worker ({worker} last): a worker died each of the "
            f"{intake.CRASHES_ALONE} times the job ran alone there (up to delivery {attempt})"
        )
        job.crashed = True
        followers = has_followers(env)
        plan = outcome.decide(
            job.error,
            attempt=attempt,
            max_deliver=self.app.settings.max_deliver,
            policy=task.retry,
            elapsed=time.time() - env.created,
            followers=followers,
        )
        if plan.action is Action.DEAD_LETTER:
            return outcome.dead(Reason.CRASH_LOOP, followers=followers)
        return plan

    async def _recorded(self, job_id: str) -> Outcome | None:
        """What is recorded for ``job_id``, or None."""
        try:
            return await self.results.read(job_id)
        except DecodeError as exc:
            log.warning("%s; running the job as if nothing were recorded", exc)
            return None

    async def _run(self, job: Job) -> Plan:
        env, task, delivery = job.env, job.task, job.delivery
        assert env is not None
        assert task is not None
        track = task.track_started and not task.options.ignore_result and not job.alone

        def started() -> None:
            job.started = time.monotonic()
            self.running[env.id] = (env.task, env.queue, time.time(), delivery.attempt)

        # a job nothing records the start of may wait in a busy pool child's socket
        late = not track and not self.hooks and self.executor.hands_ahead(task)
        if not late:
            started()
        self._settled.begin(env.id)
        job.owns_run = True
        try:
            if track:
                await self._record_started(job)
            if self.hooks:
                await self._emit_started(job)
            alone = None
            if job.alone:
                log.warning(
                    "%s was delivered again after its worker died: it runs alone, so that "
                    "only it is blamed if it kills this worker too",
                    job.label,
                )
                alone = functools.partial(self._record_started, job)
            await self.executor.execute(job, alone=alone, on_start=started if late else None)
        finally:
            self.running.pop(env.id, None)
        followers = has_followers(env)
        if isinstance(job.error, Terminated):
            job.why = "terminated on request (revoked)"
            return outcome.skipped(Record.REVOKED, followers=followers)
        if isinstance(job.error, PoolClosed):
            job.why = "the pool closed while it ran: given back"
            return outcome.given_back()
        if job.error is None and not task.options.ignore_result:
            reason = encode_result(job, self.app.settings, self.id, self.broker.max_payload)
            if reason is not None:
                return outcome.dead(reason, followers=followers)
        return outcome.decide(
            job.error,
            attempt=delivery.attempt,
            max_deliver=self.app.settings.max_deliver,
            policy=task.retry,
            elapsed=time.time() - env.created,
            followers=followers,
        )

    async def _record_started(self, job: Job) -> None:
        assert job.env is not None
        fields: dict[str, object] = {}
        if job.alone:
            fields = {"alone": job.delivery.attempt, "crashes_alone": job.crashes_alone}
        record = state_record(
            JobState.STARTED,
            task=job.env.task,
            attempts=job.delivery.attempt,
            worker=self.id,
            at=time.time(),
            **fields,
        )
        await self.results.write_progress(job.env.id, record)

    async def _emit_started(self, job: Job) -> None:
        env = job.env
        assert env is not None
        event = JobEvent(
            kind="started",
            job_id=env.id,
            task=env.task,
            queue=env.queue,
            time=time.time(),
            attempt=job.delivery.attempt,
            worker=self.id,
        )
        await emit(self.hooks, event)


def _untracked(task: asyncio.Task[None]) -> None:
    raise AssertionError("a runner without track= settles no job behind its write")

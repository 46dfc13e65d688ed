"""Carrying out a settlement plan: the one place that records outcomes, dead-letters and acks.

Every delivery ends here with exactly one :class:`jsqueue.outcome.Plan`, carried out in the order
its promises need: a result is recorded before the ack, a dead-letter copy is stored before the
term. Each step tells a transient failure from a permanent one:

- transient (an election, a time-out, a reconnect): the error propagates, the job stays unacked
  and the server delivers it again later, as for a crash;
- permanent (a record too large, a key or subject the server refuses, a follow-up that can never
  be sent): the step falls back to something that cannot fail the same way: a success whose
  record cannot be stored becomes a failure, a dead letter whose record does not fit a header
  carries it in its body, a follow-up that cannot be sent ends what follows, and as the very
  last resort a log line says what could not be kept. Never an endless redelivery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from jsqueue import failure
from jsqueue.config import PRIORITY_NORMAL
from jsqueue.errors import (
    ArgumentsError,
    ConnectError,
    ConnectionLost,
    DecodeError,
    InvalidError,
    PublishError,
    RefusedError,
    SerializeError,
    TransientError,
)
from jsqueue.hooks import Hooks, JobEvent, emit
from jsqueue.outcome import Action, Counter, Event, FollowUp, Plan, Reason, Record, dead
from jsqueue.services import continuation, dlq, republish
from jsqueue.services.results import JobState, ResultBackend, state_record
from jsqueue.wire import Broker, translate
from jsqueue.worker.job import Job, WorkerStats, times

if TYPE_CHECKING:
    from jsqueue.services.deps import Deps

log = logging.getLogger("jsqueue.worker")

# The members every plan is compared with, as module names: an Enum member looked up on its
# class costs several times a global's look-up, and settle() asks for them once per job.
_ACK, _RETRY, _DEAD_LETTER = Action.ACK, Action.RETRY, Action.DEAD_LETTER
_SUCCESS, _NO_RECORD = Record.SUCCESS, Record.NONE
_NO_FOLLOW_UP, _NO_EVENT = FollowUp.NONE, Event.NONE


def is_transient(exc: BaseException) -> bool:
    """Whether trying the same step again later can succeed."""
    err = translate(exc)
    if isinstance(err, InvalidError | SerializeError | DecodeError | ArgumentsError):
        return False
    return isinstance(
        err,
        TransientError | ConnectionLost | RefusedError | PublishError | ConnectError | OSError,
    )


class Settler:
    """Carries out plans for one worker."""

    def __init__(
        self,
        app: Deps,
        worker_id: str,
        broker: Broker,
        results: ResultBackend,
        hooks: Sequence[Hooks],
        stats: WorkerStats,
    ) -> None:
        self.app = app
        self.id = worker_id
        self.broker = broker
        self.results = results
        self.hooks = hooks
        self.stats = stats

    async def settle(self, job: Job, plan: Plan) -> None:
        """Carry ``plan`` out; only a transient failure propagates (the job stays unacked)."""
        if plan.record is _SUCCESS:
            plan = await self._record_success(job, plan)
        if plan.action is _DEAD_LETTER:
            await self._dead_letter(job, plan)
        if plan.record is not _NO_RECORD and plan.record is not _SUCCESS:
            await self._record_state(job, plan)
        if plan.follow_up is not _NO_FOLLOW_UP:
            await self._follow_up(job, plan)
        await self.finish(job, plan)

    async def finish(self, job: Job, plan: Plan) -> None:
        """The rest of ``plan`` once its record is stored: ack (or nak, term), count, log, tell
        the hooks. :mod:`.pipelined` calls it for the successes it recorded."""
        delivery = job.delivery
        action = plan.action
        if action is _ACK:
            await delivery.ack()
        elif action is _RETRY and self._moves(job, plan):
            await self._move(job, plan)
            await delivery.ack()
        elif action is _RETRY:
            await delivery.nak(plan.delay)
        else:
            await delivery.term()
        self.stats.count(plan.counter)
        self._log(job, plan)
        if self.hooks and plan.event is not _NO_EVENT and job.env is not None:
            await self._emit(job, plan)

    # -- the steps -----------------------------------------------------------------------------

    def _moves(self, job: Job, plan: Plan) -> bool:
        """Whether the retry waits on a server schedule rather than in ``nak``: a wait that
        long would hold one of the queue's ``max_ack_pending`` slots all the while."""
        return job.job_id is not None and plan.delay >= self.app.settings.schedule_retries_after

    async def _move(self, job: Job, plan: Plan) -> None:
        """Send the job again, due after ``plan.delay``, its attempts carried (the RETRY record
        says ``moved``: a delivery of the old message after this is only acked)."""
        assert job.job_id is not None
        delivery = job.delivery
        await republish.schedule_retry(
            self.broker,
            delivery,
            job_id=job.job_id,
            attempts=delivery.attempt,
            at=time.time() + plan.delay,
            priority=_priority_of(job),
        )
        job.note = " (on a server schedule)"

    async def _record_success(self, job: Job, plan: Plan) -> Plan:
        assert job.job_id is not None
        assert job.result is not None
        notify = job.env.notify if job.env else None
        try:
            if job.result_object is not None:
                objects = await self.broker.objects()
                await objects.put(job.result_object, job.result_full)
            lost = await self.results.write_final(job.job_id, job.result, notify=notify)
            if lost is not None and job.result_object is not None:
                await objects.delete(job.result_object)  # the first outcome stands, not ours
            return plan
        except Exception as exc:
            if is_transient(exc):
                raise
            job.error = translate(exc)
        log.warning("%s: its result cannot be stored (%s)", job.label, failure.one_line(job.error))
        followers = plan.follow_up is not FollowUp.NONE
        return dead(Reason.UNSERIALIZABLE_RESULT, followers=followers)

    async def _dead_letter(self, job: Job, plan: Plan) -> None:
        """Store the job with why in the dead-letter stream; fall back to a letter with its
        record in the body, then to a log line."""
        assert plan.reason is not None
        delivery = job.delivery
        meta = dlq.record(
            job_id=job.job_id or f"seq-{delivery.stream_seq}",
            task=job.task_name or "?",
            queue=delivery.queue,
            reason=plan.reason.value,
            error=failure.describe(job.error, job.remote_traceback),
            attempts=delivery.attempt,
            worker=self.id,
            jobs_seq=delivery.stream_seq,
            given_id=job.given_id,
        )
        subject = self.app.settings.dlq_subject(delivery.queue)
        last: BaseException | None = None
        for in_body in (False, True):
            body, headers = dlq.letter(
                meta, delivery.data, max_payload=self.broker.max_payload, in_body=in_body
            )
            try:
                await self.broker.publish(subject, body, headers)
                if dlq.FORMAT in headers:
                    job.note = " (its dead letter keeps the record in the body)"
                return
            except Exception as exc:
                if is_transient(exc):
                    raise
                last = exc
        log.error(
            "%s could not be dead-lettered (%s); it is dropped. Its record: %s; its payload "
            "starts %r",
            job.label,
            failure.one_line(last) if last else "?",
            meta,
            delivery.data[:200],
        )

    async def _record_state(self, job: Job, plan: Plan) -> None:
        """Record RETRY, FAILURE, DEAD, EXPIRED or REVOKED; a record the server refuses is
        retried without its traceback, then given up with a log line."""
        if job.job_id is None:
            return
        error = failure.describe(job.error, job.remote_traceback)
        for attempt in range(2):
            data = self._state_record(job, plan, error)
            try:
                if plan.record is Record.RETRY:
                    await self.results.write_progress(job.job_id, data)
                else:
                    notify = job.env.notify if job.env else None
                    await self.results.write_final(job.job_id, data, notify=notify)
                return
            except Exception as exc:
                if is_transient(exc):
                    raise
                if attempt:
                    log.error("%s: state %s not recorded: %s", job.label, plan.record.value, exc)
                error = {"type": error["type"], "message": failure.cut(error["message"], 200)}

    def _state_record(self, job: Job, plan: Plan, error: dict[str, str]) -> bytes:
        delivery = job.delivery
        fields: dict[str, Any] = {"task": job.task_name or "?", "worker": self.id}
        if plan.record is Record.RETRY:
            now = time.time()
            fields.update(attempts=delivery.attempt, at=now, retry_at=now + plan.delay)
            fields["error"] = error
            if self._moves(job, plan):
                fields["moved"] = delivery.attempt
            if job.crashed:
                fields["crashed"] = True
        elif plan.record in (Record.EXPIRED, Record.REVOKED):
            fields.update(finished=time.time(), why=job.why)
        else:
            fields.update(attempts=delivery.attempt, **times(job.started), error=error)
            if plan.reason is not None:
                fields["reason"] = plan.reason.value
        return state_record(JobState(plan.record.value), **fields)

    async def _follow_up(self, job: Job, plan: Plan) -> None:
        """The chain's next step or the chord's count; or the end of both. A follow-up that can
        never be sent ends what follows instead, recording why."""
        env = job.env
        if env is None:
            return
        try:
            if plan.follow_up is FollowUp.CONTINUE:
                await continuation.after_success(self.app, env, job.value)
            else:
                # Error callbacks are for jobs that ran and failed, as in Celery; a job that
                # expired or was revoked never ran, so only what follows it is ended.
                ran = plan.record not in (Record.EXPIRED, Record.REVOKED)
                error = self._failure_of(job, plan)
                await continuation.after_failure(self.app, env, error, errbacks=ran)
            return
        except Exception as exc:
            if is_transient(exc):
                raise
            problem = translate(exc)
        log.error("%s: what follows it cannot go on: %s", job.label, failure.one_line(problem))
        error = failure.describe(problem)
        error["message"] = f"a step before this one could not be followed: {error['message']}"
        try:
            await continuation.abandon(self.app, env, error)
        except Exception as exc:
            if is_transient(exc):
                raise
            log.error("%s: the steps after it are not marked failed: %s", job.label, exc)

    def _failure_of(self, job: Job, plan: Plan) -> dict[str, str]:
        if plan.record in (Record.EXPIRED, Record.REVOKED):
            message = f"job {job.job_id} {job.why}"
            return {"type": plan.record.value.title(), "message": message, "traceback": ""}
        return failure.describe(job.error, job.remote_traceback)

    # -- telling -------------------------------------------------------------------------------

    def _log(self, job: Job, plan: Plan) -> None:
        """One line per outcome: task[id] what in N ms (attempt n)[, then][: cause]."""
        level = logging.WARNING if plan.action is Action.DEAD_LETTER else logging.INFO
        if not log.isEnabledFor(level):
            return
        what = {
            Counter.SUCCEEDED: "succeeded",
            Counter.RETRIED: "failed",
            Counter.SKIPPED: f"skipped: {job.why}",
        }.get(plan.counter, f"dead-lettered ({plan.reason})")
        then = f", retrying in {plan.delay:.1f}s" if plan.action is Action.RETRY else ""
        cause = f": {failure.one_line(job.error)}" if job.error is not None else ""
        took = (time.monotonic() - job.started) * 1000
        log.log(
            level,
            "%s %s in %.1fms (attempt %d)%s%s%s",
            job.label,
            what,
            took,
            job.delivery.attempt,
            then,
            job.note,
            cause,
        )

    async def _emit(self, job: Job, plan: Plan) -> None:
        env = job.env
        assert env is not None
        event = JobEvent(
            kind=plan.event.value,
            job_id=env.id,
            task=env.task,
            queue=env.queue,
            time=time.time(),
            attempt=job.delivery.attempt,
            worker=self.id,
            duration=time.monotonic() - job.started,
            delay=plan.delay if plan.action is Action.RETRY else None,
            error=None if job.error is None else failure.one_line(job.error),
        )
        await emit(self.hooks, event)


def _priority_of(job: Job) -> int:
    """The level a job goes back to: its own priority (a job that came back from a wait on
    the due level returns to its own)."""
    priority = job.env.priority if job.env is not None else None
    return PRIORITY_NORMAL if priority is None else priority

"""Running one job: decode it, decide its fate, carry the decision out, log one line.

The worker hands each delivery to :meth:`JobRunner.process`. A job is acked only after its outcome
is recorded; a failure is retried with ``nak(delay)`` from the task's policy or dead-lettered
(a DLQ record first, then ``term``). Nothing here pulls, counts slots or handles signals.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
import traceback
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from jsqueue import dlq
from jsqueue.app import App
from jsqueue.broker import Broker
from jsqueue.context import reset_current, set_current
from jsqueue.continuation import after_failure, after_success, has_followers
from jsqueue.envelope import Envelope, decode, peek
from jsqueue.errors import (
    ArgumentsError,
    DecodeError,
    SerializeError,
    SignatureError,
    TimeLimitExceeded,
)
from jsqueue.hooks import Hooks, JobEvent, emit
from jsqueue.outcome import ACK, Action, Decision, Reason, dead, decide, unknown_task
from jsqueue.puller import Delivery
from jsqueue.results import JobState, ResultBackend, state_record, success_record
from jsqueue.revoke import RevokedSet
from jsqueue.task import Task

log = logging.getLogger("jsqueue.worker")

#: Failures dead-lettered with state FAILURE (the task ran and raised); the rest are DEAD.
_TASK_FAILURES = frozenset({Reason.EXHAUSTED, Reason.NOT_RETRYABLE, Reason.UNSERIALIZABLE_RESULT})


@dataclass
class WorkerStats:
    """Counters of one worker's outcomes."""

    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    skipped: int = 0

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed + self.dead_lettered + self.skipped

    def summary(self) -> str:
        return (
            f"{self.succeeded} succeeded, {self.failed} failed, {self.retried} retried, "
            f"{self.dead_lettered} dead-lettered, {self.skipped} skipped"
        )


@dataclass
class _Attempt:
    """What one run of a task produced."""

    error: BaseException | None = None
    value: Any = None


class JobRunner:
    """Processes deliveries for one worker."""

    def __init__(
        self,
        app: App,
        worker_id: str,
        broker: Broker,
        results: ResultBackend,
        revoked: RevokedSet,
        pool: Executor,
        hooks: list[Hooks],
    ) -> None:
        self.app = app
        self.id = worker_id
        self.broker = broker
        self.results = results
        self.revoked = revoked
        self.pool = pool
        self.hooks = hooks
        self.stats = WorkerStats()
        #: job id -> (task, queue, wall-clock start) of the jobs running now
        self.running: dict[str, tuple[str, str, float]] = {}

    async def process(self, delivery: Delivery) -> None:
        """Decode, run and settle one delivery."""
        try:
            env = decode(delivery.data, self.app.settings.secret_key)
        except DecodeError as exc:
            reason = Reason.BAD_SIGNATURE if isinstance(exc, SignatureError) else Reason.UNDECODABLE
            await self._dead_letter(delivery, None, dead(reason), exc, time.monotonic())
            return
        self.running[env.id] = (env.task, env.queue, time.time())
        try:
            await self._process(delivery, env)
        finally:
            self.running.pop(env.id, None)

    async def _process(self, delivery: Delivery, env: Envelope) -> None:
        attempt = delivery.attempt
        settings = self.app.settings
        started = time.monotonic()
        if attempt > settings.max_deliver:
            crash = RuntimeError(
                f"delivered {attempt} times without an outcome (max_deliver="
                f"{settings.max_deliver}): the job kills or hangs its worker"
            )
            await self._dead_letter(delivery, env, dead(Reason.CRASH_LOOP), crash, started)
            return
        if env.id in self.revoked:
            await self._skip(delivery, env, JobState.REVOKED, "revoked")
            return
        if env.expires is not None and time.time() > env.expires:
            await self._skip(delivery, env, JobState.EXPIRED, "expired before it could run")
            return
        task = self.app.tasks.get(env.task)
        if task is None:
            decision = unknown_task(
                attempt, settings.unknown_task_retries, settings.unknown_task_delay
            )
            error = LookupError(f"no task named {env.task!r} is registered on this worker")
            await self._settle(delivery, env, None, decision, _Attempt(error), started)
            return
        try:
            task.check_arguments(env.args, env.kwargs)
        except ArgumentsError as exc:
            await self._dead_letter(delivery, env, dead(Reason.WRONG_ARGUMENTS), exc, started)
            return
        if task.track_started and not task.options.ignore_result:
            await self._record_progress(env, JobState.STARTED, attempt)
        if self.hooks:
            await self._emit("started", env, delivery)
        result = await self._execute(task, env, delivery)
        policy = task.retry
        elapsed = time.time() - env.created
        decision = decide(
            result.error,
            attempt=attempt,
            max_deliver=settings.max_deliver,
            policy=policy,
            elapsed=elapsed,
        )
        await self._settle(delivery, env, task, decision, result, started)

    async def _execute(self, task: Task[Any, Any], env: Envelope, delivery: Delivery) -> _Attempt:
        token = set_current(env, delivery.attempt, self.id)
        try:
            if task.is_async:
                limit = task.options.time_limit
                if limit is None:
                    value = await task.fn(*env.args, **env.kwargs)
                else:
                    deadline = asyncio.timeout(limit)
                    try:
                        async with deadline:
                            value = await task.fn(*env.args, **env.kwargs)
                    except TimeoutError as exc:
                        if not deadline.expired():
                            return _Attempt(error=exc)  # the task's own time-out, not ours
                        return _Attempt(
                            TimeLimitExceeded(f"{task.name} ran past its time_limit of {limit}s")
                        )
            else:
                call = functools.partial(task.fn, *env.args, **env.kwargs)
                loop = asyncio.get_running_loop()
                value = await loop.run_in_executor(self.pool, contextvars.copy_context().run, call)
            return _Attempt(value=value)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            return _Attempt(error=exc)
        finally:
            reset_current(token)

    async def _settle(
        self,
        delivery: Delivery,
        env: Envelope,
        task: Task[Any, Any] | None,
        decision: Decision,
        result: _Attempt,
        started: float,
    ) -> None:
        store = task is not None and not task.options.ignore_result
        if decision is ACK:
            if store:
                assert task is not None
                try:
                    record = success_record(
                        env.id,
                        result.value,
                        task.serializer,
                        self.app.settings.secret_key,
                        task=env.task,
                        attempts=delivery.attempt,
                        worker=self.id,
                        **_times(started),
                    )
                except SerializeError as exc:
                    decision = dead(Reason.UNSERIALIZABLE_RESULT)
                    await self._dead_letter(delivery, env, decision, exc, started)
                    return
                await self.results.write_final(env.id, record)
            if has_followers(env):
                await after_success(self.app, env, result.value)
            await delivery.ack()
            self.stats.succeeded += 1
            self._log(env, delivery, "succeeded", started)
            if self.hooks:
                await self._emit("succeeded", env, delivery, started)
        elif decision.action is Action.RETRY:
            if store:
                await self._record_progress(
                    env,
                    JobState.RETRY,
                    delivery.attempt,
                    retry_at=time.time() + decision.delay,
                    error=_error_doc(result.error),
                )
            await delivery.nak(decision.delay)
            self.stats.retried += 1
            then = f", retrying in {decision.delay:.1f}s"
            self._log(env, delivery, "failed", started, result.error, then=then)
            if self.hooks:
                await self._emit(
                    "retried", env, delivery, started, result.error, delay=decision.delay
                )
        else:
            await self._dead_letter(delivery, env, decision, result.error, started, store=store)

    async def _dead_letter(
        self,
        delivery: Delivery,
        env: Envelope | None,
        decision: Decision,
        error: BaseException | None,
        started: float,
        *,
        store: bool = True,
    ) -> None:
        """Copy the job with why to the DLQ, record its final state, then remove it."""
        assert decision.reason is not None
        broker = self.broker
        doc = _error_doc(error)
        job_id, task = (env.id, env.task) if env else peek(delivery.data)
        headers = dlq.build(
            payload=delivery.data,
            job_id=job_id or f"seq-{delivery.stream_seq}",
            task=task or "?",
            queue=delivery.queue,
            reason=decision.reason.value,
            error_type=doc["type"],
            error_message=doc["message"],
            traceback=doc["traceback"],
            attempts=delivery.attempt,
            worker=self.id,
            jobs_seq=delivery.stream_seq,
            max_payload=broker.max_payload,
        )
        await dlq.publish(broker, delivery.queue, delivery.data, headers)
        if env is not None and store and not self._ignores_result(env):
            failed = decision.reason in _TASK_FAILURES
            state = JobState.FAILURE if failed else JobState.DEAD
            record = state_record(
                state,
                task=env.task,
                attempts=delivery.attempt,
                worker=self.id,
                reason=decision.reason.value,
                **_times(started),
                error=doc,
            )
            await self.results.write_final(env.id, record)
        if env is not None and has_followers(env):
            await after_failure(self.app, env, doc)
        await delivery.term()
        if decision.reason in _TASK_FAILURES:
            self.stats.failed += 1
        else:
            self.stats.dead_lettered += 1
        what = f"dead-lettered ({decision.reason.value})"
        if env is None:
            log.warning(
                "undecodable job %s (stream seq %d) dead-lettered: %s",
                job_id or "without id",
                delivery.stream_seq,
                error,
            )
        else:
            self._log(env, delivery, what, started, error, level=logging.WARNING)
        if self.hooks and env is not None:
            kind = "failed" if decision.reason in _TASK_FAILURES else "dead_lettered"
            await self._emit(kind, env, delivery, started, error)

    def _ignores_result(self, env: Envelope) -> bool:
        task = self.app.tasks.get(env.task)
        return task is not None and task.options.ignore_result

    async def _skip(self, delivery: Delivery, env: Envelope, state: JobState, why: str) -> None:
        record = state_record(state, task=env.task, worker=self.id, finished=time.time(), why=why)
        await self.results.write_final(env.id, record)
        if has_followers(env):  # a chain cannot go on, a chord cannot complete without it
            reason = {"type": state.value.title(), "message": f"job {env.id} {why}"}
            await after_failure(self.app, env, {**reason, "traceback": ""})
        await delivery.ack()
        self.stats.skipped += 1
        self._log(env, delivery, f"skipped: {why}", time.monotonic())
        if self.hooks:
            await self._emit(state.value.lower(), env, delivery)

    async def _record_progress(
        self, env: Envelope, state: JobState, attempt: int, **fields: Any
    ) -> None:
        record = state_record(
            state, task=env.task, attempts=attempt, worker=self.id, at=time.time(), **fields
        )
        await self.results.write_progress(env.id, record)

    async def _emit(
        self,
        kind: str,
        env: Envelope,
        delivery: Delivery,
        started: float | None = None,
        error: BaseException | None = None,
        delay: float | None = None,
    ) -> None:
        event = JobEvent(
            kind=kind,
            job_id=env.id,
            task=env.task,
            queue=env.queue,
            time=time.time(),
            attempt=delivery.attempt,
            worker=self.id,
            duration=None if started is None else time.monotonic() - started,
            delay=delay,
            error=None if error is None else f"{type(error).__name__}: {error}",
        )
        await emit(self.hooks, event)

    def _log(
        self,
        env: Envelope,
        delivery: Delivery,
        what: str,
        started: float,
        error: BaseException | None = None,
        level: int = logging.INFO,
        then: str = "",
    ) -> None:
        """One line per job outcome: task[id] what in N ms (attempt n), then: cause."""
        if not log.isEnabledFor(level):
            return
        took = (time.monotonic() - started) * 1000
        cause = f": {type(error).__name__}: {error}" if error is not None else ""
        log.log(
            level,
            "%s[%s] %s in %.1fms (attempt %d)%s%s",
            env.task,
            env.id,
            what,
            took,
            delivery.attempt,
            then,
            cause,
        )


def _times(started: float) -> dict[str, float]:
    """Wall-clock start and finish of a job that started at monotonic time ``started``."""
    now = time.time()
    return {"started": now - (time.monotonic() - started), "finished": now}


def _error_doc(error: BaseException | None) -> dict[str, str]:
    if error is None:
        return {"type": "", "message": "", "traceback": ""}
    text = "".join(traceback.format_exception(error))
    return {"type": type(error).__name__, "message": str(error), "traceback": text}

"""The worker: pull jobs, run them, and ack, retry (``nak`` with a delay) or dead-letter them.

A job is acked only after its outcome is recorded. Coroutine tasks run on the event loop, plain
functions in a thread pool; ``concurrency`` bounds both, and the pullers never ask the server for
more jobs than there are free slots. Long jobs send ``in_progress`` heartbeats at a third of
``ack_wait``. On the first stop signal the worker stops pulling, lets running jobs finish within
``grace`` seconds, and gives back (``nak``) the rest so they run again at once elsewhere.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import socket
import time
import traceback
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from jsqueue import dlq
from jsqueue.app import App
from jsqueue.broker import Broker
from jsqueue.config import check_queue
from jsqueue.context import JobContext, reset_current, set_current
from jsqueue.continuation import after_failure, after_success, has_followers
from jsqueue.envelope import Envelope, decode, peek
from jsqueue.errors import (
    ArgumentsError,
    DecodeError,
    SerializeError,
    SignatureError,
    TimeLimitExceeded,
)
from jsqueue.outcome import ACK, Action, Decision, Reason, dead, decide, unknown_task
from jsqueue.puller import Delivery, Puller
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
class _Lane:
    """One queue's puller, with the jobs it runs and those waiting for a slot."""

    puller: Puller
    running: int = 0
    backlog: deque[Delivery] = field(default_factory=deque)


@dataclass
class _Attempt:
    """What one run of a task produced."""

    error: BaseException | None = None
    value: Any = None


class Worker:
    """Runs the jobs of ``queues`` with ``concurrency`` slots. See :func:`run_worker`."""

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = 32,
        burst: bool = False,
        grace: float = 30.0,
        worker_id: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.app = app
        self.queues = [check_queue(q) for q in (queues or [app.settings.default_queue])]
        self.concurrency = concurrency
        self.burst = burst
        self.grace = grace
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.stats = WorkerStats()
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._active: dict[Delivery, float] = {}
        self._stop = asyncio.Event()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="jsqueue-task")
        self._broker: Broker | None = None
        self._results: ResultBackend | None = None
        self._revoked = RevokedSet()
        self.started = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to stop gracefully (what the first SIGTERM does)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self, wait_for_server: float = 0.0) -> WorkerStats:
        """Run until :meth:`stop` (or, with ``burst``, until the queues are empty)."""
        await self.app.connect(wait=wait_for_server)
        self._broker = broker = await self.app.broker()
        self._results = await self.app.result_backend()
        await self._revoked.start(self.app)
        shares = _split(self.concurrency, len(self.queues))
        for queue, share in zip(self.queues, shares, strict=True):
            consumer = await broker.ensure_consumer(queue)
            puller = Puller(broker, queue, consumer, share, self._on_delivery, self._on_late)
            self._lanes[queue] = _Lane(puller)
        background = [asyncio.create_task(self._heartbeats())]
        if self.burst:
            background.append(asyncio.create_task(self._burst_watch()))
        try:
            for lane in self._lanes.values():
                await lane.puller.start()
            log.info(
                "worker %s ready: queues %s, concurrency %d, NATS %s",
                self.id,
                ",".join(self.queues),
                self.concurrency,
                broker.url,
            )
            self.started.set()
            await self._stop.wait()
            await self._drain()
        finally:
            for task in background:
                task.cancel()
            for lane in self._lanes.values():
                await lane.puller.close()
            self._pool.shutdown(wait=False, cancel_futures=True)
            await broker.flush()
        log.info("worker %s stopped: %s", self.id, self.stats.summary())
        return self.stats

    async def _drain(self) -> None:
        """Stop pulling, let running jobs finish within ``grace``, give back the rest.

        The pull inboxes are closed first (a round trip makes sure the server saw it), so a job
        given back cannot be redelivered to this worker's own still-open pull requests.
        """
        log.info("worker %s stopping: %d job(s) running", self.id, len(self._tasks))
        for lane in self._lanes.values():
            await lane.puller.close()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.grace)
            if pending:
                log.warning(
                    "%d job(s) still running after %.1fs; giving them back",
                    len(pending),
                    self.grace,
                )
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=10)
        for lane in self._lanes.values():
            while lane.backlog:
                delivery = lane.backlog.popleft()
                await self._give_back(delivery)
                await lane.puller.release()

    # -- dispatch ------------------------------------------------------------------------------

    def _on_delivery(self, delivery: Delivery) -> None:
        lane = self._lanes[delivery.queue]
        if lane.running < lane.puller.capacity:
            self._start(lane, delivery)
        else:
            lane.backlog.append(delivery)
            self._active[delivery] = time.monotonic()

    def _on_late(self, delivery: Delivery) -> None:
        """A job that arrived after we stopped pulling: give it back at once."""
        lane = self._lanes[delivery.queue]

        async def give_back() -> None:
            await self._give_back(delivery)
            await lane.puller.release()

        self._track(asyncio.get_running_loop().create_task(give_back()))

    def _start(self, lane: _Lane, delivery: Delivery) -> None:
        lane.running += 1
        self._active[delivery] = time.monotonic()
        self._track(asyncio.get_running_loop().create_task(self._handle(lane, delivery)))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, lane: _Lane, delivery: Delivery) -> None:
        try:
            await self._process(delivery)
        except asyncio.CancelledError:
            await self._give_back(delivery)
            raise
        except Exception:
            # Our own failure (e.g. the server went away while settling): the job stays
            # unacked and the server delivers it again after ack_wait.
            log.exception("job on %s (delivery %d) not settled", delivery.queue, delivery.attempt)
        finally:
            self._active.pop(delivery, None)
            lane.running -= 1
            if lane.backlog and not self.stopping:
                self._start(lane, lane.backlog.popleft())
            await lane.puller.release()

    async def _give_back(self, delivery: Delivery) -> None:
        self._active.pop(delivery, None)
        if not delivery.settled:
            try:
                await delivery.nak()
            except Exception as exc:  # disconnected: it comes back after ack_wait
                log.debug("nak at shutdown failed: %r", exc)

    # -- one job -------------------------------------------------------------------------------

    async def _process(self, delivery: Delivery) -> None:
        attempt = delivery.attempt
        settings = self.app.settings
        try:
            env = decode(delivery.data, settings.secret_key)
        except DecodeError as exc:
            reason = Reason.BAD_SIGNATURE if isinstance(exc, SignatureError) else Reason.UNDECODABLE
            await self._dead_letter(delivery, None, dead(reason), exc, time.monotonic())
            return
        started = time.monotonic()
        if attempt > settings.max_deliver:
            crash = RuntimeError(
                f"delivered {attempt} times without an outcome (max_deliver="
                f"{settings.max_deliver}): the job kills or hangs its worker"
            )
            await self._dead_letter(delivery, env, dead(Reason.CRASH_LOOP), crash, started)
            return
        if env.id in self._revoked:
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
        ctx = JobContext(
            id=env.id,
            task=env.task,
            attempt=delivery.attempt,
            queue=env.queue,
            worker=self.id,
            headers=env.headers or {},
            parent_id=env.parent_id,
            root_id=env.root_id,
            eta=env.eta,
        )
        token = set_current(ctx)
        try:
            if task.is_async:
                limit = task.options.time_limit
                if limit is None:
                    value = await task.fn(*env.args, **env.kwargs)
                else:
                    try:
                        async with asyncio.timeout(limit):
                            value = await task.fn(*env.args, **env.kwargs)
                    except TimeoutError:
                        return _Attempt(
                            TimeLimitExceeded(f"{task.name} ran past its time_limit of {limit}s")
                        )
            else:
                call = functools.partial(task.fn, *env.args, **env.kwargs)
                loop = asyncio.get_running_loop()
                value = await loop.run_in_executor(self._pool, contextvars.copy_context().run, call)
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
                await self._results_or_raise().write_final(env.id, record)
            if has_followers(env):
                await after_success(self.app, env, result.value)
            await delivery.ack()
            self.stats.succeeded += 1
            self._log(env, delivery, "succeeded", started)
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
        broker = self._broker_or_raise()
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
        if env is not None and store:
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
            await self._results_or_raise().write_final(env.id, record)
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

    async def _skip(self, delivery: Delivery, env: Envelope, state: JobState, why: str) -> None:
        record = state_record(state, task=env.task, worker=self.id, finished=time.time(), why=why)
        await self._results_or_raise().write_final(env.id, record)
        await delivery.ack()
        self.stats.skipped += 1
        self._log(env, delivery, f"skipped: {why}", time.monotonic())

    async def _record_progress(
        self, env: Envelope, state: JobState, attempt: int, **fields: Any
    ) -> None:
        record = state_record(
            state, task=env.task, attempts=attempt, worker=self.id, at=time.time(), **fields
        )
        await self._results_or_raise().write_progress(env.id, record)

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

    def _broker_or_raise(self) -> Broker:
        assert self._broker is not None, "the worker is not running"
        return self._broker

    def _results_or_raise(self) -> ResultBackend:
        assert self._results is not None, "the worker is not running"
        return self._results

    # -- background ----------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        """Tell the server that long jobs are alive, at a third of ack_wait."""
        every = self.app.settings.ack_wait / 3
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for delivery, since in list(self._active.items()):
                if now - since >= every and not delivery.settled:
                    try:
                        await delivery.in_progress()
                    except Exception as exc:  # disconnected; redelivery is the fallback
                        log.debug("in_progress failed: %r", exc)

    async def _burst_watch(self) -> None:
        """In burst mode, stop once no queue has jobs ready or unacked and nothing runs."""
        broker = self._broker_or_raise()
        while not self.stopping:
            await asyncio.sleep(0.05)
            if self._tasks or any(lane.backlog for lane in self._lanes.values()):
                continue
            idle = True
            for queue in self.queues:
                info = await broker.consumer_info(queue)
                if info is None or info.num_pending or info.num_ack_pending:
                    idle = False
                    break
            if idle and not self._tasks:
                log.info("worker %s: queues are empty (burst mode)", self.id)
                self.stop()


def _times(started: float) -> dict[str, float]:
    """Wall-clock start and finish of a job that started at monotonic time ``started``."""
    now = time.time()
    return {"started": now - (time.monotonic() - started), "finished": now}


def _split(total: int, parts: int) -> list[int]:
    """Split ``total`` slots over ``parts`` queues, each at least 1."""
    base, extra = divmod(total, parts)
    return [max(1, base + (1 if i < extra else 0)) for i in range(parts)]


def _error_doc(error: BaseException | None) -> dict[str, str]:
    if error is None:
        return {"type": "", "message": "", "traceback": ""}
    text = "".join(traceback.format_exception(error))
    return {"type": type(error).__name__, "message": str(error), "traceback": text}


async def run_worker(
    app: App,
    *,
    queues: Sequence[str] | None = None,
    concurrency: int = 32,
    burst: bool = False,
    grace: float = 30.0,
    wait_for_server: float = 0.0,
    worker_id: str | None = None,
) -> WorkerStats:
    """Run a worker for ``app`` in the current event loop until it is stopped.

    With ``burst=True`` it returns once the queues hold nothing ready or unacked (retries
    included) and nothing runs. Signal handling is the caller's: ``jsqueue worker`` installs it.
    """
    worker = Worker(
        app,
        queues=queues,
        concurrency=concurrency,
        burst=burst,
        grace=grace,
        worker_id=worker_id,
    )
    return await worker.run(wait_for_server=wait_for_server)

"""Running a job's task where it belongs, within its limits, and stopping it on request.

``async def`` tasks run on the worker's loop, driven by
:class:`jsqueue.worker.interrupt.Interruptible`, so that a soft time limit raises
:class:`SoftTimeLimitExceeded` inside them and a hard one cancels them. ``def`` tasks go to the
worker's pool: threads of the worker (no limit can stop them) or supervised child processes (the
child is killed at the hard limit, signalled at the soft one). Jobs that run in the worker's own
process pass a :class:`jsqueue.worker.gate.Gate`, so that a suspect (delivered again after its
worker died) can run alone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from jsqueue import progress
from jsqueue.context import ReportCallback, context_of, reset_current, set_current, sink_to
from jsqueue.errors import ConfigError, SoftTimeLimitExceeded, Terminated, TimeLimitExceeded
from jsqueue.middleware import Middleware, run_job
from jsqueue.pools.outcome import ChildOutcome
from jsqueue.pools.protocol import ChildJob
from jsqueue.worker.gate import Gate
from jsqueue.worker.interrupt import Interruptible

if TYPE_CHECKING:
    from jsqueue.app import App
    from jsqueue.task import Task
    from jsqueue.worker.job import Job

log = logging.getLogger("jsqueue.worker")


class Pool(Protocol):
    """What the worker needs of a pool for ``def`` tasks (threads or processes)."""

    @property
    def kind(self) -> str: ...
    @property
    def size(self) -> int: ...

    async def start(self) -> None: ...
    async def run(
        self, job: ChildJob, *, ahead: bool = False, on_start: Callable[[], None] | None = None
    ) -> ChildOutcome: ...
    async def terminate(self, job_id: str) -> bool: ...
    def children(self) -> list[Any]: ...
    def handed(self) -> list[ChildJob]: ...
    async def close(self, *, kill: bool = False) -> None: ...


@dataclass(frozen=True)
class Limits:
    """Worker-wide time limits in seconds, for tasks that set none of their own."""

    time_limit: float | None = None
    soft_time_limit: float | None = None

    def of(self, task: Task[Any, Any]) -> tuple[float | None, float | None]:
        """The (hard, soft) limits of ``task``: its own, else the worker's."""
        hard = task.options.time_limit or self.time_limit
        soft = task.options.soft_time_limit or self.soft_time_limit
        return hard, soft

    def check(self, app: App, pool_kind: str, queues: Sequence[str]) -> None:
        """Refuse, before the worker starts, limits that cannot hold: a soft limit at or above
        the hard one, or the hard limit of a ``def`` task routed to ``queues`` under the thread
        pool."""
        for value, name in ((self.time_limit, "--time-limit"), (self.soft_time_limit, "soft")):
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive seconds, not {value!r}")
        for task in app.tasks.values():
            hard, soft = self.of(task)
            if hard is not None and soft is not None and soft >= hard:
                raise ConfigError(
                    f"task {task.name}: its soft time limit ({soft}s) must be below its hard "
                    f"time limit ({hard}s), or it could never fire"
                )
            thread = pool_kind == "thread" and not task.is_async
            for name in ("time_limit", "soft_time_limit"):
                value = getattr(task.options, name)
                if thread and value and task.queue in queues:
                    raise ConfigError(
                        f"task {task.name} has {name}={value}, which a thread cannot keep: "
                        "run the worker with --pool process (a child is interrupted or "
                        "killed at the limit)"
                    )


class TaskExecutor:
    """Runs tasks for one worker; knows which job runs where, to stop it."""

    def __init__(
        self,
        pool: Pool,
        limits: Limits,
        worker_id: str,
        *,
        on_report: ReportCallback | None = None,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self.pool = pool
        #: the app's middleware, around every job (see :mod:`jsqueue.middleware`)
        self.middleware = middleware
        self.limits = limits
        self.worker_id = worker_id
        #: where coroutine tasks' reports go (pools hand theirs to the same callback)
        self.on_report = on_report
        self.gate = Gate()
        #: a busy pool child may be handed its next job (see :mod:`jsqueue.pools.assign`)
        self.ahead = False
        #: job id -> "async" | "thread" | "process", of the jobs running now
        self.where: dict[str, str] = {}
        self._coroutines: dict[str, Interruptible] = {}
        self._later: tuple[asyncio.AbstractEventLoop, progress.Later] | None = None

    def in_worker(self, task: Task[Any, Any]) -> bool:
        """Whether ``task`` runs in the worker's own process (so a crash takes the worker)."""
        return task.is_async or self.pool.kind == "thread"

    def hands_ahead(self, task: Task[Any, Any]) -> bool:
        """Whether a job of ``task`` may be handed to a busy child to run next (then it starts
        later than :meth:`execute` is called; no middleware wraps the wait)."""
        return self.ahead and not self.middleware and not self.in_worker(task)

    async def execute(
        self,
        job: Job,
        *,
        alone: Callable[[], Awaitable[None]] | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        """Run the task; its value or error ends up on ``job``. Never raises but a cancel.

        A job that runs in this process enters the gate first (``job.gate``; the runner
        leaves it once the job is settled). With ``alone``, no other job of this process runs
        or settles beside it, and ``alone()`` is awaited once that holds (to record it). With
        ``on_start`` (for a job that :meth:`hands_ahead`, and only then) it may wait in a busy
        child's socket, and ``on_start()`` is called when it starts.
        """
        task = job.task
        assert task is not None
        if not self.in_worker(task):
            await self._in_pool(job, on_start)
            return
        if alone is not None or not self.gate.enter_now():
            await self.gate.enter(alone=alone is not None)
        job.gate = alone is not None
        if alone is not None:
            await alone()
        if task.is_async:
            await self._on_loop(job)
        else:
            await self._in_pool(job)

    async def terminate(self, job_id: str) -> str | None:
        """Stop job ``job_id`` if it runs here: what was done ("cancelled", "killed", or
        "cannot" for a thread), or None if it does not run here."""
        where = self.where.get(job_id)
        if where is None:
            return None
        if where == "async":
            coroutine = self._coroutines.get(job_id)
            return "cancelled" if coroutine is not None and coroutine.stop() else None
        if where == "process":
            return "killed" if await self.pool.terminate(job_id) else None
        return "cannot"

    async def _on_loop(self, job: Job) -> None:
        env, task = job.env, job.task
        assert env is not None
        assert task is not None
        hard, soft = self.limits.of(task)
        loop = asyncio.get_running_loop()
        if self._later is None or self._later[0] is not loop:
            self._later = (loop, progress.on_loop(loop))
        sink = sink_to(self.on_report, env.id, self._later[1])
        token = set_current(env, job.delivery.attempt, self.worker_id, sink)
        if self.middleware:
            call = functools.partial(task.fn, *env.args, **env.kwargs)
            context = context_of(env, job.delivery.attempt, self.worker_id, sink)
            coroutine = Interruptible(run_job(self.middleware, context, call))
        else:
            coroutine = Interruptible(task.fn(*env.args, **env.kwargs))
        self._coroutines[env.id] = coroutine
        self.where[env.id] = "async"
        timer = None
        if soft is not None:
            error = SoftTimeLimitExceeded(f"{task.name} ran past its soft_time_limit of {soft}s")
            timer = loop.call_later(soft, coroutine.interrupt, error)
        deadline = asyncio.timeout(hard) if hard is not None else None
        try:
            if deadline is None:
                job.value = await coroutine
            else:
                async with deadline:
                    job.value = await coroutine
        except TimeoutError as exc:
            if deadline is not None and deadline.expired():
                job.error = TimeLimitExceeded(f"{task.name} ran past its time_limit of {hard}s")
            else:
                job.error = exc  # the task's own time-out, not ours
        except asyncio.CancelledError:
            if not coroutine.stopped:
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            job.error = Terminated(f"job {env.id} was terminated on request (revoked)")
        except BaseException as exc:
            job.error = exc
        finally:
            if timer is not None:
                timer.cancel()
            self._coroutines.pop(env.id, None)
            self.where.pop(env.id, None)
            reset_current(token)

    async def _in_pool(self, job: Job, on_start: Callable[[], None] | None = None) -> None:
        env, task = job.env, job.task
        assert env is not None
        assert task is not None
        hard, soft = self.limits.of(task)
        self.where[env.id] = self.pool.kind
        try:
            result = await self._through_middleware(
                job,
                ChildJob(
                    job_id=env.id,
                    task=env.task,
                    args=env.args,
                    kwargs=env.kwargs,
                    attempt=job.delivery.attempt,
                    queue=env.queue,
                    worker=self.worker_id,
                    headers=env.headers,
                    parent_id=env.parent_id,
                    root_id=env.root_id,
                    eta=env.eta,
                    time_limit=hard,
                    soft_time_limit=soft,
                    plain=env.serializer == "json",
                ),
                on_start,
            )
        finally:
            self.where.pop(env.id, None)
        job.value, job.error, job.remote_traceback = result.value, result.error, result.traceback

    async def _through_middleware(
        self, job: Job, child: ChildJob, on_start: Callable[[], None] | None = None
    ) -> ChildOutcome:
        """Hand ``child`` to the pool inside the middleware's ``around_job``; the headers
        they set on the job go with it to the thread or child process."""
        if not self.middleware:
            return await self.pool.run(child, ahead=on_start is not None, on_start=on_start)
        assert job.env is not None
        context = context_of(job.env, job.delivery.attempt, self.worker_id)
        outcomes: list[ChildOutcome] = []

        async def call() -> Any:
            outcome = await self.pool.run(replace(child, headers=context.headers or None))
            outcomes.append(outcome)
            if outcome.error is not None:
                raise outcome.error
            return outcome.value

        try:
            value = await run_job(self.middleware, context, call)
        except BaseException as exc:
            if outcomes and exc is outcomes[-1].error:
                return outcomes[-1]
            raise
        last = outcomes[-1] if outcomes else ChildOutcome()
        if last.error is None and value is last.value:
            return last
        return replace(last, value=value, error=None, traceback="")


def culprit(frame: FrameType) -> str | None:
    """The job whose code runs in ``frame`` on the loop (for the loop watch)."""
    execute = TaskExecutor._on_loop.__code__
    current: FrameType | None = frame
    while current is not None:
        if current.f_code is execute:
            label = getattr(current.f_locals.get("job"), "label", None)
            return label if isinstance(label, str) else None
        current = current.f_back
    return None

"""Middleware: code that runs before a job is published, around a job's execution, and when a
worker or a process-pool child starts.

Subclass :class:`Middleware`, override what you need and ``app.add_middleware(...)`` in the
module ``-A`` names (so process-pool children, which import it, get it too). Middleware runs in
registration order: the first registered sees a publish first and wraps a job outermost. A
middleware that raises is logged and the job goes on, as with hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from jsqueue.context import JobContext
from jsqueue.envelope import Envelope

log = logging.getLogger("jsqueue.middleware")
T = TypeVar("T")


class Middleware:
    """Base class of middleware: every method passes straight through."""

    def before_publish(self, envelope: Envelope, headers: dict[str, str]) -> None:
        """``envelope`` is about to be published (by a task, a canvas, beat or a worker sending
        what follows a job): add to ``headers`` (str to str) to send them with the job; the
        task sees them as ``current_job().headers``. Runs in the caller's context, so the
        caller's context variables (its tracing span, its tenant) are visible here."""

    async def around_job(self, job: JobContext, call_next: Callable[[], Awaitable[Any]]) -> Any:
        """Wrap the execution of ``job`` in the worker's event loop: ``return await
        call_next()`` runs it (an ``async def`` task runs inside this call, so context
        variables set here are visible to it; a ``def`` task is handed to the pool) and
        returns its value or raises its error. Headers set on ``job.headers`` before
        ``call_next`` reach the code of a ``def`` task (and :meth:`around_job_sync`)."""
        return await call_next()

    def around_job_sync(self, job: JobContext, call_next: Callable[[], Any]) -> Any:
        """Wrap a ``def`` task where its code runs, in the pool's thread or child process
        (a database connection of that thread, say): ``return call_next()``."""
        return call_next()

    async def on_worker_start(self, worker_id: str) -> None:
        """A worker starts, before it takes its first job."""

    async def on_worker_stop(self, worker_id: str) -> None:
        """A worker stopped: its jobs are done or given back."""

    def on_child_start(self) -> None:
        """A process-pool child loaded the app and is about to take jobs (open a database
        pool, set tracing up: whatever must not be inherited across a fork)."""

    def on_child_stop(self) -> None:
        """A process-pool child was told to stop (flush what it buffered); a child killed at
        its time limit or by a crash never gets here."""


def prepare(middleware: Sequence[Middleware], env: Envelope) -> Envelope:
    """``env`` with the headers ``middleware`` adds before it is published."""
    if not middleware:
        return env
    original = env.headers or {}
    headers = dict(original)
    for item in middleware:
        try:
            item.before_publish(env, headers)
        except Exception:
            log.exception("middleware %s failed before publishing job %s", _name(item), env.id)
    if headers == original:
        return env
    bad = [k for k, v in headers.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        log.error(
            "middleware added non-str headers %s to job %s: they are dropped (headers map str "
            "to str)",
            bad[:5],
            env.id,
        )
        headers = {k: v for k, v in headers.items() if k not in bad}
    return replace(env, headers=headers or None)


@dataclass
class _Call(Generic[T]):
    """What the inner part of a chain did when a middleware called it."""

    called: bool = False
    value: Any = None
    error: BaseException | None = None


async def run_job(
    middleware: Sequence[Middleware], job: JobContext, call: Callable[[], Awaitable[T]]
) -> T:
    """``await call()`` inside every middleware's :meth:`Middleware.around_job`."""
    inner: Callable[[], Awaitable[Any]] = call
    for item in reversed(middleware):
        inner = _guarded(item, job, inner)
    result: T = await inner()
    return result


def _guarded(
    item: Middleware, job: JobContext, inner: Callable[[], Awaitable[Any]]
) -> Callable[[], Awaitable[Any]]:
    async def step() -> Any:
        state: _Call[Any] = _Call()

        async def call_next() -> Any:
            if state.called:
                raise RuntimeError(f"middleware {_name(item)} called call_next() twice")
            state.called = True
            try:
                state.value = await inner()
            except BaseException as exc:
                state.error = exc
                raise
            return state.value

        try:
            return await item.around_job(job, call_next)
        except Exception as exc:
            if state.called and exc is state.error:
                raise
            _failed(item, job, exc)
        # outside the except block, so that the job's own errors do not chain to this one
        if not state.called:
            return await inner()
        if state.error is not None:
            raise state.error
        return state.value

    return step


def run_job_sync(middleware: Sequence[Middleware], job: JobContext, call: Callable[[], T]) -> T:
    """``call()`` inside every middleware's :meth:`Middleware.around_job_sync`."""
    inner: Callable[[], Any] = call
    for item in reversed(middleware):
        inner = _guarded_sync(item, job, inner)
    result: T = inner()
    return result


def _guarded_sync(item: Middleware, job: JobContext, inner: Callable[[], Any]) -> Callable[[], Any]:
    def step() -> Any:
        state: _Call[Any] = _Call()

        def call_next() -> Any:
            if state.called:
                raise RuntimeError(f"middleware {_name(item)} called call_next() twice")
            state.called = True
            try:
                state.value = inner()
            except BaseException as exc:
                state.error = exc
                raise
            return state.value

        try:
            return item.around_job_sync(job, call_next)
        except Exception as exc:
            if state.called and exc is state.error:
                raise
            _failed(item, job, exc)
        # outside the except block, so that the job's own errors do not chain to this one
        if not state.called:
            return inner()
        if state.error is not None:
            raise state.error
        return state.value

    return step


async def worker_started(middleware: Sequence[Middleware], worker_id: str) -> None:
    for item in middleware:
        try:
            await item.on_worker_start(worker_id)
        except Exception:
            log.exception("middleware %s failed on the start of worker %s", _name(item), worker_id)


async def worker_stopped(middleware: Sequence[Middleware], worker_id: str) -> None:
    for item in middleware:
        try:
            await item.on_worker_stop(worker_id)
        except Exception:
            log.exception("middleware %s failed on the stop of worker %s", _name(item), worker_id)


def child_started(middleware: Sequence[Middleware]) -> None:
    for item in middleware:
        try:
            item.on_child_start()
        except Exception:
            log.exception("middleware %s failed on the start of a pool child", _name(item))


def child_stopped(middleware: Sequence[Middleware]) -> None:
    for item in middleware:
        try:
            item.on_child_stop()
        except Exception:
            log.exception("middleware %s failed on the stop of a pool child", _name(item))


def _failed(item: Middleware, job: JobContext, exc: BaseException) -> None:
    log.error(
        "middleware %s failed around job %s (%s): %r; the job goes on",
        _name(item),
        job.id,
        job.task,
        exc,
        exc_info=exc,
    )


def _name(item: Middleware) -> str:
    return type(item).__name__

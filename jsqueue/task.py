"""Tasks: a function registered on an app, sent as jobs with ``delay`` / ``apply_async``.

``Task[P, R]`` keeps the function's parameters (``P``) and result type (``R``), so
``add.delay("x", 1)`` is a type error where ``add`` takes ints, and ``await job.get()`` is an
``R``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, ParamSpec, Protocol, TypedDict, TypeVar

from jsqueue.canvas import Callbacks, Signature
from jsqueue.config import Serializer, check_job_id, check_priority, check_queue
from jsqueue.errors import ArgumentsError, ConfigError
from jsqueue.limits import (
    DEFAULT_UNIQUE_FOR,
    Rate,
    check_max_concurrency,
    check_unique_for,
    check_unique_key,
    default_unique_key,
    parse_rate,
)
from jsqueue.retry import RetryPolicy
from jsqueue.services.deps import Deps
from jsqueue.services.handles import AsyncResult
from jsqueue.services.limits import send_unique
from jsqueue.services.producer import build_envelope, send, send_many
from jsqueue.sync import SyncHost, blocking, needs_loop

P = ParamSpec("P")
R = TypeVar("R")


class TaskHost(Deps, Protocol):
    """What a task needs of the app it is registered on."""

    @property
    def default_retry(self) -> RetryPolicy | None: ...


@dataclass(frozen=True)
class TaskOptions:
    """Per-task settings; ``None`` falls back to the app's."""

    name: str
    queue: str | None = None
    retry: RetryPolicy | None = None
    serializer: Serializer | None = None
    ignore_result: bool = False
    time_limit: float | None = None
    soft_time_limit: float | None = None
    track_started: bool | None = None
    #: the default priority of its jobs (None: normal)
    priority: int | None = None
    #: cluster-wide: at most this many jobs start per second, minute or hour ("100/s")
    rate_limit: str | None = None
    #: cluster-wide: at most this many of its jobs run at once
    max_concurrency: int | None = None
    #: seconds a job with the same arguments (or ``unique_key``) is not sent again
    unique_for: float | None = None


class TaskSettings(TypedDict, total=False):
    """The options of ``@app.task(...)`` (see :meth:`jsqueue.App.task`)."""

    name: str
    queue: str
    retry: RetryPolicy
    serializer: Serializer
    ignore_result: bool
    time_limit: float
    soft_time_limit: float
    track_started: bool
    priority: int
    rate_limit: str
    max_concurrency: int
    unique_for: float


class Task(Generic[P, R]):
    """A registered task. Call it to run the function here; ``delay`` it to run it on a worker."""

    def __init__(self, app: TaskHost, fn: Callable[P, Any], options: TaskOptions) -> None:
        self.app = app
        self.fn = fn
        self.options = options
        self.name = options.name
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)
        self._arity = _plain_arity(self.signature)
        if options.queue is not None:
            check_queue(options.queue)
        if options.priority is not None:
            check_priority(options.priority, f"the priority of task {options.name},")
        where = f"of task {options.name}"
        self.rate: Rate | None = None
        if options.rate_limit is not None:
            self.rate = parse_rate(options.rate_limit, f"the rate_limit {where},")
        if options.max_concurrency is not None:
            check_max_concurrency(options.max_concurrency, f"max_concurrency {where}")
        if options.unique_for is not None:
            check_unique_for(options.unique_for, f"unique_for {where}")
        # a def task's time limit needs the process pool: the worker checks that at its start
        # (producers import this module too, and never run the task)
        for setting in ("time_limit", "soft_time_limit"):
            value = getattr(options, setting)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
            ):
                raise ConfigError(f"{setting} of task {self.name} must be positive seconds")
        if options.serializer == "cloudpickle" and not app.settings.secret_key:
            raise ConfigError(
                f"task {self.name} uses serializer='cloudpickle', which needs the app's "
                "secret_key=... (workers only unpickle signed payloads)"
            )
        policy = self.retry
        limit = app.settings.max_deliver
        if policy is not None and not policy.stops_by(limit):
            raise ConfigError(
                f"the retry policy of task {self.name} allows more attempts than max_deliver="
                f"{limit}; bound it with stop=stop_after_attempt(n) for n <= {limit}, or raise "
                "the app's max_deliver"
            )

    def __repr__(self) -> str:
        return f"<Task {self.name}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Run the function in this process (a coroutine for async tasks)."""
        return self.fn(*args, **kwargs)

    # -- resolved options ----------------------------------------------------------------------

    @property
    def queue(self) -> str:
        return self.options.queue or self.app.settings.default_queue

    @property
    def retry(self) -> RetryPolicy | None:
        return self.options.retry if self.options.retry is not None else self.app.default_retry

    @property
    def priority(self) -> int | None:
        """The default priority of its jobs (None: normal)."""
        return self.options.priority

    @property
    def serializer(self) -> Serializer:
        return self.options.serializer or self.app.settings.serializer

    @property
    def track_started(self) -> bool:
        if self.options.track_started is not None:
            return self.options.track_started
        return self.app.settings.track_started

    def check_arguments(self, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Raise :class:`ArgumentsError` if the arguments do not fit the function."""
        if not kwargs and len(args) == self._arity:
            return  # the common case, without binding: exactly the positional parameters
        try:
            self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ArgumentsError(f"wrong arguments for task {self.name}: {exc}") from None

    # -- sending -------------------------------------------------------------------------------

    def _sync_host(self) -> SyncHost:
        return self.app

    @needs_loop
    async def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Send a job with these arguments; await it for the :class:`AsyncResult`."""
        return await self._send(args, kwargs)

    @needs_loop
    async def apply_async(
        self,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        job_id: str | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: datetime | float | None = None,
        headers: dict[str, str] | None = None,
        priority: int | None = None,
        unique_key: str | None = None,
        link: Callbacks = None,
        link_error: Callbacks = None,
    ) -> AsyncResult[R]:
        """Send a job with options; await it for the :class:`AsyncResult`.

        ``job_id`` is an idempotency key: the same id twice within the duplicate window stores
        one job. ``countdown`` (seconds) or ``eta`` (aware datetime) delay it on the server;
        ``expires`` (seconds from now, or an aware datetime) skips it if picked up later.
        ``priority``: 0 (low) to 3 (urgent), higher runs first (default: the task's, else 1).
        ``unique_key``: while a job sent with this key is queued, delayed, retrying or running
        (and at most ``unique_for`` seconds, default one hour), sending another returns its
        handle instead.
        ``link``: signatures sent with the result when it succeeds; ``link_error``: signatures
        sent with its id and error (``type``, ``message``, ``traceback``) if it fails for good.
        """
        if link is not None or link_error is not None:
            if unique_key is not None or self.options.unique_for is not None:
                raise ConfigError(
                    f"task {self.name}: a unique job cannot take link= or link_error= (its "
                    "handle may be another sender's job); chain the steps in the task instead"
                )
            self.check_arguments(tuple(args), kwargs or {})
            options: dict[str, Any] = {"queue": queue, "job_id": job_id, "countdown": countdown}
            options.update(eta=eta)
            options.update(expires=expires, headers=headers, priority=priority)
            options.update(unique_key=unique_key)
            sig = self.s(*args, **(kwargs or {})).set(
                **{k: v for k, v in options.items() if v is not None}
            )
            result: AsyncResult[R] = await sig.apply_async(link=link, link_error=link_error)
            return result
        return await self._send(
            tuple(args),
            kwargs or {},
            queue=queue,
            job_id=job_id,
            countdown=countdown,
            eta=eta,
            expires=expires,
            headers=headers,
            priority=priority,
            unique_key=unique_key,
        )

    delay_sync = blocking(delay)
    apply_async_sync = blocking(apply_async)

    async def _send(
        self, args: Sequence[Any], kwargs: dict[str, Any], **options: Any
    ) -> AsyncResult[R]:
        self.check_arguments(args, kwargs)
        unique_key = options.get("unique_key")
        if unique_key is not None:
            check_unique_key(unique_key)
        elif self.options.unique_for is not None:
            options["unique_key"] = default_unique_key(self.name, list(args), kwargs)
        broker = await self.app.broker()
        queue = options.pop("queue", None) or self.queue
        if options.get("priority") is None:
            options["priority"] = self.priority
        env = build_envelope(
            self.app.settings,
            self.name,
            args,
            kwargs,
            queue=queue,
            serializer=self.serializer,
            notify=broker.notify_subject,
            **{k: v for k, v in options.items() if v is not None},
        )
        if env.unique_key is not None:
            ttl = self.options.unique_for or DEFAULT_UNIQUE_FOR
            holder = await send_unique(self.app, broker, env, ttl)
            return AsyncResult(self.app, holder, self.name, notified=holder == env.id)
        await send(broker, env)
        return AsyncResult(self.app, env.id, self.name, notified=True)

    async def map(self, items: Iterable[Any], *, queue: str | None = None) -> list[AsyncResult[R]]:
        """Send one job per item (each the single argument), pipelined."""
        return await self.starmap(((item,) for item in items), queue=queue)

    async def starmap(
        self, items: Iterable[Sequence[Any]], *, queue: str | None = None
    ) -> list[AsyncResult[R]]:
        """Send one job per argument tuple, pipelined: one round trip for the lot, not each."""
        if self.options.unique_for is not None:  # each job takes its key first
            return [await self._send(tuple(args), {}, queue=queue) for args in items]
        broker = await self.app.broker()
        envelopes = []
        for args in items:
            self.check_arguments(args, {})
            envelopes.append(
                build_envelope(
                    self.app.settings,
                    self.name,
                    args,
                    queue=queue or self.queue,
                    serializer=self.serializer,
                    notify=broker.notify_subject,
                    priority=self.priority,
                )
            )
        await send_many(broker, envelopes)
        return [AsyncResult(self.app, env.id, self.name, notified=True) for env in envelopes]

    def result(self, job_id: str) -> AsyncResult[R]:
        """A handle on job ``job_id`` of this task, typed with its result."""
        return AsyncResult(self.app, check_job_id(job_id), self.name)

    # -- canvas --------------------------------------------------------------------------------

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature: this task with some arguments, to chain, group or schedule later.

        In a chain, the previous step's result is passed as the first argument.
        """
        return Signature(self.name, args, kwargs, options={}, immutable=False, app=self.app)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: in a chain, the previous result is not passed to it."""
        return Signature(self.name, args, kwargs, options={}, immutable=True, app=self.app)


def _plain_arity(signature: inspect.Signature) -> int | None:
    """The parameter count if every parameter is positional without a default, else None."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = signature.parameters.values()
    if all(p.kind in kinds and p.default is inspect.Parameter.empty for p in params):
        return len(signature.parameters)
    return None

"""The App: settings, the task registry, and the connection lifecycle.

Creating an app or importing a module of tasks never connects, spawns or reads the environment.
The first use inside an event loop connects (``async with app:`` does it explicitly); each event
loop gets its own connection, and ``*_sync`` methods use one background loop thread per app.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import re
import sys
import uuid
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import timedelta
from types import TracebackType
from typing import Any, ParamSpec, Protocol, TypeVar, overload

from typing_extensions import Unpack

from jsqueue.canvas import Signature
from jsqueue.config import Settings, SettingsKwargs, check_job_id
from jsqueue.errors import ConfigError, NotRegistered
from jsqueue.hooks import Hooks
from jsqueue.middleware import Middleware
from jsqueue.retry import RetryPolicy
from jsqueue.schedule import Cron, Every, Schedule
from jsqueue.services.handles import AsyncResult
from jsqueue.services.producer import Route
from jsqueue.services.results import ResultBackend
from jsqueue.sync import LoopThread
from jsqueue.task import Task, TaskOptions, TaskSettings
from jsqueue.wire import Broker

log = logging.getLogger("jsqueue.app")
_ENTRY_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class TaskDecorator(Protocol):
    """What ``@app.task(...)`` with options returns."""

    @overload
    def __call__(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


@dataclass(frozen=True)
class PeriodicEntry:
    """A job ``jsqueue beat`` sends on a schedule."""

    name: str
    signature: Signature
    schedule: Schedule
    catch_up: str = "latest"


@dataclass
class _LoopState:
    broker: Broker
    lock: asyncio.Lock
    connected: bool = False
    results: ResultBackend | None = None


class App:
    """A jsqueue application: ``App("billing", url="nats://...", prefix="jsq", **settings)``.

    Settings are keyword arguments (see :class:`jsqueue.config.Settings`); an unknown one is an
    error that names it. ``url`` falls back to ``$JSQUEUE_URL`` when the app connects.
    """

    def __init__(
        self,
        name: str,
        *,
        url: str | None = None,
        prefix: str = "jsq",
        default_retry: RetryPolicy | None = None,
        **settings: Unpack[SettingsKwargs],
    ) -> None:
        self.settings = Settings.create(name, url=url, prefix=prefix, **settings)
        if default_retry is not None and not isinstance(default_retry, RetryPolicy):
            raise ConfigError("default_retry must be a jsqueue.RetryPolicy")
        self.default_retry = default_retry
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.periodic: dict[str, PeriodicEntry] = {}
        self.hooks: list[Hooks] = []
        self.middleware: list[Middleware] = []
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._sync = LoopThread(f"jsqueue-{name}-sync")
        #: names this process's notify subject, the same on every connection of the app
        self._notify_token = uuid.uuid4().hex[:16]

    @property
    def name(self) -> str:
        return self.settings.name

    def configure(self, **overrides: Any) -> None:
        """Replace settings (e.g. the CLI's ``--url``) before the app connects anywhere."""
        if any(state.connected for state in self._loops.values()):
            raise ConfigError("configure() must be called before the app connects")
        current = {f: getattr(self.settings, f) for f in self.settings.__dataclass_fields__}
        current.update(overrides)
        name = current.pop("name")
        self.settings = Settings.create(name, **current)

    def __repr__(self) -> str:
        return f"<App {self.name} prefix={self.settings.prefix} tasks={len(self.tasks)}>"

    # -- tasks ---------------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]]) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R]) -> Task[P, R]: ...
    @overload
    def task(self, **options: Unpack[TaskSettings]) -> TaskDecorator: ...

    def task(self, fn: Callable[..., Any] | None = None, **options: Unpack[TaskSettings]) -> Any:
        """Register a function (``async def`` or plain ``def``) as a task.

        Use bare (``@app.task``) or with options: ``name`` (default ``module.qualname``),
        ``queue``, ``retry`` (a :class:`RetryPolicy`), ``serializer``, ``ignore_result``,
        ``time_limit`` (seconds: a coroutine is cancelled, a process-pool child killed),
        ``soft_time_limit`` (seconds: :class:`SoftTimeLimitExceeded` is raised inside the task),
        ``track_started``, ``priority`` (the default of its jobs: 0 low to 3 urgent, higher
        runs first; 1 unless set), and the cluster-wide limits ``rate_limit`` (``"100/s"``,
        ``"/m"``, ``"/h"``), ``max_concurrency`` and ``unique_for`` (seconds; see the README's
        "Limits").
        """
        unknown = set(options) - set(TaskSettings.__annotations__)
        if unknown:
            raise ConfigError(
                f"unknown task option(s) {sorted(unknown)}; the options are "
                f"{sorted(TaskSettings.__annotations__)}"
            )

        def register(func: Callable[..., Any]) -> Task[Any, Any]:
            task_name = options.get("name") or f"{func.__module__}.{func.__qualname__}"
            if task_name in self.tasks:
                raise ConfigError(
                    f"a task named {task_name!r} is already registered on {self.name}"
                )
            settings: TaskSettings = {**options, "name": task_name}
            task: Task[Any, Any] = Task(self, func, TaskOptions(**settings))
            self.tasks[task_name] = task
            return task

        if fn is not None:
            return register(fn)
        return register

    def add_periodic(
        self,
        signature: Signature,
        *,
        name: str,
        every: timedelta | float | None = None,
        cron: str | None = None,
        tz: str = "UTC",
        catch_up: str = "latest",
    ) -> PeriodicEntry:
        """Send ``signature`` on a schedule (run ``jsqueue beat``): ``every`` (a timedelta or
        seconds, anchored to the Unix epoch) or ``cron`` (in ``tz``).

        After downtime, ``catch_up="latest"`` sends the newest missed tick once and skips the
        rest; ``"skip"`` sends none. Ticks missed by a leader change are always sent.
        """
        if not _ENTRY_RE.fullmatch(name):
            raise ConfigError(f"periodic name {name!r}: use 1-64 letters, digits, '_' or '-'")
        if name in self.periodic:
            raise ConfigError(f"a periodic entry named {name!r} already exists on {self.name}")
        if (every is None) == (cron is None):
            raise ConfigError(f"periodic {name!r}: give every= or cron=, exactly one")
        if catch_up not in ("latest", "skip"):
            raise ConfigError(f"periodic {name!r}: catch_up must be 'latest' or 'skip'")
        schedule: Schedule
        if every is not None:
            seconds = every.total_seconds() if isinstance(every, timedelta) else float(every)
            if seconds != int(seconds):
                raise ConfigError(f"periodic {name!r}: every= must be whole seconds")
            schedule = Every(int(seconds))
        else:
            assert cron is not None
            schedule = Cron(cron, tz)
        if signature.app is None:
            signature = replace(signature, app=self)
        entry = PeriodicEntry(name, signature, schedule, catch_up)
        self.periodic[name] = entry
        return entry

    def periodic_task(
        self,
        *,
        name: str | None = None,
        every: timedelta | float | None = None,
        cron: str | None = None,
        tz: str = "UTC",
        catch_up: str = "latest",
        **task_options: Any,
    ) -> Callable[[Callable[..., Any]], Task[Any, Any]]:
        """Decorator: register a task taking no arguments and send it on a schedule."""

        def register(fn: Callable[..., Any]) -> Task[Any, Any]:
            task: Task[Any, Any] = self.task(fn, **task_options) if task_options else self.task(fn)
            entry_name = name or fn.__name__.replace(".", "-")
            self.add_periodic(
                task.s(), name=entry_name, every=every, cron=cron, tz=tz, catch_up=catch_up
            )
            return task

        return register

    def add_hook(self, hook: Hooks) -> None:
        """Observe job events (see :class:`jsqueue.hooks.Hooks`) in this app's workers."""
        self.hooks.append(hook)

    def add_middleware(self, middleware: Middleware) -> None:
        """Run ``middleware`` (a :class:`jsqueue.Middleware`) on this app's publishes, jobs,
        workers and pool children, inside the middleware added before it."""
        self.middleware.append(middleware)

    def result(self, job_id: str) -> AsyncResult[Any]:
        """A handle on job ``job_id`` (say, an id a web request was given) to wait for its
        outcome; :class:`ConfigError` if it is not a legal job id."""
        return AsyncResult(self, check_job_id(job_id))

    def signature(self, task: str, *args: Any, **kwargs: Any) -> Signature:
        """A signature of a task by name, for tasks whose code this process does not have."""
        return Signature(task, args, kwargs, app=self)

    def route(self, task: str) -> Route | None:
        """The task registered as ``task`` (its queue, serializer, arguments), or None."""
        return self.tasks.get(task)

    def get_task(self, name: str) -> Task[Any, Any]:
        """The task registered under ``name``; :class:`NotRegistered` if none."""
        try:
            return self.tasks[name]
        except KeyError:
            raise NotRegistered(
                f"no task named {name!r} is registered on app {self.name}"
            ) from None

    # -- connection ----------------------------------------------------------------------------

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is not None and state.broker.lost.is_set():
            # nats-py closed this connection for good (it does on some server errors): the
            # next use connects anew instead of failing for ever
            log.warning("app %s: the NATS connection was closed for good; connecting anew", self)
            state = None
        if state is None:
            broker = Broker(self.settings, client_name=self.name, notify_token=self._notify_token)
            broker.middleware = self.middleware
            state = _LoopState(broker, asyncio.Lock())
            self._loops[loop] = state
        return state

    async def connect(self, wait: float = 0.0) -> None:
        """Connect in this event loop and provision streams; retry an unreachable server for
        ``wait`` seconds. Safe to call more than once."""
        state = self._state()
        if state.connected:
            return
        async with state.lock:
            if not state.connected:
                await state.broker.connect(wait=wait)
                state.connected = True

    async def broker(self) -> Broker:
        """The connected broker of the running event loop (connecting on first use)."""
        state = self._state()
        if not state.connected:
            await self.connect()
        return state.broker

    async def result_backend(self) -> ResultBackend:
        """The results bucket of this app in the running event loop."""
        state = self._state()
        if state.results is None:
            broker = await self.broker()
            async with state.lock:
                if state.results is None:
                    state.results = await ResultBackend.open(broker)
        return state.results

    async def close(self) -> None:
        """Close this event loop's connection (pending acks and publishes are flushed)."""
        loop = asyncio.get_running_loop()
        state = self._loops.pop(loop, None)
        if state is None:
            return
        if state.results is not None:
            await state.results.close()
        await state.broker.close()

    async def __aenter__(self) -> App:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- synchronous callers -------------------------------------------------------------------

    def run_sync(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run a coroutine on the app's background loop thread and wait for it."""
        return self._sync.run(coro, timeout)

    def close_sync(self) -> None:
        """Close the background loop thread's connection and stop the thread."""
        self._sync.stop(self.close)


def load_app(spec: str) -> App:
    """Import ``package.module:attribute`` (attribute defaults to ``app``) from the current dir."""
    module_name, _, attr = spec.partition(":")
    attr = attr or "app"
    if not module_name:
        raise ConfigError(f"-A {spec!r}: expected module:attribute, e.g. -A tasks:app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"cannot import {module_name!r} ({exc}); run from the directory that contains it or "
            "pass -A package.module:app"
        ) from None
    app = getattr(module, attr, None)
    if app is None:
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r}")
    if not isinstance(app, App):
        raise ConfigError(f"{spec} is a {type(app).__name__}, not a jsqueue.App")
    return app


def app_spec_of(app: App) -> str:
    """The ``module:attribute`` a child process imports to get ``app`` (for the process pool).

    Looked up in the modules that define the app's tasks; :class:`ConfigError` if a task lives
    in ``__main__`` (a child cannot import it) or no module holds the app.
    """
    in_main = sorted(t.name for t in app.tasks.values() if t.fn.__module__ == "__main__")
    if in_main:
        raise ConfigError(
            f"task(s) {', '.join(in_main[:5])} are defined in __main__, which a pool child "
            "cannot import: move them to a module and run the worker with -A module:app"
        )
    for name in sorted({t.fn.__module__ for t in app.tasks.values()}):
        module = sys.modules.get(name)
        for attr, value in vars(module).items() if module is not None else ():
            if value is app:
                return f"{name}:{attr}"
    raise ConfigError(
        f"cannot tell which module holds app {app.name}: pass app_spec='module:attribute' "
        "(what -A takes) to run_worker(pool='process')"
    )

"""Signatures and the canvas: ``chain``, ``group`` and ``chord``.

A signature is a task call to make later. A chain sends its first step with the rest attached
(``link``); the worker that completes a step sends the next one with the result as its first
argument, under an id fixed when the chain was built, before it acks, so a crash in between
resends the same step (deduplicated) rather than losing it. A group is many jobs sent in one
pipelined publish. A chord is a group whose callback runs exactly once after all members
succeeded (see :mod:`jsqueue.chords`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from jsqueue.config import Serializer, check_job_id
from jsqueue.envelope import Envelope, new_job_id
from jsqueue.errors import ConfigError, GroupFailed, TaskFailed
from jsqueue.producer import build_envelope, send, send_many
from jsqueue.results import AsyncResult

if TYPE_CHECKING:
    from jsqueue.app import App

_OPTION_NAMES = frozenset({"queue", "countdown", "eta", "expires", "job_id", "headers"})


@dataclass(frozen=True)
class Signature:
    """A task call to make later: ``add.s(2, 3)`` or, immutable, ``add.si(2, 3)``.

    Send it with ``await sig.delay(*more_args)``; compose it with :class:`chain`, :class:`group`
    and :class:`chord`; schedule it with ``app.add_periodic``.
    """

    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    immutable: bool = False
    app: App | None = field(default=None, compare=False, repr=False)

    def set(self, **options: Any) -> Signature:
        """A copy with these send options (queue, countdown, eta, expires, job_id, headers)."""
        unknown = set(options) - _OPTION_NAMES
        if unknown:
            raise ConfigError(f"unknown signature option(s): {', '.join(sorted(unknown))}")
        return replace(self, options={**self.options, **options})

    def to_dict(self) -> dict[str, Any]:
        """The signature as JSON data (without ``eta``, which is a moment, not a delay)."""
        return {
            "task": self.task,
            "args": list(self.args),
            "kwargs": self.kwargs,
            "options": {k: v for k, v in self.options.items() if k != "eta"},
            "immutable": self.immutable,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any], app: App | None = None) -> Signature:
        return cls(
            task=str(doc["task"]),
            args=tuple(doc.get("args", ())),
            kwargs=dict(doc.get("kwargs", {})),
            options=dict(doc.get("options", {})),
            immutable=bool(doc.get("immutable", False)),
            app=app,
        )

    def _app(self) -> App:
        if self.app is None:
            raise ConfigError(
                f"signature of {self.task} is not bound to an app; make it with task.s() or "
                "app.signature()"
            )
        return self.app

    def envelope(self, extra_args: Sequence[Any] = (), **fields: Any) -> Envelope:
        """The job this signature describes, with ``extra_args`` in front (unless immutable)."""
        app = self._app()
        args = self.args if self.immutable else (*extra_args, *self.args)
        task = app.tasks.get(self.task)
        if task is not None:
            task.check_arguments(args, self.kwargs)
        options = {k: v for k, v in self.options.items() if v is not None}
        queue = options.pop("queue", None) or (task.queue if task else app.settings.default_queue)
        serializer: Serializer = task.serializer if task else app.settings.serializer
        return build_envelope(
            app.settings,
            self.task,
            args,
            self.kwargs,
            queue=queue,
            serializer=serializer,
            **options,
            **fields,
        )

    def delay(self, *args: Any) -> Coroutine[Any, Any, AsyncResult[Any]]:
        """Send it, with ``args`` in front of the signature's own (a partial call)."""
        return self.apply_async(args)

    async def apply_async(self, args: Sequence[Any] = (), **options: Any) -> AsyncResult[Any]:
        """Send it with extra leading ``args`` and send options."""
        sig = self.set(**options) if options else self
        env = sig.envelope(args)
        await send(await sig._app().broker(), env)
        return AsyncResult(sig._app(), env.id, self.task)

    def delay_sync(self, *args: Any) -> AsyncResult[Any]:
        """:meth:`delay` for code without an event loop."""
        return self._app().run_sync(self.apply_async(args))

    def apply_async_sync(self, args: Sequence[Any] = (), **options: Any) -> AsyncResult[Any]:
        """:meth:`apply_async` for code without an event loop."""
        return self._app().run_sync(self.apply_async(args, **options))


class chain:
    """Steps run one after another, each getting the previous result as first argument.

    ``await chain(add.s(1, 2), mul.s(10)).delay()`` returns the last step's
    :class:`AsyncResult`; if a step fails the chain stops and ``get()`` raises that step's
    :class:`TaskFailed`.
    """

    def __init__(self, *steps: Signature) -> None:
        if not steps:
            raise ConfigError("a chain needs at least one step")
        self.steps = steps

    def delay(self, *args: Any) -> Coroutine[Any, Any, AsyncResult[Any]]:
        return self.apply_async(args)

    async def apply_async(self, args: Sequence[Any] = (), **options: Any) -> AsyncResult[Any]:
        """Send the first step (with ``args`` in front and these send options, as Celery does);
        the rest follow on the workers."""
        _no_job_id(options, "a chain (give it to a step with .set(job_id=...))")
        steps = [s.set(job_id=s.options.get("job_id") or new_job_id()) for s in self.steps]
        steps[0] = steps[0].set(**options)
        first, rest = steps[0], steps[1:]
        env = first.envelope(args, link=tuple(step.to_dict() for step in rest))
        app = first._app()
        await send(await app.broker(), env)
        last = steps[-1]
        return AsyncResult(app, str(last.options["job_id"]), last.task)

    def delay_sync(self, *args: Any) -> AsyncResult[Any]:
        """:meth:`delay` for code without an event loop."""
        return self.steps[0]._app().run_sync(self.apply_async(args))

    def apply_async_sync(self, args: Sequence[Any] = (), **options: Any) -> AsyncResult[Any]:
        """:meth:`apply_async` for code without an event loop."""
        return self.steps[0]._app().run_sync(self.apply_async(args, **options))


@dataclass
class GroupResult:
    """The results of a group's members, in order."""

    results: list[AsyncResult[Any]]

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.results]

    async def get(self, timeout: float | None = None) -> list[Any]:
        """Every member's result, in order; :class:`GroupFailed` (after all finished) if any
        failed, naming them."""

        async def one(result: AsyncResult[Any]) -> Any:
            return await result.get(timeout)

        outcomes = await asyncio.gather(*(one(r) for r in self.results), return_exceptions=True)
        failures = {i: o for i, o in enumerate(outcomes) if isinstance(o, TaskFailed)}
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, TaskFailed):
                raise outcome
        if failures:
            raise GroupFailed(failures, len(self.results))
        return list(outcomes)

    def get_sync(self, timeout: float | None = None) -> list[Any]:
        return self.results[0].app.run_sync(self.get(timeout)) if self.results else []


class group:
    """Members that run in parallel: ``await group(add.s(i, i) for i in range(100)).delay()``.

    All members are published pipelined (one round trip for the lot, not one each).
    """

    def __init__(self, *members: Signature | Iterable[Signature]) -> None:
        flat: list[Signature] = []
        for member in members:
            flat.extend([member] if isinstance(member, Signature) else member)
        if not flat:
            raise ConfigError("a group needs at least one member")
        self.members = flat

    def delay(self) -> Coroutine[Any, Any, GroupResult]:
        return self.apply_async()

    async def apply_async(self, **options: Any) -> GroupResult:
        """Send every member, with these send options (queue, countdown, eta, expires,
        headers) where a member does not set its own."""
        _no_job_id(options, "a group (give it to a member with .set(job_id=...))")
        envelopes = [_defaults(member, options).envelope() for member in self.members]
        app = self.members[0]._app()
        await send_many(await app.broker(), envelopes)
        return GroupResult([AsyncResult(app, e.id, e.task) for e in envelopes])

    def delay_sync(self) -> GroupResult:
        """:meth:`delay` for code without an event loop."""
        return self.members[0]._app().run_sync(self.apply_async())

    def apply_async_sync(self, **options: Any) -> GroupResult:
        """:meth:`apply_async` for code without an event loop."""
        return self.members[0]._app().run_sync(self.apply_async(**options))


class chord:
    """A group and a callback that runs exactly once, with the members' results in order,
    after all of them succeeded. A failed member fails the chord; the callback never runs.

    ``await chord(group(...), tsum.s()).delay()`` returns the callback's :class:`AsyncResult`.
    """

    def __init__(self, header: group | Iterable[Signature], body: Signature) -> None:
        self.header = header if isinstance(header, group) else group(header)
        self.body = body

    def delay(self) -> Coroutine[Any, Any, AsyncResult[Any]]:
        return self.apply_async()

    async def apply_async(self, job_id: str | None = None, **options: Any) -> AsyncResult[Any]:
        """Send the members, with these send options where a member does not set its own;
        ``job_id`` names the chord (its callback's id, the handle's)."""
        from jsqueue.chords import start_chord

        app = self.body._app()
        chord_id = check_job_id(job_id or str(self.body.options.get("job_id") or new_job_id()))
        size = len(self.header.members)
        await start_chord(app, chord_id, size, self.body.to_dict())
        envelopes = [
            _defaults(member, options).envelope(chord={"id": chord_id, "index": i, "size": size})
            for i, member in enumerate(self.header.members)
        ]
        await send_many(await app.broker(), envelopes)
        return AsyncResult(app, chord_id, self.body.task)

    def delay_sync(self) -> AsyncResult[Any]:
        """:meth:`delay` for code without an event loop."""
        return self.body._app().run_sync(self.apply_async())

    def apply_async_sync(self, job_id: str | None = None, **options: Any) -> AsyncResult[Any]:
        """:meth:`apply_async` for code without an event loop."""
        return self.body._app().run_sync(self.apply_async(job_id, **options))


def _defaults(member: Signature, options: dict[str, Any]) -> Signature:
    """``member`` with ``options`` where it has none of its own."""
    missing = {k: v for k, v in options.items() if k not in member.options}
    return member.set(**missing) if missing else member


def _no_job_id(options: dict[str, Any], what: str) -> None:
    if "job_id" in options:
        raise ConfigError(f"job_id= names one job; it cannot be given to {what}")

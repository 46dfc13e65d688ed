"""Signatures and the canvas: ``chain``, ``group`` and ``chord``, nestable, composed with ``|``.

A signature is a task call to make later; a canvas composes them, with Celery's semantics: in a
chain each step gets the previous result in front of its arguments; a group runs its members in
parallel, each given that same previous result; a group followed by a step is a chord: the step
gets the list of the group's results. Groups nest in chains and chains in groups; a chord's header
may hold chains and chords. A canvas is built into JSON nodes (:mod:`jsqueue.nodes`) with every
job's id fixed, then its first jobs are sent; the workers send the rest as jobs succeed (see
:mod:`jsqueue.services.continuation`). A chord's callback runs exactly once at every level (see
:mod:`jsqueue.services.chords`). Error callbacks (``on_error``) run once when a job fails for good.
Signatures live here with the canvas, since ``a | b`` makes them one concept; what services and
the wire see is the plain JSON node.
"""

from __future__ import annotations

import copy
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeAlias, cast

from jsqueue import nodes
from jsqueue.config import check_job_id, check_priority
from jsqueue.envelope import Envelope, new_job_id
from jsqueue.errors import ConfigError
from jsqueue.nodes import Node
from jsqueue.services.continuation import send_node
from jsqueue.services.deps import Deps
from jsqueue.services.handles import AsyncResult, GroupResult, handle_of
from jsqueue.services.producer import send, signature_envelope, to_timestamp
from jsqueue.sync import SyncHost, blocking

__all__ = ["Canvas", "GroupResult", "Signature", "chain", "chord", "group"]

_OPTION_NAMES = frozenset({"queue", "countdown", "eta", "expires", "job_id", "headers", "priority"})


@dataclass(frozen=True)
class Signature:
    """A task call to make later: ``add.s(2, 3)`` or, immutable, ``add.si(2, 3)``.

    Send it with ``await sig.delay(*more_args)``; compose it with ``|``, :class:`chain`,
    :class:`group` and :class:`chord`; schedule it with ``app.add_periodic``.
    """

    task: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    immutable: bool = False
    app: Deps | None = field(default=None, compare=False, repr=False)
    #: error callbacks (task nodes), run once with (job id, error) if this job fails for good
    errbacks: tuple[dict[str, Any], ...] = ()

    def set(self, **options: Any) -> Signature:
        """A copy with these send options (queue, countdown, eta, expires, job_id, headers,
        priority)."""
        unknown = set(options) - _OPTION_NAMES
        if unknown:
            raise ConfigError(f"unknown signature option(s): {', '.join(sorted(unknown))}")
        if options.get("priority") is not None:
            check_priority(options["priority"])
        if options.get("eta") is not None:
            to_timestamp(options["eta"], "eta")  # an aware datetime, refused now if not
        return replace(self, options={**self.options, **options})

    def on_error(self, handler: Signature) -> Signature:
        """A copy that, if it fails for good (after its retries), sends ``handler`` with the
        failed job's id and a dict of its error (``type``, ``message``, ``traceback``) after
        the handler's own arguments."""
        return replace(self, errbacks=(*self.errbacks, handler.to_dict()))

    link_error = on_error  # Celery's other name for it

    def to_dict(self) -> dict[str, Any]:
        """The signature as a JSON task node."""
        doc: dict[str, Any] = {
            "task": self.task,
            "args": list(self.args),
            "kwargs": self.kwargs,
            "options": _wire_options(self.options),
            "immutable": self.immutable,
        }
        if self.errbacks:
            doc["on_error"] = list(self.errbacks)
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any], app: Deps | None = None) -> Signature:
        options = dict(doc.get("options", {}))
        if "expires_at" in options:
            options["expires"] = datetime.fromtimestamp(float(options.pop("expires_at")), UTC)
        if isinstance(options.get("eta"), int | float):
            options["eta"] = datetime.fromtimestamp(float(options["eta"]), UTC)
        return cls(
            task=str(doc["task"]),
            args=tuple(doc.get("args", ())),
            kwargs=dict(doc.get("kwargs", {})),
            options=options,
            immutable=bool(doc.get("immutable", False)),
            app=app,
            errbacks=tuple(doc.get("on_error") or ()),
        )

    def _app(self) -> Deps:
        if self.app is None:
            raise ConfigError(
                f"signature of {self.task} is not bound to an app; make it with task.s() or "
                "app.signature()"
            )
        return self.app

    def envelope(self, extra_args: Sequence[Any] = (), **fields: Any) -> Envelope:
        """The job this signature describes, with ``extra_args`` in front (unless immutable)."""
        app = self._app()
        return signature_envelope(
            app.settings, app.route(self.task), self.to_dict(), extra_args, **fields
        )

    def __or__(self, other: Canvas) -> chain:
        """``a | b``: a chain, as in Celery."""
        return chain(self, other)

    def node(self) -> Node:
        """This signature as a task node with its job id fixed (a new one unless set)."""
        doc = self.to_dict()
        doc["options"].setdefault("job_id", new_job_id())
        return doc

    def delay(self, *args: Any) -> Coroutine[Any, Any, AsyncResult[Any]]:
        """Send it, with ``args`` in front of the signature's own (a partial call)."""
        return self.apply_async(args)

    async def apply_async(
        self,
        args: Sequence[Any] = (),
        *,
        link: Callbacks = None,
        link_error: Callbacks = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Send it with extra leading ``args`` and send options (see :meth:`set`).

        ``link``: signatures sent with its result when it succeeds (Celery's callbacks);
        ``link_error``: signatures sent with its id and error if it fails for good.
        """
        sig = self.set(**options) if options else self
        for handler in _signatures(link_error, "link_error"):
            sig = sig.on_error(handler)
        app = sig._app()
        broker = await app.broker()
        followers = _signatures(link, "link")
        if not followers:
            env = sig.envelope(args, notify=broker.notify_subject)
            await send(broker, env)
            return AsyncResult(app, env.id, self.task, notified=True)
        after = followers[0].node() if len(followers) == 1 else group(*followers).node()
        built = nodes.then(sig.node(), after)
        await send_node(app, built, args, notify=broker.notify_subject)
        return AsyncResult(app, nodes.job_id(built), self.task, notified=True)

    def _sync_host(self) -> SyncHost:
        return self._app()

    delay_sync = blocking(delay)
    apply_async_sync = blocking(apply_async)


#: ``link=`` / ``link_error=``: one signature, several, or None
Callbacks: TypeAlias = "Signature | Sequence[Signature] | None"


def _signatures(value: Callbacks, name: str) -> list[Signature]:
    if value is None:
        return []
    listed = [value] if isinstance(value, Signature) else list(value)
    for item in listed:
        if not isinstance(item, Signature):
            raise TypeError(f"{name}= takes signatures (task.s(...)), not {item!r}")
    return listed


def _wire_options(options: dict[str, Any]) -> dict[str, Any]:
    """Send options as JSON: a moment (``eta``, an aware ``expires``) as Unix seconds."""
    wire = {k: v for k, v in options.items() if v is not None}
    if isinstance(wire.get("eta"), datetime):
        wire["eta"] = to_timestamp(wire["eta"], "eta")
    if isinstance(wire.get("expires"), datetime):
        wire["expires_at"] = to_timestamp(wire.pop("expires"), "expires")
    return wire


class _Composite:
    """What chains, groups and chords share: ``|``, error callbacks, sending."""

    def node(self) -> Node:
        raise NotImplementedError

    def _app(self) -> Deps:
        raise NotImplementedError

    def __or__(self, other: Canvas) -> chain:
        """``a | b``: a chain, as in Celery."""
        return chain(cast(Canvas, self), other)

    def on_error(self, handler: Signature) -> _Composite:
        """Send ``handler`` (once) if a job of this canvas fails for good, with that job's id
        and a dict of its error after the handler's own arguments."""
        self._errbacks = (*getattr(self, "_errbacks", ()), handler.to_dict())
        return self

    link_error = on_error  # Celery's other name for it

    def _built(self) -> Node:
        built = self.node()
        errbacks = getattr(self, "_errbacks", ())
        if errbacks:
            built = nodes.with_errbacks(built, errbacks, once=not isinstance(self, group))
        return built

    async def _send(self, args: Sequence[Any], options: dict[str, Any]) -> Any:
        if "job_id" in options:
            raise ConfigError(
                f"job_id= names one job; it cannot be given to a {type(self).__name__} (give "
                "it to a step with .set(job_id=...))"
            )
        app = self._app()
        built = nodes.with_defaults(self._built(), _wire_options(options))
        broker = await app.broker()
        await send_node(app, built, args, notify=broker.notify_subject)
        return handle_of(app, built)

    def _sync_host(self) -> SyncHost:
        return self._app()


class chain(_Composite):
    """Steps run one after another, each getting the previous result as first argument.

    ``await chain(add.s(1, 2), mul.s(10)).delay()`` (or ``add.s(1, 2) | mul.s(10)``) returns
    the last step's handle; if a step fails the chain stops and ``get()`` raises that step's
    :class:`TaskFailed`. A step may be a group (the next step gets the list of its results), a
    chord or another chain.
    """

    steps: list[Canvas]

    def __init__(self, *steps: Canvas | Iterable[Canvas]) -> None:
        if len(steps) == 1 and isinstance(steps[0], list | tuple):
            steps = tuple(steps[0])  # chain([a, b]), as Celery allows
        flat: list[Canvas] = []
        for step in steps:
            if isinstance(step, chain):
                flat.extend(step.steps)
            elif isinstance(step, Signature | group | chord):
                flat.append(step)
            else:
                raise TypeError(f"a chain step is a signature or a canvas, not {step!r}")
        if not flat:
            raise ConfigError("a chain needs at least one step")
        self.steps = flat

    def node(self) -> Node:
        built = nodes.fold([step._built() if isinstance(step, _Composite) else step.node()
                            for step in self.steps])  # fmt: skip
        assert built is not None
        return built

    def _app(self) -> Deps:
        return self.steps[0]._app()

    def delay(self, *args: Any) -> Coroutine[Any, Any, Any]:
        return self.apply_async(args)

    async def apply_async(self, args: Sequence[Any] = (), **options: Any) -> Any:
        """Send the first step (with ``args`` in front and these send options, as Celery does);
        the rest follow on the workers. Returns the last step's handle (a
        :class:`GroupResult` if the chain ends in a group)."""
        return await self._send(args, options)

    delay_sync = blocking(delay)
    apply_async_sync = blocking(apply_async)


class group(_Composite):
    """Members that run in parallel: ``await group(add.s(i, i) for i in range(100)).delay()``.

    Members may be chains and chords; groups in a group are flattened. All first jobs are
    published pipelined (one round trip for the lot, not one each).
    """

    members: list[Canvas]

    def __init__(self, *members: Canvas | Iterable[Canvas]) -> None:
        flat: list[Canvas] = []
        for member in members:
            for item in [member] if isinstance(member, Signature | _Composite) else member:
                if isinstance(item, group):
                    flat.extend(item.members)
                elif isinstance(item, Signature | _Composite):
                    flat.append(item)
                else:
                    raise TypeError(f"a group member is a signature or a canvas, not {item!r}")
        if not flat:
            raise ConfigError("a group needs at least one member")
        self.members = flat

    def node(self) -> Node:
        gid = new_job_id()  # members end as <group id>.<index>: one read finds them all
        return {"group": [_built(_named(m, f"{gid}.{i}")) for i, m in enumerate(self.members)]}

    def _app(self) -> Deps:
        return self.members[0]._app()

    def delay(self) -> Coroutine[Any, Any, GroupResult]:
        return self.apply_async()

    async def apply_async(self, **options: Any) -> GroupResult:
        """Send every member, with these send options (queue, countdown, eta, expires,
        headers) where a member does not set its own."""
        handle: GroupResult = await self._send((), options)
        return handle

    delay_sync = blocking(delay)
    apply_async_sync = blocking(apply_async)


class chord(_Composite):
    """A group and a callback that runs exactly once, with the members' results in order,
    after all of them succeeded. A failed member fails the chord; the callback never runs.

    ``await chord(group(...), tsum.s()).delay()`` returns the callback's :class:`AsyncResult`.
    The header may hold chains and chords; the chord's id is its callback's.
    """

    def __init__(self, header: Canvas | Iterable[Canvas], body: Canvas) -> None:
        if isinstance(header, Signature | _Composite) and not isinstance(header, group):
            header = [header]
        #: the header as a group; None for an empty header (the body then runs with [])
        self.header = (
            header
            if isinstance(header, group)
            else group(*items)
            if (items := list(header))
            else None
        )
        if not isinstance(body, Signature | _Composite):
            raise TypeError(f"a chord's body is a signature or a canvas, not {body!r}")
        self.body = body
        self._job_id: str | None = None

    def node(self) -> Node:
        body = _built(self.body)
        if self._job_id is not None:
            if nodes.kind(body) != "task":
                raise TypeError("job_id= names a chord whose callback is one task")
            body = {**body, "options": {**body["options"], "job_id": self._job_id}}
        chord_id = nodes.job_id(body) if nodes.kind(body) == "task" else new_job_id()
        # members named <group id>.<index>, as a group's are
        header = self.header._built()["group"] if self.header is not None else []
        return {"id": chord_id, "header": header, "body": body}

    def _app(self) -> Deps:
        return self.body._app()

    def delay(self) -> Coroutine[Any, Any, Any]:
        return self.apply_async()

    async def apply_async(self, job_id: str | None = None, **options: Any) -> Any:
        """Send the members, with these send options where a member does not set its own;
        ``job_id`` names the chord (its callback's id, the handle's)."""
        self._job_id = check_job_id(job_id) if job_id is not None else None
        return await self._send((), options)

    delay_sync = blocking(delay)
    apply_async_sync = blocking(apply_async)


#: Anything that can be sent: a signature or a composition of signatures.
Canvas: TypeAlias = Signature | chain | group | chord


def _built(item: Canvas) -> Node:
    return item._built() if isinstance(item, _Composite) else item.node()


def _named(item: Canvas, name: str) -> Canvas:
    """``item`` whose last job is called ``name``, unless it has a job id of its own."""
    if isinstance(item, Signature):
        return item if item.options.get("job_id") else item.set(job_id=name)
    named = copy.copy(item)
    if isinstance(named, chain):
        named.steps = [*named.steps[:-1], _named(named.steps[-1], name)]
    elif isinstance(named, chord):
        named.body = _named(named.body, name)
    return named

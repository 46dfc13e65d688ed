"""The canvas: ``chain``, ``group`` and ``chord`` of signatures (:mod:`jsqueue.signature`).

A chain sends its first step with the rest attached
(``link``); the worker that completes a step sends the next one with the result as its first
argument, under an id fixed when the chain was built, before it acks, so a crash in between
resends the same step (deduplicated) rather than losing it. A group is many jobs sent in one
pipelined publish. A chord is a group whose callback runs exactly once after all members
succeeded (see :mod:`jsqueue.services.chords`).
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterable, Sequence
from typing import Any

from jsqueue.config import check_job_id
from jsqueue.envelope import new_job_id
from jsqueue.errors import ConfigError
from jsqueue.services.chords import start_chord
from jsqueue.services.handles import AsyncResult, GroupResult
from jsqueue.services.producer import send, send_many
from jsqueue.signature import Signature
from jsqueue.sync import SyncHost, blocking

__all__ = ["GroupResult", "Signature", "chain", "chord", "group"]


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
        app = first._app()
        broker = await app.broker()
        links = tuple(step.to_dict() for step in rest)
        env = first.envelope(args, link=links, notify=broker.notify_subject)
        await send(broker, env)
        last = steps[-1]
        return AsyncResult(app, str(last.options["job_id"]), last.task, notified=True)

    def _sync_host(self) -> SyncHost:
        return self.steps[0]._app()

    delay_sync = blocking(delay)
    apply_async_sync = blocking(apply_async)


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
        app = self.members[0]._app()
        broker = await app.broker()
        notify = broker.notify_subject
        envelopes = [_defaults(m, options).envelope(notify=notify) for m in self.members]
        await send_many(broker, envelopes)
        return GroupResult([AsyncResult(app, e.id, e.task, notified=True) for e in envelopes])

    def _sync_host(self) -> SyncHost:
        return self.members[0]._app()

    delay_sync = blocking(delay)
    apply_async_sync = blocking(apply_async)


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
        app = self.body._app()
        chord_id = check_job_id(job_id or str(self.body.options.get("job_id") or new_job_id()))
        size = len(self.header.members)
        broker = await app.broker()
        notify = broker.notify_subject
        await start_chord(app, chord_id, size, self.body.to_dict(), notify=notify)
        envelopes = [
            _defaults(member, options).envelope(
                chord={"id": chord_id, "index": i, "size": size}, notify=notify
            )
            for i, member in enumerate(self.header.members)
        ]
        await send_many(broker, envelopes)
        return AsyncResult(app, chord_id, self.body.task, notified=True)

    def _sync_host(self) -> SyncHost:
        return self.body._app()

    delay_sync = blocking(delay)
    apply_async_sync = blocking(apply_async)


def _defaults(member: Signature, options: dict[str, Any]) -> Signature:
    """``member`` with ``options`` where it has none of its own."""
    missing = {k: v for k, v in options.items() if k not in member.options}
    return member.set(**missing) if missing else member


def _no_job_id(options: dict[str, Any], what: str) -> None:
    if "job_id" in options:
        raise ConfigError(f"job_id= names one job; it cannot be given to {what}")

"""Chord bookkeeping in the ``<prefix>_chords`` KV bucket: a callback that runs exactly once.

- ``<chord>.meta``: the size and the callback signature, written before any member is sent.
- ``<chord>.m.<index>``: one key per member, written with ``create`` when the member succeeded;
  a redelivered member finds its key there, so nothing is counted twice. The server counts the
  keys (see :meth:`KvStore.count_keys`).
- ``<chord>.claim``: created by the member that completes the set, recording which member it is;
  that member publishes the callback under the chord's id, then marks the claim published, and
  only then acks. A crash in between redelivers that same member, which finds its own claim and
  publishes again (the same job id, deduplicated): never lost, never doubled. If that
  redelivery fails for good instead (a crash loop, an error on the second run), the set is still
  complete, so :func:`member_failed` finishes the claim rather than fail the chord.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from jsqueue import nodes
from jsqueue.envelope import Envelope, pickle_value, to_json, unpickle_value
from jsqueue.errors import InvalidError, TransientError
from jsqueue.nodes import Node
from jsqueue.services.deps import Deps
from jsqueue.services.results import JobState, state_record
from jsqueue.wire import Broker, KeyExists, KvStore

log = logging.getLogger("jsqueue.chords")
T = TypeVar("T")


class Sender(Protocol):
    """How a chord sends its callback (:func:`jsqueue.services.continuation.send_node`)."""

    async def __call__(
        self,
        app: Deps,
        node: Node,
        extra_args: Sequence[Any] = (),
        *,
        parent_id: str | None = None,
        root_id: str | None = None,
        notify: str | None = None,
    ) -> Any: ...


async def start_chord(
    deps: Deps, chord_id: str, size: int, callback: dict[str, Any], *, notify: str | None = None
) -> None:
    """Record a chord before its members are sent (``notify``: the sender's subject)."""
    await (await Chords.of(deps)).start(chord_id, size, callback, notify)


async def member_succeeded(deps: Deps, env: Envelope, value: Any, send: Sender) -> None:
    """Record a member's result; if it completes the set, ``send`` the callback exactly once."""
    await (await Chords.of(deps)).member_succeeded(env, value, send)


async def member_failed(deps: Deps, env: Envelope, error: dict[str, str], send: Sender) -> None:
    """A member failed for good: the chord fails and its callback never runs."""
    assert env.chord is not None
    chords = await Chords.of(deps)
    await chords.membership_failed(env.chord, env.id, error, env.notify, send)


async def abort(
    deps: Deps,
    node: Node,
    record: bytes,
    error: dict[str, str],
    failed_job: str,
    notify: str | None,
    send: Sender,
) -> None:
    """Every job of ``node`` will never run: record FAILURE for each, and fail the chords they
    were to complete."""
    await (await Chords.of(deps)).abort(node, record, error, failed_job, notify, send)


async def claim_errback(deps: Deps, errback_id: str, claimer: str) -> bool:
    """Whether job ``claimer`` is the one to send the canvas-wide error callback ``errback_id``:
    the first of the canvas's jobs to fail for good claims it. A redelivery of the claimer
    (it died before sending) finds its own claim and sends again, under the same job id."""
    chords = await Chords.of(deps)
    key = f"{errback_id}.errback"
    try:
        await chords._ride(chords.store.create, key, json.dumps({"by": claimer}).encode())
        return True
    except KeyExists:
        entry = await chords._ride(chords.store.get, key)
        return entry is not None and json.loads(entry.value).get("by") == claimer


class Chords:
    """The chords bucket, on one connection."""

    def __init__(self, deps: Deps, broker: Broker, store: KvStore) -> None:
        self.deps = deps
        self.broker = broker
        self.store = store

    @classmethod
    async def of(cls, deps: Deps) -> Chords:
        broker = await deps.broker()
        return cls(deps, broker, await broker.kv("chords", ttl=deps.settings.result_ttl))

    async def _ride(self, operation: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Chord bookkeeping rides out leader elections, as result writes do: a member whose
        bookkeeping failed would be redelivered, and a long election would make it a crash
        loop."""
        return await self.broker.riding_elections(operation, *args)

    async def start(
        self, chord_id: str, size: int, callback: dict[str, Any], notify: str | None
    ) -> None:
        meta: dict[str, Any] = {"size": size, "callback": callback, "created": time.time()}
        if notify is not None:
            meta["notify"] = notify
        await self._ride(self.store.put, f"{chord_id}.meta", json.dumps(meta).encode())

    async def member_succeeded(self, env: Envelope, value: Any, send: Sender) -> None:
        assert env.chord is not None
        chord_id, index, size = env.chord["id"], int(env.chord["index"]), int(env.chord["size"])
        key = f"{chord_id}.m.{index}"
        if env.serializer == "cloudpickle":
            secret = self.deps.settings.secret_key
            doc: dict[str, Any] = pickle_value(value, secret, bind=key, what=key)
        else:
            doc = {"r": value}
        # A redelivery of this member finds its key there: its result is counted once.
        with contextlib.suppress(KeyExists):
            encoded = to_json(doc, what=f"the result of chord member {index}")
            await self._ride(self.store.create, key, encoded)
        if await self._ride(self.store.count_keys, f"{chord_id}.m.*") < size:
            return
        claim_key = f"{chord_id}.claim"
        claim = {"state": "claimed", "member": env.id, "at": time.time()}
        try:
            revision = await self._ride(self.store.create, claim_key, json.dumps(claim).encode())
        except KeyExists:  # also our own create, if its first answer was lost in an election
            entry = await self._ride(self.store.get, claim_key)
            if entry is None:
                return
            current = json.loads(entry.value)
            if current.get("state") != "claimed" or current.get("member") != env.id:
                return  # published, failed, or another member's claim
            revision = entry.revision  # our own earlier delivery claimed it and then died
        await self._publish_claimed(chord_id, size, claim, revision, send)

    async def _publish_claimed(
        self, chord_id: str, size: int, claim: dict[str, Any], revision: int, send: Sender
    ) -> None:
        """Send the callback of a claimed chord, then mark the claim published."""
        await self._send_callback(chord_id, size, send)
        claim.update(state="published", published=time.time())
        data = json.dumps(claim).encode()
        try:
            await self._ride(self.store.update, f"{chord_id}.claim", data, revision)
        except KeyExists:
            log.warning("claim of chord %s changed under us", chord_id)
        await self._ride(self.store.forget_count, f"{chord_id}.m.*")

    async def _meta(self, chord_id: str) -> dict[str, Any]:
        meta_entry = await self._ride(self.store.get, f"{chord_id}.meta")
        if meta_entry is None:
            raise InvalidError(
                f"chord {chord_id} has no record (expired after result_ttl, or never started): "
                "its callback cannot be sent"
            )
        meta: dict[str, Any] = json.loads(meta_entry.value)
        return meta

    async def _send_callback(self, chord_id: str, size: int, send: Sender) -> None:
        meta = await self._meta(chord_id)
        results: list[Any] = [None] * size
        read = set()
        secret = self.deps.settings.secret_key
        for entry in await self._ride(self.store.values, f"{chord_id}.m.*"):
            index = int(entry.key.rsplit(".", 1)[1])
            read.add(index)
            doc = json.loads(entry.value)
            if "pickle" in doc:
                results[index] = unpickle_value(doc, secret, bind=entry.key, raw=b"")
            else:
                results[index] = doc["r"]
        if len(read) != size:  # never call back with holes; the claimer's redelivery tries again
            missing = sorted(set(range(size)) - read)
            raise TransientError(
                f"chord {chord_id}: results of members {missing[:10]} not readable yet"
            )
        body = _body(meta, chord_id)
        notify = meta.get("notify") if isinstance(meta.get("notify"), str) else None
        await send(self.deps, body, (results,), parent_id=chord_id, notify=notify)
        log.info("chord %s complete (%d members): its callback is sent", chord_id, size)

    async def membership_failed(
        self,
        membership: dict[str, Any],
        failed_job: str,
        error: dict[str, str],
        notify: str | None,
        send: Sender,
    ) -> None:
        """The member ``membership`` of a chord failed for good: the chord fails, its callback
        never runs, and what was to follow the chord fails too."""
        chord_id, index = str(membership["id"]), int(membership["index"])
        claim = {"state": "failed", "member": failed_job, "at": time.time()}
        try:
            await self._ride(self.store.create, f"{chord_id}.claim", json.dumps(claim).encode())
        except KeyExists:
            entry = await self._ride(self.store.get, f"{chord_id}.claim")
            if entry is not None:
                current = json.loads(entry.value)
                if current.get("state") == "claimed":
                    # Every member had succeeded: the claimer died before sending the callback
                    # and this is a later delivery of a member (the claimer's own, say) failing
                    # for good. The chord is complete; send its callback rather than strand it.
                    log.warning("chord %s: finishing the claim of %s", chord_id, current["member"])
                    size = int(membership["size"])
                    await self._publish_claimed(chord_id, size, current, entry.revision, send)
            return  # already failed, or complete
        failure = {
            "type": error.get("type", "Error"),
            "message": f"chord member {index} ({failed_job}) failed: {error.get('message', '')}",
            "traceback": error.get("traceback", ""),
        }
        record = state_record(
            JobState.FAILURE, error=failure, failed_job=failed_job, finished=time.time()
        )
        try:
            body = _body(await self._meta(chord_id), chord_id)
        except InvalidError:
            body = None
        if body is None:
            await (await self.deps.result_backend()).write_final(chord_id, record, notify=notify)
        else:
            await self.abort(body, record, failure, failed_job, notify, send)
        await self._ride(self.store.forget_count, f"{chord_id}.m.*")

    async def abort(
        self,
        node: Node,
        record: bytes,
        error: dict[str, str],
        failed_job: str,
        notify: str | None,
        send: Sender,
    ) -> None:
        backend = await self.deps.result_backend()
        for task in nodes.task_nodes(node):
            await backend.write_final(nodes.job_id(task), record, notify=notify)
            if task.get("chord"):
                await self.membership_failed(task["chord"], failed_job, error, notify, send)


def _body(meta: dict[str, Any], chord_id: str) -> Node:
    """The callback node in a chord's record (a record of an older jsqueue has no job id in
    it: the chord's id is its callback's)."""
    body: Node = meta["callback"]
    if nodes.kind(body) == "task" and not (body.get("options") or {}).get("job_id"):
        body = {**body, "options": {**(body.get("options") or {}), "job_id": chord_id}}
    return body

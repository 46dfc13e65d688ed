"""Job states and results in a JetStream KV bucket, and the revocations written beside them.

One record per job id. Final outcomes (SUCCESS, FAILURE, DEAD, EXPIRED, REVOKED) are written
with KV ``create`` / ``update(last=revision)`` so that the first one recorded wins: a late duplicate
execution cannot overwrite it. Waiting is pushed, not polled: one watch of the bucket per app and
event loop serves every waiting ``AsyncResult.get`` (:mod:`jsqueue.services.handles`).
Revoking records REVOKED as the final state and adds the id to the ``<prefix>_revoked`` bucket,
which every worker watches (:class:`RevokedSet`).
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from jsqueue.envelope import pickle_value, to_json, unpickle_value
from jsqueue.errors import DecodeError, ResultTimeout, TaskFailed
from jsqueue.wire import Broker, KeyExists, KvStore

log = logging.getLogger("jsqueue.services.results")


class JobState(enum.StrEnum):
    """Where a job stands. PENDING means unknown or queued."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    RETRY = "RETRY"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    DEAD = "DEAD"
    EXPIRED = "EXPIRED"
    REVOKED = "REVOKED"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    def __str__(self) -> str:
        return self.value


FINAL_STATES = frozenset(
    {JobState.SUCCESS, JobState.FAILURE, JobState.DEAD, JobState.EXPIRED, JobState.REVOKED}
)


@dataclass(frozen=True)
class Outcome:
    """A decoded result record."""

    job_id: str
    state: JobState
    record: dict[str, Any]

    def value(self, secret_key: bytes | None) -> Any:
        """The return value, or raise :class:`TaskFailed` for a failed job."""
        if self.state is JobState.SUCCESS:
            if "pickle" in self.record:
                return unpickle_value(self.record, secret_key, bind=self.job_id, raw=b"")
            return self.record.get("result")
        error = self.record.get("error") or {}
        raise TaskFailed(
            str(self.record.get("failed_job", self.job_id)),
            str(error.get("type", self.state.value.title())),
            str(error.get("message", f"job is {self.state.value}")),
            str(error.get("traceback", "")),
            state=self.state.value,
        )


def parse_record(job_id: str, data: bytes) -> Outcome:
    try:
        record = json.loads(data)
        return Outcome(job_id, JobState(record["state"]), record)
    except (ValueError, KeyError, TypeError) as exc:
        raise DecodeError(f"result record of {job_id} is unreadable: {exc!r}", raw=data) from None


def success_record(
    job_id: str, value: Any, serializer: str, secret_key: bytes | None, **fields: Any
) -> bytes:
    """Encode a SUCCESS record; :class:`SerializeError` if the value cannot be."""
    record: dict[str, Any] = {"state": JobState.SUCCESS.value, **fields}
    what = f"the return value of {fields.get('task', 'the task')}"
    if serializer == "cloudpickle":
        record.update(pickle_value(value, secret_key, bind=job_id, what=what))
    else:
        record["result"] = value
    return to_json(record, what=what)


def state_record(state: JobState, **fields: Any) -> bytes:
    """Encode a record without a return value (STARTED, RETRY, FAILURE, DEAD, ...)."""
    return json.dumps({"state": state.value, **fields}, default=str).encode()


class ResultBackend:
    """The results bucket of one app in one event loop: writes, reads, and the shared watch."""

    def __init__(self, broker: Broker, store: KvStore) -> None:
        self.broker = broker
        self.store = store
        self._waiters: dict[str, list[asyncio.Future[Outcome]]] = {}
        self._unwatch: Callable[[], Any] | None = None
        self._watch_lock = asyncio.Lock()

    @classmethod
    async def open(cls, broker: Broker) -> ResultBackend:
        store = await broker.kv("results", ttl=broker.settings.result_ttl)
        backend = cls(broker, store)
        broker.on_reconnect(backend._recheck_waiters)
        return backend

    # -- writes ----------------------------------------------------------------------------

    async def write_final(self, job_id: str, data: bytes) -> Outcome | None:
        """Record a final outcome unless one is already recorded; return that one if so."""
        return await self.broker.riding_elections(self._write_final, job_id, data)

    async def _write_final(self, job_id: str, data: bytes) -> Outcome | None:
        try:
            await self.store.create(job_id, data)
            return None
        except KeyExists:
            pass
        while True:
            entry = await self.store.get(job_id)
            if entry is None:
                try:
                    await self.store.create(job_id, data)
                    return None
                except KeyExists:
                    continue
            current = parse_record(job_id, entry.value)
            if current.state.is_final:
                return current
            try:
                await self.store.update(job_id, data, last=entry.revision)
                return None
            except KeyExists:
                continue

    async def write_progress(self, job_id: str, data: bytes) -> bool:
        """Record STARTED or RETRY unless a final outcome is already there."""
        return await self.broker.riding_elections(self._write_progress, job_id, data)

    async def _write_progress(self, job_id: str, data: bytes) -> bool:
        while True:
            entry = await self.store.get(job_id)
            try:
                if entry is None:
                    await self.store.create(job_id, data)
                    return True
                if parse_record(job_id, entry.value).state.is_final:
                    return False
                await self.store.update(job_id, data, last=entry.revision)
                return True
            except KeyExists:
                continue

    # -- reads -----------------------------------------------------------------------------

    async def read(self, job_id: str) -> Outcome | None:
        entry = await self.broker.riding_elections(self.store.get, job_id)
        return None if entry is None else parse_record(job_id, entry.value)

    async def forget(self, job_id: str) -> None:
        await self.store.delete(job_id)

    async def wait(self, job_id: str, timeout: float | None) -> Outcome:
        """The final outcome of ``job_id``, pushed by the shared watch."""
        await self._ensure_watch()
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(future)
        try:
            current = await self.read(job_id)  # it may have finished before we watched
            if current is not None and current.state.is_final:
                return current
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise ResultTimeout(f"job {job_id} has no outcome after {timeout}s") from None
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.remove(future)
                if not waiters:
                    del self._waiters[job_id]

    @property
    def waiting(self) -> int:
        """How many ``get()`` calls are waiting (for tests of bounded memory)."""
        return sum(len(w) for w in self._waiters.values())

    @property
    def watching(self) -> bool:
        """Whether the shared watch of the bucket is open."""
        return self._unwatch is not None

    async def _ensure_watch(self) -> None:
        if self._unwatch is not None:
            return
        async with self._watch_lock:
            if self._unwatch is None:
                self._unwatch = await self.broker.riding_elections(
                    self.store.watch_new, self._on_update
                )

    async def _on_update(self, key: str, value: bytes | None, revision: int) -> None:
        waiters = self._waiters.get(key)
        if not waiters or value is None:
            return
        try:
            outcome = parse_record(key, value)
        except DecodeError as exc:
            log.warning("%s", exc)
            return
        if outcome.state.is_final:
            for future in waiters:
                if not future.done():
                    future.set_result(outcome)

    async def _recheck_waiters(self) -> None:
        """After a reconnect, read every awaited record in case an update was missed."""
        for job_id in list(self._waiters):
            try:
                outcome = await self.read(job_id)
            except Exception as exc:  # a second outage: the next reconnect rechecks
                log.debug("recheck of %s failed: %r", job_id, exc)
                return
            if outcome is not None:
                await self._on_update(job_id, json.dumps(outcome.record).encode(), 0)

    # -- revocation ---------------------------------------------------------------------------

    async def revocations(self) -> KvStore:
        """The ``<prefix>_revoked`` bucket that every worker watches."""
        return await self.broker.kv("revoked", ttl=self.broker.settings.result_ttl)

    async def revoke(self, job_id: str, *, terminate: bool = False) -> bool:
        """Revoke ``job_id``; False (and nothing changed) if it had already finished.

        REVOKED becomes its final state, its id goes to the revoked bucket (a worker that
        receives it acks it without running it), and a schedule not yet fired is purged. With
        ``terminate``, a worker running the job stops it: it kills the job's pool child or
        cancels its coroutine; a ``def`` task in a thread cannot be stopped and runs on.
        """
        record = state_record(JobState.REVOKED, revoked_at=time.time())
        existing = await self.write_final(job_id, record)
        if existing is not None and existing.state is not JobState.REVOKED:
            log.info("job %s already finished (%s); revoke changes nothing", job_id, existing.state)
            return False
        note = {"at": time.time(), "terminate": terminate}
        await (await self.revocations()).put(job_id, json.dumps(note).encode())
        s = self.broker.settings
        await self.broker.streams.purge(s.jobs_stream, s.schedule_subject("*", job_id))
        return True

    async def close(self) -> None:
        unwatch, self._unwatch = self._unwatch, None
        if unwatch is not None:
            try:
                await unwatch()
            except Exception as exc:  # closing a dead connection
                log.debug("unwatch failed: %r", exc)


def _wants_terminate(value: bytes) -> bool:
    try:
        note = json.loads(value)
    except ValueError:
        return False  # an older record: a bare time
    return isinstance(note, dict) and note.get("terminate") is True


class RevokedSet:
    """The ids of revoked jobs, kept current by a watch of the revoked bucket (for workers)."""

    def __init__(self, on_terminate: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.ids: set[str] = set()
        self._unwatch: Callable[[], Awaitable[None]] | None = None
        self._on_terminate = on_terminate

    async def start(self, backend: ResultBackend) -> None:
        store = await backend.revocations()

        async def on_update(key: str, value: bytes | None, revision: int) -> None:
            if value is None:
                self.ids.discard(key)
                return
            self.ids.add(key)
            if self._on_terminate is not None and _wants_terminate(value):
                await self._on_terminate(key)

        self._unwatch = await store.watch_new(on_update, replay=True)

    async def stop(self) -> None:
        """Stop watching (a worker that ends, or starts again on a new connection)."""
        unwatch, self._unwatch = self._unwatch, None
        if unwatch is not None:
            try:
                await unwatch()
            except Exception as exc:  # the connection is gone already
                log.debug("unwatching revoked jobs failed: %r", exc)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.ids

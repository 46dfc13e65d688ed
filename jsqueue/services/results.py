"""Job states and results in a JetStream KV bucket, and the revocations written beside them.

One record per job id (see :mod:`jsqueue.services.records`). Final outcomes (SUCCESS, FAILURE,
DEAD, EXPIRED, REVOKED) are written with KV ``create`` / ``update(last=revision)`` so that the
first one recorded wins: a late duplicate execution cannot overwrite it. Whoever writes a final
record tells the job's sender (:mod:`jsqueue.services.waiting`); a record too large for the bucket
lives in the object store, named in a small record.
Revoking records REVOKED as the final state and adds the id to the ``<prefix>_revoked`` bucket,
which every worker watches (:class:`RevokedSet`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from jsqueue.envelope import decode
from jsqueue.errors import DecodeError, JsqueueError
from jsqueue.services.records import (
    FINAL_STATES,
    JobState,
    Outcome,
    parse_record,
    state_record,
    success_record,
)
from jsqueue.services.waiting import Waiters
from jsqueue.wire import Broker, KeyExists, KvStore, PendingCreate

__all__ = [
    "FINAL_STATES",
    "JobState",
    "Outcome",
    "ResultBackend",
    "RevokedSet",
    "parse_record",
    "state_record",
    "success_record",
]

log = logging.getLogger("jsqueue.services.results")
#: room a notice leaves below the server's max_payload (its subject and framing)
_NOTICE_SLACK = 512


class ResultBackend:
    """The results bucket of one app in one event loop: writes, reads, and the shared watch."""

    def __init__(self, broker: Broker, store: KvStore) -> None:
        self.broker = broker
        self.store = store
        self.waiters = Waiters(self)

    @classmethod
    async def open(cls, broker: Broker) -> ResultBackend:
        store = await broker.kv("results", ttl=broker.settings.result_ttl)
        backend = cls(broker, store)
        broker.on_reconnect(backend.waiters.recheck)
        return backend

    # -- writes ----------------------------------------------------------------------------

    async def write_final(
        self, job_id: str, data: bytes, *, notify: str | None = None
    ) -> Outcome | None:
        """Record a final outcome unless one is already recorded; return that one if so.

        ``notify`` (a job's notify subject) is told the outcome that stands, ours or the one
        before it.
        """
        existing = await self.broker.riding_elections(self._write_final, job_id, data)
        if notify is not None:
            winner = data if existing is None else json.dumps(existing.record).encode()
            await self.notify(notify, job_id, winner)
        return existing

    async def send_final(self, job_id: str, data: bytes) -> PendingCreate:
        """The first try of :meth:`write_final`, sent without waiting: awaiting what it gives
        says whether ``data`` was recorded (None: a record is there; call :meth:`write_final`).
        Its sender is not told; :meth:`notify` does that once it stands."""
        return await self.store.send_create(job_id, data)

    async def notify(self, subject: str, job_id: str, record: bytes) -> None:
        """Tell a waiting process that ``job_id`` has this final record (best effort: its
        waits also re-read the key)."""
        await self._send_notice(subject, [job_id.encode() + b"\n" + record])

    async def notify_all(self, subject: str, records: list[tuple[str, bytes]]) -> None:
        """:meth:`notify` for several jobs of one sender: as few notices as fit its payload
        limit, each ``<id>\n<record>`` pairs joined by newlines."""
        limit = self.broker.max_payload - _NOTICE_SLACK
        notice: list[bytes] = []
        size = 0
        for job_id, record in records:
            pair = job_id.encode() + b"\n" + record
            if notice and size + len(pair) + 1 > limit:
                await self._send_notice(subject, notice)
                notice, size = [], 0
            notice.append(pair)
            size += len(pair) + 1
        if notice:
            await self._send_notice(subject, notice)

    async def _send_notice(self, subject: str, pairs: list[bytes]) -> None:
        try:
            await self.broker.publish_core(subject, b"\n".join(pairs))
        except JsqueueError as exc:
            log.debug("notifying %s of %d job(s) failed: %s", subject, len(pairs), exc)

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

    async def add_to_started(self, job_id: str, started: dict[str, Any], **fields: Any) -> bool:
        """Add ``fields`` (a progress report) to the STARTED record of the run ``started``
        describes (``task``, ``attempts``, ``worker``, ``at``), writing that record if there is
        none (without ``track_started``); False, changing nothing, once the job has moved on
        (finished, retrying, another attempt or worker)."""
        return await self.broker.riding_elections(self._add_to_started, job_id, started, fields)

    async def _add_to_started(
        self, job_id: str, started: dict[str, Any], fields: dict[str, Any]
    ) -> bool:
        mine = {"state": JobState.STARTED.value, **started}
        while True:
            entry = await self.store.get(job_id)
            try:
                if entry is None:
                    await self.store.create(job_id, json.dumps({**mine, **fields}).encode())
                    return True
                current = parse_record(job_id, entry.value)
                record = current.record
                earlier = record.get("attempts")
                if current.state.is_final:
                    return False
                if isinstance(earlier, int) and earlier < started["attempts"]:
                    record = dict(mine)  # an earlier attempt's RETRY or STARTED: this run now
                elif any(record.get(k) != v for k, v in mine.items() if k != "at"):
                    return False  # another run's record
                record.update(fields)
                await self.store.update(job_id, json.dumps(record).encode(), last=entry.revision)
                return True
            except KeyExists:
                continue  # changed under us: look again

    # -- reads -----------------------------------------------------------------------------

    async def read(self, job_id: str) -> Outcome | None:
        entry = await self.broker.riding_elections(self.store.get, job_id)
        return None if entry is None else parse_record(job_id, entry.value)

    async def read_many(self, pattern: str) -> dict[str, Outcome]:
        """Every record whose job id matches ``pattern`` (``<group id>.*``), in one read."""
        entries = await self.broker.riding_elections(self.store.values, pattern)
        return {e.key: parse_record(e.key, e.value) for e in entries}

    async def forget(self, job_id: str) -> None:
        await self.store.delete(job_id)

    async def wait(self, job_id: str, timeout: float | None, *, notified: bool = False) -> Outcome:
        """The final outcome of ``job_id`` (see :mod:`jsqueue.services.waiting`), with a large
        record loaded from the object store."""
        outcome = await self.waiters.wait(job_id, timeout, notified=notified)
        return await self.resolve(outcome, timeout)

    async def resolve(self, outcome: Outcome, timeout: float | None = None) -> Outcome:
        """``outcome`` with its record loaded from the object store if it was too large for
        the bucket; :class:`JsqueueError` if that object is gone."""
        name = outcome.record.get("object")
        if outcome.state is not JobState.SUCCESS or not isinstance(name, str):
            return outcome
        data = await (await self.broker.objects()).get(name, timeout)
        if data is None:
            raise JsqueueError(
                f"the result of job {outcome.job_id} was stored as object {name}, which is gone "
                f"(objects are kept for result_ttl, {self.broker.settings.result_ttl:g}s)"
            )
        return parse_record(outcome.job_id, data)

    @property
    def waiting(self) -> int:
        """How many ``get()`` calls are waiting (for tests of bounded memory)."""
        return self.waiters.waiting

    @property
    def watching(self) -> bool:
        """Whether this process listens for the outcomes of the jobs it sent."""
        return self.waiters.listening

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
        scheduled = None
        # a delayed job, or one waiting out a long retry: its schedule is purged
        for subject in (s.schedule_subject("*", job_id), s.retry_subject("*", job_id)):
            found = await self.broker.streams.get(s.jobs_stream, 1, subject=subject, next_=True)
            if found is not None:
                scheduled = found
                await self.broker.streams.purge(s.jobs_stream, subject)
        if scheduled is not None:  # no worker will see it: tell its sender here
            try:
                notify = decode(scheduled.data, s.secret_key).notify
            except DecodeError:
                notify = None
            if notify is not None:
                await self.notify(notify, job_id, record)
        return True

    async def close(self) -> None:
        await self.waiters.close()


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

"""Revoking jobs: a queued or delayed job that must never run.

``await job.revoke()`` records REVOKED as the job's final state (unless it already has an
outcome, which stays), adds its id to the ``<prefix>_revoked`` bucket that every worker watches,
and purges a not-yet-fired schedule so a delayed job never fires at all. A worker that receives a
revoked job acks it without running it. A job already running is not interrupted, unless
``terminate=True``: then the worker running it kills its pool child or cancels its coroutine.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from jsqueue.results import JobState, state_record

if TYPE_CHECKING:
    from jsqueue.app import App
    from jsqueue.kvstore import KvStore

log = logging.getLogger("jsqueue.revoke")


async def _bucket(app: App) -> KvStore:
    broker = await app.broker()
    return await broker.kv("revoked", ttl=app.settings.result_ttl)


async def revoke(app: App, job_id: str, *, terminate: bool = False) -> bool:
    """Revoke ``job_id``; False (and nothing changed) if it had already finished.

    With ``terminate``, a worker running the job stops it: it kills the job's child (process
    pool) or cancels its coroutine; a ``def`` task in a thread cannot be stopped and runs on.
    """
    backend = await app.result_backend()
    record = state_record(JobState.REVOKED, revoked_at=time.time())
    existing = await backend.write_final(job_id, record)
    if existing is not None and existing.state is not JobState.REVOKED:
        log.info("job %s already finished (%s); revoke changes nothing", job_id, existing.state)
        return False
    note = {"at": time.time(), "terminate": terminate}
    await (await _bucket(app)).put(job_id, json.dumps(note).encode())
    broker = await app.broker()
    s = app.settings
    await broker.purge_stream(s.jobs_stream, s.schedule_subject("*", job_id))
    return True


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

    async def start(self, app: App) -> None:
        store = await _bucket(app)

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

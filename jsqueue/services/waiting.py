"""Waiting for outcomes: each waiting process receives the outcomes it waits for, not all.

A job sent by this process names the process's notify subject (``<prefix>.notify.<token>``);
after recording a final outcome the worker publishes a small core-NATS notice there (the job id
and its record). One subscription per process serves every waiting ``get()``. A handle rebuilt by
id elsewhere (a web request that only has the id) did not send the job, so it watches that one
key instead. The KV record stays the truth: every wait reads the key once after it starts
listening (the job may have finished before), again after a reconnect, and again every
``RECHECK_EVERY`` seconds in case a notice was lost on the worker's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from jsqueue.errors import DecodeError, ResultTimeout
from jsqueue.services.records import Outcome, parse_record
from jsqueue.wire import Broker, KvStore

log = logging.getLogger("jsqueue.results")

#: Seconds between the safety re-reads of a key that is waited for.
RECHECK_EVERY = 30.0


class Store(Protocol):
    """What waiting reads: the result bucket (:class:`jsqueue.services.results.ResultBackend`)."""

    broker: Broker
    store: KvStore

    async def read(self, job_id: str) -> Outcome | None: ...


class Waiters:
    """The futures of one app's waiting ``get()`` calls in one event loop."""

    def __init__(self, backend: Store) -> None:
        self.backend = backend
        self._futures: dict[str, list[asyncio.Future[Outcome]]] = {}
        self._watches: dict[str, Callable[[], Awaitable[None]]] = {}
        self._listening: Callable[[], Awaitable[None]] | None = None
        self._lock = asyncio.Lock()
        #: notices and watched updates received (to show that a process gets only its own)
        self.received = 0

    @property
    def waiting(self) -> int:
        return sum(len(f) for f in self._futures.values())

    @property
    def listening(self) -> bool:
        return self._listening is not None

    async def wait(self, job_id: str, timeout: float | None, *, notified: bool) -> Outcome:
        """The final outcome of ``job_id``; ``notified``: this process sent the job, so its
        worker notifies this process (else the key is watched)."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._futures.setdefault(job_id, []).append(future)
        try:
            if notified:
                await self._listen()
            else:
                await self._watch(job_id)
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            while True:
                current = await self.backend.read(job_id)
                if current is not None and current.state.is_final:
                    return current
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    raise ResultTimeout(f"job {job_id} has no outcome after {timeout}s")
                step = RECHECK_EVERY if left is None else min(left, RECHECK_EVERY)
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(future), step)
        finally:
            futures = self._futures.get(job_id)
            if futures is not None:
                futures.remove(future)
                if not futures:
                    del self._futures[job_id]
                    await self._unwatch(job_id)

    async def _listen(self) -> None:
        if self._listening is not None:
            return
        async with self._lock:
            if self._listening is None:
                broker = self.backend.broker
                self._listening = await broker.subscribe_core(
                    broker.notify_subject, self._on_notice
                )

    async def _watch(self, job_id: str) -> None:
        if job_id not in self._watches:
            watching = functools.partial(
                self.backend.store.watch_new, self._on_key, replay=True, key=job_id
            )
            self._watches[job_id] = await self.backend.broker.riding_elections(watching)

    async def _unwatch(self, job_id: str) -> None:
        unwatch = self._watches.pop(job_id, None)
        if unwatch is not None:
            try:
                await unwatch()
            except Exception as exc:  # a dead connection: the consumer expires by itself
                log.debug("unwatching %s failed: %r", job_id, exc)

    async def _on_notice(self, subject: str, data: bytes) -> None:
        self.received += 1
        lines = data.split(b"\n")  # <id>\n<record> pairs (ids and compact JSON hold no newline)
        for i in range(0, len(lines) - 1, 2):
            self.deliver(lines[i].decode(errors="replace"), lines[i + 1])

    async def _on_key(self, key: str, value: bytes | None, revision: int) -> None:
        self.received += 1
        if value is not None:
            self.deliver(key, value)

    def deliver(self, job_id: str, record: bytes) -> None:
        """A record of ``job_id`` arrived: a final one ends its waits."""
        futures = self._futures.get(job_id)
        if not futures:
            return
        try:
            outcome = parse_record(job_id, record)
        except DecodeError as exc:
            log.warning("%s", exc)
            return
        if outcome.state.is_final:
            for future in futures:
                if not future.done():
                    future.set_result(outcome)

    async def recheck(self) -> None:
        """After a reconnect, read every awaited record in case a notice was missed."""
        for job_id in list(self._futures):
            try:
                outcome = await self.backend.read(job_id)
            except Exception as exc:  # a second outage: the next reconnect rechecks
                log.debug("recheck of %s failed: %r", job_id, exc)
                return
            if outcome is not None and outcome.state.is_final:
                for future in self._futures.get(job_id, []):
                    if not future.done():
                        future.set_result(outcome)

    async def close(self) -> None:
        listening, self._listening = self._listening, None
        for unwatch in [*self._watches.values(), *([listening] if listening else [])]:
            try:
                await unwatch()
            except Exception as exc:  # closing a dead connection
                log.debug("unwatch failed: %r", exc)
        self._watches.clear()

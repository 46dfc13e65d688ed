"""JetStream publishes with many acks in flight, for less than nats-py's ``publish_async``.

Every publish carries a reply subject under one inbox wildcard subscription; the server's ack
resolves a future. Per message that is one dict entry, one future and one ``nc.publish``: no
timer, no semaphore task, no callback, no dataclass per ack. Time-outs are generational: every
half ``timeout`` the futures of the generation before last that are still unanswered fail with
:class:`TimeoutError`, so a future waits between ``timeout`` and 1.5 x ``timeout``. Part of the
wire package; public nats-py API only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, NamedTuple

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from jsqueue.compact import read_object

_STATUS = "Status"


class Ack(NamedTuple):
    """The server's answer to one publish."""

    stream: str
    seq: int
    duplicate: bool


class AckedPublisher:
    """Publishes and hands back a future of the server's :class:`Ack` (or its error)."""

    def __init__(self, nc: NatsClient, timeout: float) -> None:
        self._nc = nc
        self._timeout = timeout
        self._prefix = ""
        self._sub: Any = None
        # token -> (future, subject); the subject lets a refused publish fail at once
        self._young: dict[str, tuple[asyncio.Future[Ack], str]] = {}
        self._old: dict[str, tuple[asyncio.Future[Ack], str]] = {}
        self._next = 0
        self._ager: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox() + "."
        self._sub = await self._nc.subscribe(
            self._prefix + "*", cb=self._on_reply, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        self._ager = asyncio.get_running_loop().create_task(self._age())

    @property
    def in_flight(self) -> int:
        return len(self._young) + len(self._old)

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None
    ) -> asyncio.Future[Ack]:
        """Send one message; the future resolves when the server stored it, or fails with the
        server's error, or with :class:`TimeoutError` when no answer came in time."""
        self._next += 1
        token = str(self._next)
        future: asyncio.Future[Ack] = asyncio.get_running_loop().create_future()
        self._young[token] = (future, subject)
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
        except BaseException:
            self._young.pop(token, None)
            raise
        return future

    async def _age(self) -> None:
        while True:
            await asyncio.sleep(self._timeout / 2)
            expired, self._old, self._young = self._old, self._young, {}
            for future, _ in expired.values():
                if not future.done():
                    future.set_exception(TimeoutError("no publish ack in time"))

    def refuse(self, subject: str, error: Exception) -> None:
        """The server refused publishing to ``subject`` (a permission): fail what waits on it
        now instead of at its time-out. Compared without case: nats-py lowercases the error."""
        subject = subject.lower()
        for pending in (self._young, self._old):
            for token, (future, sent_to) in list(pending.items()):
                if sent_to.lower() == subject:
                    del pending[token]
                    if not future.done():
                        future.set_exception(error)

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject[len(self._prefix) :]
        pending = self._young.pop(token, None) or self._old.pop(token, None)
        if pending is None or pending[0].done():
            return
        future = pending[0]
        headers = msg.headers
        if headers and headers.get(_STATUS) == "503":
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        doc = read_object(msg.data)
        if doc is None:
            try:
                doc = json.loads(msg.data)
            except ValueError:
                future.set_exception(nats.errors.Error(f"nats: bad publish ack {msg.data[:100]!r}"))
                return
        error = doc.get("error")
        if error:
            try:
                nats.js.errors.APIError.from_error(error)  # raises the matching error type
            except nats.js.errors.APIError as exc:
                future.set_exception(exc)
            return
        ack = Ack(doc.get("stream", ""), int(doc.get("seq", 0)), bool(doc.get("duplicate")))
        future.set_result(ack)

    async def close(self) -> None:
        if self._ager is not None:
            self._ager.cancel()
            self._ager = None
        for future, _ in (*self._young.values(), *self._old.values()):
            future.cancel()
        self._young.clear()
        self._old.clear()
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None

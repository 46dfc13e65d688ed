"""A pull loop on one durable consumer that never asks for more jobs than it may start.

Instead of nats-py's ``fetch()`` (an asyncio task and a timer per message), the puller keeps a
callback subscription on an inbox and sends ``CONSUMER.MSG.NEXT`` requests for exactly the slots the
worker has free, refilling when half are free. Its traps, each handled here: status messages (408
expired, 409 conflicts) give back their pending count; after a reconnect or silence past the idle
heartbeat the count is reset and requests re-issued; at shutdown it stops asking and hands back
whatever still arrives, so the worker can nak it at once instead of leaving it to ``ack_wait``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg

from jsqueue.config import PRIORITY_NORMAL
from jsqueue.wire.connection import Connection
from jsqueue.wire.errors import NATS_ERRORS, translate, translated
from jsqueue.wire.provision import Provisioner

log = logging.getLogger("jsqueue.wire.pull")

_ACK, _NAK, _WPI, _TERM = b"+ACK", b"-NAK", b"+WPI", b"+TERM"
_STATUS = "Status"
_DESCRIPTION = "Description"
_PENDING_MSGS = "Nats-Pending-Messages"
#: the header that carries how many times a re-published job already ran (a long retry moved
#: onto a schedule, a job handed back while its queue is paused)
ATTEMPT_HEADER = "Jsq-Attempt"


class Delivery:
    """One delivery of a job message; it owns ack, nak, in_progress and term.

    It holds the message's parts as plain values (no nats-py message), and settles by
    publishing the JetStream acknowledgement to the message's reply subject, as every client
    does; a leaner message path can build it straight from what the subscription received.
    """

    __slots__ = (
        "_connection",
        "attempt",
        "carried",
        "data",
        "delivered",
        "headers",
        "priority",
        "queue",
        "received",
        "reply",
        "settled",
        "stream_seq",
        "subject",
    )

    def __init__(
        self,
        connection: Connection,
        queue: str,
        subject: str,
        reply: str,
        data: bytes,
        headers: dict[str, str] | None,
        priority: int = PRIORITY_NORMAL,
        received: float | None = None,
    ) -> None:
        self._connection = connection
        self.queue = queue
        #: the priority level of the consumer it came from
        self.priority = priority
        self.subject = subject
        self.reply = reply
        self.data = data
        if headers is None:
            headers = {}
        self.headers: dict[str, str] = headers
        #: when it arrived (monotonic); the puller passes the time it read for the message
        self.received = time.monotonic() if received is None else received
        self.settled = False
        #: which delivery of this message this is (1 = first), counted by the server. From
        #: the ack subject, short ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>...`` (9
        #: tokens) or long, with domain and account hash (two more tokens before the stream).
        #: Cheaper than ``Msg.metadata``, which also builds a datetime per message.
        tokens = reply.split(".")
        if len(tokens) == 9:
            self.delivered, self.stream_seq = int(tokens[4]), int(tokens[5])
        else:
            self.delivered, self.stream_seq = int(tokens[6]), int(tokens[7])
        #: runs of the job before this message was published (0 unless re-published)
        self.carried = 0 if ATTEMPT_HEADER not in headers else _carried(headers)
        #: which run of the job this is (1 = first): across worker crashes and re-publishing
        self.attempt = self.carried + self.delivered

    async def ack(self) -> None:
        if self.settled:
            return
        try:  # the hot path: one publish, no wrapper (see _settle)
            await self._connection.nc.publish(self.reply, _ACK)
        except NATS_ERRORS as exc:
            raise translate(exc) from None
        self.settled = True

    @translated
    async def nak(self, delay: float = 0.0) -> None:
        """Give the job back; the server redelivers it after ``delay`` seconds."""
        if delay > 0:
            await self._settle(_NAK + b' {"delay": %d}' % int(delay * 1e9))
        else:
            await self._settle(_NAK)

    @translated
    async def in_progress(self) -> None:
        """Reset the server's ack timer: the job is still running."""
        if not self.settled:
            await self._connection.publish(self.reply, _WPI)

    @translated
    async def term(self) -> None:
        """Tell the server never to deliver this job again (it leaves the work queue)."""
        await self._settle(_TERM)

    async def _settle(self, body: bytes) -> None:
        if self.settled:
            return
        await self._connection.publish(self.reply, body)
        self.settled = True


def _carried(headers: dict[str, str]) -> int:
    value = headers.get(ATTEMPT_HEADER)
    if value is None:
        return 0
    try:
        return max(0, int(value))
    except ValueError:
        return 0  # not ours to trust: count from this message


class Puller:
    """Pulls jobs of one queue for a worker that has ``capacity`` slots.

    ``on_delivery`` is called (synchronously, on the event loop) for each job, ``on_late`` for a
    job that arrives after :meth:`stop_pulling`; the worker calls :meth:`release` once it has
    settled a job.
    """

    def __init__(
        self,
        connection: Connection,
        provisioner: Provisioner,
        queue: str,
        consumer: str,
        capacity: int,
        on_delivery: Callable[[Delivery], None],
        on_late: Callable[[Delivery], None],
        *,
        priority: int = PRIORITY_NORMAL,
        expires: float = 30.0,
        idle_heartbeat: float = 5.0,
    ) -> None:
        self.connection = connection
        self.provisioner = provisioner
        self.queue = queue
        self.priority = priority
        #: how many jobs it may hold and have requested at once (the worker may change it)
        self.capacity = capacity
        #: nothing came during a whole request's lifetime: there is no work for it now (it starts
        #: so, and the first delivery says otherwise)
        self.idle = True
        self._last_delivery = 0.0
        #: called when ``idle`` changes (the worker lends slots to the queues that have work)
        self.on_idle_change: Callable[[], None] | None = None
        #: how many more jobs the worker may hold, all its pullers together (None: no bound)
        self.room: Callable[[], int] | None = None
        self._on_delivery = on_delivery
        self._on_late = on_late
        stream = provisioner.settings.jobs_stream
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._expires = expires
        self._heartbeat = min(idle_heartbeat, expires / 2)  # the server wants it below expires
        self._inbox = ""
        self._sub: Any = None  # nats-py's Subscription, untyped
        self.held = 0  # slots in use: delivered to the worker and not yet released
        self.outstanding = 0  # requested from the server and not yet delivered
        #: pull requests sent (a caller that sees it grow may let the loop send it now)
        self.requests = 0
        self._stopping = False
        self._last_heard = time.monotonic()
        self._watchdog: asyncio.Task[None] | None = None
        self._silent = False

    @property
    def free(self) -> int:
        return self.capacity - self.held - self.outstanding

    @property
    def _refill_at(self) -> int:
        return max(1, self.capacity // 2)

    def _set_idle(self, idle: bool) -> None:
        if idle != self.idle:
            self.idle = idle
            if self.on_idle_change is not None:
                self.on_idle_change()

    @translated
    async def start(self) -> None:
        self._inbox = self.connection.new_inbox()
        self._sub = await self.connection.subscribe(self._inbox, self._on_msg)
        self.connection.on_reconnect(self.reset)
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        await self._pull()

    async def _on_msg(self, msg: Msg) -> None:
        self._last_heard = now = time.monotonic()
        headers = msg.headers
        reply = msg.reply
        if headers and _STATUS in headers and not reply:
            await self._on_status(headers)
            return
        outstanding = self.outstanding
        self.outstanding = outstanding - 1 if outstanding > 0 else 0
        self.held += 1
        delivery = Delivery(
            self.connection, self.queue, msg.subject, reply, msg.data, headers, self.priority, now
        )
        self._last_delivery = now
        if self.idle:
            self._set_idle(False)
        if self._stopping:
            self._on_late(delivery)
            return
        self._on_delivery(delivery)

    async def _on_status(self, headers: dict[str, str]) -> None:
        status = headers.get(_STATUS, "")
        if status == "100":  # idle heartbeat: the request is alive
            return
        description = headers.get(_DESCRIPTION, "")
        if status in ("408", "409") and "Server Shutdown" not in description:
            pending = int(headers.get(_PENDING_MSGS, "0") or 0)
            self.outstanding = max(0, self.outstanding - pending)
            if status == "408" and self._last_heard - self._last_delivery >= self._expires:
                self._set_idle(True)  # it asked, waited a request's lifetime, and nothing came
            if status == "409":
                log.debug("pull on %s answered 409 %s", self.queue, description)
            if "Consumer Deleted" in description:
                log.warning("consumer of queue %s was deleted; recreating it", self.queue)
                self.outstanding = 0
                self.provisioner.forget_consumer(self.queue, self.priority)
                try:
                    await self.provisioner.consumer(self.queue, self.priority)
                except Exception as exc:  # an outage: the watchdog pulls again
                    log.warning("recreating the consumer of %s failed: %s", self.queue, exc)
            await self._pull()
        elif status == "404":
            self.outstanding = 0
        # 409 Server Shutdown: the reconnect handler resets and pulls again.

    async def release(self, count: int = 1) -> None:
        """Slots came free (jobs settled); ask for more when half the capacity is free."""
        self.held -= count
        await self.refill()

    @property
    def wants_more(self) -> bool:
        """Whether :meth:`refill` would ask: half the capacity is free, or all of it."""
        capacity, held, outstanding = self.capacity, self.held, self.outstanding
        free = capacity - held - outstanding
        return free >= (capacity // 2 or 1) or (outstanding == held == 0 < free)

    async def refill(self) -> None:
        """Ask for more if half the capacity is free (after :attr:`capacity` changed, say)."""
        if self.wants_more:
            await self._pull()

    async def _pull(self) -> None:
        want = self.free if self.room is None else min(self.free, self.room())
        if want <= 0 or self._stopping or not self.connection.is_connected:
            return
        request = {
            "batch": want,
            "expires": int(self._expires * 1e9),
            "idle_heartbeat": int(self._heartbeat * 1e9),
        }
        self.outstanding += want
        try:
            await self.connection.publish(
                self._next_subject, json.dumps(request).encode(), reply=self._inbox
            )
            self.requests += 1
        except Exception as exc:  # disconnected: the reconnect handler pulls again
            self.outstanding -= want
            log.debug("pull request for %s not sent: %r", self.queue, exc)

    async def reset(self) -> None:
        """Forget outstanding requests (they died with the connection) and ask again."""
        self.outstanding = 0
        self._last_heard = time.monotonic()
        await self._pull()

    async def _watch(self) -> None:
        """Re-pull when the server has been silent past two heartbeats while we wait on it."""
        while not self._stopping:
            await asyncio.sleep(self._heartbeat)
            silent_for = time.monotonic() - self._last_heard
            if self.outstanding > 0 and silent_for > 2 * self._heartbeat + 1:
                if not self._silent:
                    log.warning(
                        "no heartbeat from NATS for %.0fs on queue %s; pulling again",
                        silent_for,
                        self.queue,
                    )
                    self._silent = True
                await self.reset()
            elif silent_for <= 2 * self._heartbeat + 1:
                self._silent = False

    def stop_pulling(self) -> None:
        """Ask for nothing more; deliveries still arriving go to ``on_late``."""
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()

    async def close(self) -> None:
        """Stop pulling and close the inbox; jobs already received still reach ``on_late``.

        After this returns the server has seen the unsubscribe, so it drops our open pull
        requests instead of delivering to them.
        """
        self.stop_pulling()
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.drain()
            except Exception as exc:  # the connection may be gone already
                log.debug("closing the inbox of %s failed: %r", self.queue, exc)

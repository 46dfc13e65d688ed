"""``jsqueue beat``: periodic jobs that never double-fire, even with several beats running.

One beat holds a leader lease (a key in the ``beat_lease`` bucket whose TTL is ``lease_ttl``;
the leader renews it with ``update(last=revision)``); the others wait and take over within
about ``lease_ttl`` after the leader dies. For each tick the leader:

1. claims it with KV ``create`` of ``<entry>.<unix tick>`` in ``beat_ticks`` (one winner, even
   if two beats believe they lead, and it survives server restarts, unlike Msg-Id dedupe),
2. publishes the job with id ``beat.<entry>.<unix tick>``,
3. marks the claim published and records the tick as the entry's last (``beat_state``).

A new leader first publishes any claim left unpublished (same id), then fires what was missed:
every tick missed in the last ``4 * lease_ttl + 10`` seconds (a leader change, with the elections
a NATS cluster may hold meanwhile, or a short outage), and for longer downtime the entry's
catch-up policy. A leader whose lease was not renewed within its TTL fires nothing until it has
renewed it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass

from jsqueue.app import App, PeriodicEntry
from jsqueue.errors import ConfigError, JsqueueError
from jsqueue.schedule import to_fire
from jsqueue.services.producer import send
from jsqueue.wire import KeyExists, KvStore

log = logging.getLogger("jsqueue.beat")

LEASE_KEY = "leader"


@dataclass
class _Stores:
    lease: KvStore
    ticks: KvStore
    state: KvStore


class Beat:
    """Sends the app's periodic entries. See :func:`run_beat`."""

    def __init__(
        self,
        app: App,
        *,
        lease_ttl: float = 10.0,
        catch_up_window: float | None = None,
        beat_id: str | None = None,
    ) -> None:
        if lease_ttl < 1:
            raise ConfigError(f"lease_ttl must be at least 1 second, not {lease_ttl!r}")
        self._window = catch_up_window
        self.app = app
        self.lease_ttl = lease_ttl
        self.id = beat_id or f"{socket.gethostname()}-{os.getpid()}"
        self.entries = dict(app.periodic)
        self.fired = 0
        self._stop = asyncio.Event()
        self._lease_revision: int | None = None
        self._taken_over = False
        self._renewed_at = 0.0
        self._next: dict[str, int] = {}
        self._stores: _Stores | None = None
        self.became_leader = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self._lease_revision is not None

    @property
    def recent(self) -> float:
        """Ticks younger than this are sent even when missed: a leader change (including the
        elections a NATS cluster holds meanwhile) or a short outage, not downtime."""
        return self._window if self._window is not None else 4 * self.lease_ttl + 10

    def stop(self) -> None:
        self._stop.set()

    async def run(self, wait_for_server: float = 0.0) -> None:
        """Run until :meth:`stop`: lead or stand by, and fire ticks while leading."""
        if not self.entries:
            raise JsqueueError(f"app {self.app.name} has no periodic entries (app.add_periodic)")
        await self.app.connect(wait=wait_for_server)
        broker = await self.app.broker()
        self._stores = _Stores(
            lease=await broker.kv("beat_lease", ttl=self.lease_ttl),
            ticks=await broker.kv("beat_ticks", ttl=max(3600.0, 4 * self.recent)),
            state=await broker.kv("beat_state", ttl=None),
        )
        log.info("beat %s ready with %d entries on NATS %s", self.id, len(self.entries), broker.url)
        me = asyncio.current_task()
        try:
            while not self._stop.is_set():
                if me is not None and me.cancelling():
                    # cancelled, but a library call swallowed it (3.11's wait_for can, when the
                    # awaited future completes at that moment): stop anyway
                    raise asyncio.CancelledError
                try:
                    await self._step()
                except Exception as exc:  # an outage: keep going, the lease decides who leads
                    log.warning("beat %s: %s: %s", self.id, type(exc).__name__, exc)
                    await self._sleep(1.0)
        finally:
            await self._resign()
        log.info("beat %s stopped after firing %d ticks", self.id, self.fired)

    async def _step(self) -> None:
        if not await self._hold_lease():
            await self._sleep(min(1.0, self.lease_ttl / 3))
            return
        now = time.time()
        for entry in self.entries.values():
            due = self._next[entry.name]
            if due <= now:
                last = await self._last_tick(entry)
                await self._catch_up(entry, now, due - 1 if last is None else last)
        next_due = min(self._next.values())
        renew_at = self._renewed_at + self.lease_ttl / 3
        await self._sleep(max(0.0, min(next_due, renew_at) - time.time()))

    async def _sleep(self, seconds: float) -> None:
        # asyncio.timeout, not wait_for: on 3.11 a cancel that lands as wait_for times out comes
        # out as TimeoutError, and a cancelled beat would sleep on
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    # -- the lease -------------------------------------------------------------------------

    async def _hold_lease(self) -> bool:
        """Renew the lease if we hold it (when due), else try to take it; a beat that has just
        taken it first finishes what the previous leader left (see :meth:`_take_over`)."""
        if not await self._renew_or_take():
            return False
        if not self._taken_over:
            await self._take_over()
            self._taken_over = True
            self.became_leader.set()
        return True

    async def _renew_or_take(self) -> bool:
        stores = self._stores_or_raise()
        value = json.dumps({"beat": self.id, "at": time.time()}).encode()
        if self._lease_revision is not None:
            if time.time() - self._renewed_at < self.lease_ttl / 3:
                return True
            try:
                self._lease_revision = await stores.lease.update(
                    LEASE_KEY, value, last=self._lease_revision
                )
                self._renewed_at = time.time()
                return True
            except KeyExists:
                log.warning("beat %s lost the leader lease", self.id)
                self._lease_revision = None
                self.became_leader.clear()
        try:
            self._lease_revision = await stores.lease.create(LEASE_KEY, value)
        except KeyExists:
            return False
        self._renewed_at = time.time()
        self._taken_over = False
        log.info("beat %s is the leader", self.id)
        return True

    async def _resign(self) -> None:
        """Give the lease up at a clean stop, so a standby takes over at once."""
        if self._lease_revision is None or self._stores is None:
            return
        try:
            entry = await self._stores.lease.get(LEASE_KEY)
            if entry is not None and entry.revision == self._lease_revision:
                await self._stores.lease.delete(LEASE_KEY)
        except Exception as exc:  # the server may be gone; the TTL frees the lease anyway
            log.debug("resign failed: %r", exc)
        self._lease_revision = None

    async def _take_over(self) -> None:
        """Publish claims a dead leader left unpublished, then fire what was missed."""
        now = time.time()
        for entry in self.entries.values():
            last = await self._repair_claims(entry, await self._last_tick(entry))
            if last is None:  # never fired: start with the next tick
                self._next[entry.name] = entry.schedule.next_after(now)
            else:
                await self._catch_up(entry, now, last)

    async def _repair_claims(self, entry: PeriodicEntry, last: int | None) -> int | None:
        """Finish every claim newer than the last recorded tick; return the new last tick."""
        for claim in await self._stores_or_raise().ticks.values(f"{entry.name}.*"):
            tick = int(claim.key.rsplit(".", 1)[1])
            if last is not None and tick <= last:
                continue
            if json.loads(claim.value).get("state") != "published":
                log.info("beat %s: publishing %s left unpublished by a crash", self.id, claim.key)
            await self._fire(entry, tick)
            last = tick
        return last

    async def _catch_up(self, entry: PeriodicEntry, now: float, last: int) -> None:
        """Fire the ticks due since ``last`` that the policy wants, then aim at the next one."""
        for tick in to_fire(entry.schedule, last, now, policy=entry.catch_up, recent=self.recent):
            await self._fire(entry, tick)
        self._next[entry.name] = entry.schedule.next_after(now)

    async def _last_tick(self, entry: PeriodicEntry) -> int | None:
        record = await self._stores_or_raise().state.get(entry.name)
        return None if record is None else int(json.loads(record.value)["last_tick"])

    # -- one tick --------------------------------------------------------------------------

    async def _fire(self, entry: PeriodicEntry, tick: int) -> None:
        """Claim, publish, mark published, record: exactly once per tick."""
        if time.time() - self._renewed_at > self.lease_ttl:
            raise JsqueueError(f"beat {self.id} may have lost the lease; renewing before firing")
        stores = self._stores_or_raise()
        key = f"{entry.name}.{tick}"
        claim = {"state": "claimed", "beat": self.id, "at": time.time()}
        try:
            revision = await stores.ticks.create(key, json.dumps(claim).encode())
        except KeyExists:
            existing = await stores.ticks.get(key)
            if existing is None:
                return
            if json.loads(existing.value).get("state") == "published":
                await self._record(entry, tick)
                return
            revision = existing.revision  # claimed but never published: publish it now
        job_id = f"beat.{entry.name}.{tick}"
        env = entry.signature.envelope(job_id=job_id)
        await send(await self.app.broker(), env)
        claim.update(state="published", published=time.time())
        with contextlib.suppress(KeyExists):  # another beat marked it first
            await stores.ticks.update(key, json.dumps(claim).encode(), last=revision)
        await self._record(entry, tick)
        self.fired += 1
        late = (time.time() - tick) * 1000
        log.info(
            "beat %s sent %s (%s) %.0f ms after its tick",
            self.id,
            job_id,
            entry.signature.task,
            late,
        )

    async def _record(self, entry: PeriodicEntry, tick: int) -> None:
        stores = self._stores_or_raise()
        current = await self._last_tick(entry)
        if current is None or tick > current:
            await stores.state.put(entry.name, json.dumps({"last_tick": tick}).encode())

    def _stores_or_raise(self) -> _Stores:
        assert self._stores is not None, "the beat is not running"
        return self._stores


async def run_beat(app: App, *, lease_ttl: float = 10.0, wait_for_server: float = 0.0) -> None:
    """Run a beat for ``app`` in the current event loop until it is stopped (cancel the task)."""
    await Beat(app, lease_ttl=lease_ttl).run(wait_for_server=wait_for_server)

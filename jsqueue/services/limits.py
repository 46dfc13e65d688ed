"""Cluster-wide limits, kept in the ``<prefix>_limits`` KV bucket with compare-and-set writes.

- ``rate.<task>``: the theoretical arrival time of the task's next job (:func:`jsqueue.limits.
  reserve`); each start reserved moves it on by one interval, whichever worker reserves it (a
  worker reserves a few at a time at high rates).
- ``conc.<task>``: per worker, how many of the task's ``max_concurrency`` slots it holds and
  when it last said so; a worker's slots not renewed for ``ack_wait`` are free again, so a
  worker that died holding some gives them back within ``ack_wait``. A worker takes a slot per
  job it starts, keeps a freed one a moment for its next job of the task, then gives it back.
- ``uniq.<key>``: the job holding a unique key, created with a per-key TTL of ``unique_for``.
  It is claimed before the job is sent and marked sent after; a claim never marked (the
  producer died in between) is repaired by the next sender, which sends its job under the
  claimed id (see :func:`lock_unique`).

Clocks: rate reservations and slot refreshes use each host's wall clock, so hosts need NTP, as
for beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from jsqueue.envelope import Envelope
from jsqueue.limits import Rate, live_holders, reserve, slots_of
from jsqueue.services.producer import send
from jsqueue.wire import Broker, KeyExists, KvStore

if TYPE_CHECKING:
    from jsqueue.services.deps import Deps

#: a unique claim not marked sent after this many seconds is repaired by the next sender
CLAIM_REPAIR = 5.0


async def bucket(broker: Broker) -> KvStore:
    return await broker.kv("limits")


def _load(value: bytes) -> dict[str, Any]:
    try:
        loaded = json.loads(value)
    except ValueError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


async def reserve_starts(store: KvStore, task: str, rate: Rate, count: int = 1) -> list[float]:
    """Reserve the next ``count`` starts of ``task`` under ``rate``: the wall-clock times jobs
    may start (from now, or later when the rate is used up), ``1 / rate`` apart. One
    compare-and-set for all of them, so a worker may reserve a few at once."""
    key = f"rate.{task}"
    while True:
        entry = await store.get(key)
        tat = _load(entry.value).get("tat") if entry is not None else None
        known = tat if isinstance(tat, int | float) else None
        start, new_tat = reserve(known, time.time(), rate.interval * count)
        try:
            await store.swap(key, _dump({"tat": new_tat}), entry)
        except KeyExists:
            continue  # another worker reserved first: read its time and go after it
        return [start + i * rate.interval for i in range(count)]


async def hold_slots(
    store: KvStore, task: str, cap: int, worker: str, want: int, stale: float, renew: bool = False
) -> int:
    """Make ``worker`` hold ``want`` of ``task``'s ``cap`` slots, or as many as are free if
    fewer; giving slots back always succeeds. Returns how many it holds now (and its entry's
    time is renewed when it writes, and always with ``renew``, so the slots do not go
    stale)."""
    key = f"conc.{task}"
    while True:
        entry = await store.get(key)
        now = time.time()
        holders = live_holders(_load(entry.value) if entry else {}, now, stale)
        mine = slots_of(holders.pop(worker, None))
        others = sum(slots_of(held) for held in holders.values())
        held = want if want <= mine else max(mine, min(want, cap - others))
        if held == mine and not renew and entry is not None:
            return held  # nothing free and nothing to give back: no write (the key is hot)
        if held > 0:
            holders[worker] = {"n": held, "at": now}
        try:
            await store.swap(key, _dump(holders), entry)
        except KeyExists:
            continue
        return held


# -- unique jobs ---------------------------------------------------------------------------


async def lock_unique(
    store: KvStore, key: str, job_id: str, ttl: float, is_final: Callable[[str], Awaitable[bool]]
) -> tuple[str, bool]:
    """Claim unique ``key`` for ``job_id`` for ``ttl`` seconds (the server drops the claim then).

    Returns ``(holder, send)``: the job id the key belongs to, and whether the caller sends its
    job under that id: ``(job_id, True)`` when the key was free (or its job already final),
    ``(other, False)`` when another job holds it, and ``(other, True)`` when another sender
    claimed it and never marked its job sent: the caller then sends its job as ``other``, and
    the server's duplicate window drops it if the first one was sent after all.
    ``is_final(job_id)`` answers whether a job reached a final state.
    """
    name = f"uniq.{key}"
    while True:
        claim = _dump({"job": job_id, "at": time.time()})
        try:
            await store.create(name, claim, ttl=ttl)
            return job_id, True
        except KeyExists:
            pass
        entry = await store.get(name)
        if entry is None:
            continue  # released meanwhile
        held = _load(entry.value)
        holder = held.get("job")
        if not isinstance(holder, str) or await is_final(holder):
            await _delete(store, name, entry.revision)  # its job ended: the key is free
            continue
        at = held.get("at")
        claimed = float(at) if isinstance(at, int | float) else 0.0
        # a claim not yet marked sent: its sender is sending now, or died; wait for the mark
        # until the claim is CLAIM_REPAIR old, then send under the claimed id
        while await store.get(f"sent.{holder}") is None:
            if time.time() - claimed > CLAIM_REPAIR:
                return holder, True
            await asyncio.sleep(0.05)
        return holder, False


async def mark_sent(store: KvStore, job_id: str, ttl: float) -> None:
    """Record that unique job ``job_id`` is in the stream (a key of its own, so that the claim
    is never rewritten and keeps its TTL)."""
    with contextlib.suppress(KeyExists):  # marked by a repairer already
        await store.create(f"sent.{job_id}", b"1", ttl=ttl)


async def unlock_unique(store: KvStore, key: str, job_id: str) -> None:
    """Release unique ``key`` if ``job_id`` still holds it (its job reached a final state)."""
    name = f"uniq.{key}"
    entry = await store.get(name)
    if entry is not None and _load(entry.value).get("job") == job_id:
        await _delete(store, name, entry.revision)


async def _delete(store: KvStore, name: str, revision: int) -> None:
    with contextlib.suppress(KeyExists):  # taken or released meanwhile: not ours to delete
        await store.delete(name, last=revision, marker_ttl=CLAIM_REPAIR)


async def send_unique(app: Deps, broker: Broker, env: Envelope, ttl: float) -> str:
    """Send ``env`` unless a job holding its ``unique_key`` is queued, delayed, retrying or
    running; the id of the job that holds the key (``env.id`` if this one was sent)."""
    assert env.unique_key is not None
    store = await bucket(broker)
    results = await app.result_backend()

    async def is_final(job_id: str) -> bool:
        recorded = await results.read(job_id)
        return recorded is not None and recorded.state.is_final

    holder, sending = await lock_unique(store, env.unique_key, env.id, ttl, is_final)
    if sending:
        try:
            await send(broker, env if holder == env.id else replace(env, id=holder))
        except BaseException:
            if holder == env.id:  # our claim, and no job behind it: let the next one send
                with contextlib.suppress(Exception):
                    await unlock_unique(store, env.unique_key, holder)
            raise
        await mark_sent(store, holder, ttl)
    return holder

"""What a worker does beside running jobs: heartbeats, its registry record, the burst watch.

These run as background tasks of :class:`jsqueue.worker.Worker`, which they see through the
:class:`WorkerView` protocol (so this module does not import the worker).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from jsqueue.config import LEVELS, Settings
from jsqueue.hooks import Hooks, queue_stats
from jsqueue.pools.child import rss_mb
from jsqueue.pools.thread import ThreadPool
from jsqueue.services.registry import REGISTRY_EVERY, WorkerRegistry, versions
from jsqueue.wire import Broker, Delivery
from jsqueue.worker.dispatch import Dispatch
from jsqueue.worker.execute import Limits, Pool, TaskExecutor
from jsqueue.worker.job import WorkerStats
from jsqueue.worker.options import WorkerOptions

log = logging.getLogger("jsqueue.worker")


class WorkerView(Protocol):
    """What the background duties read of a worker."""

    id: str
    queues: list[str]
    concurrency: int
    pool_kind: str
    started_at: float
    limits: Limits
    hooks: list[Hooks]
    pool: Pool | None
    executor: TaskExecutor | None
    broker: Broker | None
    reports: dict[str, dict[str, dict[str, Any]]]
    dispatch: Dispatch
    options: WorkerOptions

    @property
    def active(self) -> dict[Delivery, float]: ...
    @property
    def tasks(self) -> set[asyncio.Task[None]]: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def stats(self) -> WorkerStats: ...
    @property
    def running(self) -> dict[str, tuple[str, str, float, int]]: ...
    @property
    def stopping(self) -> bool: ...
    def held(self) -> int: ...
    def stop(self) -> None: ...
    def stuck(self) -> dict[str, tuple[str, float]]: ...
    async def refresh_slots(self) -> None: ...


def stuck(limit: float | None, pool: Pool | None) -> dict[str, tuple[str, float]]:
    """job id -> (task, seconds run) of the jobs in a thread past ``limit``."""
    if limit is None or not isinstance(pool, ThreadPool):
        return {}
    now = time.time()
    return {
        job_id: (task, now - started)
        for job_id, (task, started) in list(pool.running.items())
        if now - started > limit
    }


async def hand_back_held(worker: WorkerView, every: float = 5.0) -> None:
    """Hand back deliveries that waited on a paused queue too long (a worker holds none for
    the whole pause: other workers take them after the resume)."""
    while True:
        await asyncio.sleep(every)
        handed = await worker.dispatch.hand_back_held()
        if handed:
            log.info("%d job(s) of paused queues handed back", handed)


async def heartbeats(worker: WorkerView) -> None:
    """Tell the server that long jobs are alive, at a third of ack_wait; name the jobs that
    run in a thread past their time limit, once per ack_wait."""
    ack_wait = worker.settings.ack_wait
    every = ack_wait / 3
    told: dict[str, float] = {}
    while True:
        await asyncio.sleep(every)
        now = time.monotonic()
        for delivery, since in list(worker.active.items()):
            if now - since >= every and not delivery.settled:
                try:
                    await delivery.in_progress()
                except Exception as exc:  # disconnected; redelivery is the fallback
                    log.debug("in_progress failed: %r", exc)
        try:
            await worker.refresh_slots()
        except Exception as exc:  # a slot not refreshed goes stale after ack_wait
            log.warning("concurrency slots not refreshed: %s", exc)
        for job_id, (task, ran) in worker.stuck().items():
            if now - told.get(job_id, 0.0) >= ack_wait:
                told[job_id] = now
                log.warning(
                    "%s[%s] has run %.0fs in a thread, past the time limit of %ss; a thread "
                    "cannot be stopped (run the worker with --pool process)",
                    task,
                    job_id,
                    ran,
                    worker.limits.time_limit,
                )
        for job_id in set(told) - set(worker.running):
            del told[job_id]


async def report(worker: WorkerView, registry: WorkerRegistry) -> None:
    """Keep the worker's record in the registry; give hooks a look at the queues."""
    while True:
        try:
            await registry.beat(record(worker))
            if worker.hooks and worker.broker is not None:
                for queue in worker.queues:
                    ready, unacked = await _counts(worker.broker, queue)
                    await queue_stats(worker.hooks, queue, ready, unacked)
        except Exception as exc:  # an outage: the record expires, then comes back
            log.debug("registry heartbeat failed: %r", exc)
        await asyncio.sleep(REGISTRY_EVERY)


def record(worker: WorkerView) -> dict[str, Any]:
    """What the registry says about the worker."""
    stats = worker.stats
    running = list(worker.running.items())
    for job_id in set(worker.reports) - set(worker.running):
        del worker.reports[job_id]
    stuck_now = worker.stuck()
    where = worker.executor.where if worker.executor else {}
    children = worker.pool.children() if worker.pool else []
    return {
        "id": worker.id,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "queues": worker.queues,
        "concurrency": worker.concurrency,
        "prefetch": worker.options.prefetch,
        "held": _held(worker),
        "pool": worker.pool_kind,
        "children": [_child(c) for c in children],
        "running": [
            _running(job_id, *info, where, stuck_now, worker.reports) for job_id, info in running
        ],
        "processed": stats.processed,
        "succeeded": stats.succeeded,
        "failed": stats.failed,
        "retried": stats.retried,
        "dead_lettered": stats.dead_lettered,
        "started": worker.started_at,
        "rss_mb": rss_mb(),
        "versions": versions(),
        "seen": time.time(),
    }


def _running(
    job_id: str,
    task: str,
    queue: str,
    at: float,
    attempt: int,
    where: Mapping[str, str],
    stuck_now: Mapping[str, object],
    reports: Mapping[str, dict[str, Any]],
) -> dict[str, Any]:
    return {
        "id": job_id,
        "task": task,
        "queue": queue,
        "started": at,
        "attempt": attempt,
        "where": where.get(job_id, ""),  # async, thread or process: what terminate can do
        "stuck": job_id in stuck_now,
        "reported": reports.get(job_id, {}),
    }


def _held(worker: WorkerView) -> dict[str, int]:
    """Jobs held and not running per queue: waiting for a slot, parked, or handed to a busy
    pool child to run next."""
    held = worker.dispatch.held_by_queue()
    for job in worker.pool.handed() if worker.pool else ():
        held[job.queue] = held.get(job.queue, 0) + 1
    return held


def _child(child: Any) -> dict[str, Any]:
    return {
        "pid": child.pid,
        "job": child.job_id,
        "started": child.started,
        "rss_mb": child.rss_mb,
        "jobs": child.jobs_done,
    }


async def burst_watch(worker: WorkerView, queues: Sequence[str] | None = None) -> None:
    """In burst mode, stop once no queue has jobs ready or unacked and nothing runs (a retry
    waiting on a server schedule, at least ``schedule_retries_after`` away, is not waited
    for)."""
    broker = worker.broker
    assert broker is not None
    while not worker.stopping:
        await asyncio.sleep(0.05)
        if worker.tasks or worker.held():
            continue
        idle = True
        for queue in queues or worker.queues:
            ready, unacked = await _counts(broker, queue)
            if ready or unacked:
                idle = False
                break
        if idle and not worker.tasks:
            log.info("worker %s: queues are empty (burst mode)", worker.id)
            worker.stop()


async def _counts(broker: Broker, queue: str) -> tuple[int, int]:
    """(ready, unacked) of ``queue``, every priority level together."""
    ready = unacked = 0
    for level in LEVELS:
        info = await broker.streams.consumer(queue, level)
        if info is not None:
            ready += info.pending
            unacked += info.ack_pending
    return ready, unacked

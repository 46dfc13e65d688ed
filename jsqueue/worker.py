"""The worker: pull jobs, run them, and ack, retry (``nak`` with a delay) or dead-letter them.

A job is acked only after its outcome is recorded. Coroutine tasks run on the event loop, plain
functions in a pool: threads of the worker (``pool="thread"``, the default) or supervised child
processes (``pool="process"``). ``concurrency`` is the number of jobs in flight (under the process
pool: the number of children, and coroutines share those slots), and the pullers never ask the
server for more jobs than there are free slots. Long jobs send ``in_progress`` heartbeats at a
third of ``ack_wait``. On the first stop signal the worker stops pulling, lets running jobs
finish within ``grace`` seconds, and gives back (``nak``) the rest so they run again at once
elsewhere; :meth:`Worker.abort` (the second signal) kills the children and gives back all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jsqueue.app import App, app_spec_of
from jsqueue.broker import Broker
from jsqueue.config import check_queue
from jsqueue.errors import ConfigError
from jsqueue.events import EventPublisher
from jsqueue.execute import Limits, Pool, TaskExecutor
from jsqueue.hooks import Hooks, queue_stats
from jsqueue.loopwatch import LoopWatch
from jsqueue.pools import ProcessPool
from jsqueue.pools.thread import ThreadPool
from jsqueue.puller import Delivery, Puller
from jsqueue.registry import REGISTRY_EVERY, REGISTRY_TTL, WorkerRegistry, versions
from jsqueue.revoke import RevokedSet
from jsqueue.runner import JobRunner, WorkerStats

log = logging.getLogger("jsqueue.worker")


@dataclass
class _Lane:
    """One queue's puller, with the jobs it runs and those waiting for a slot."""

    puller: Puller
    running: int = 0
    backlog: deque[Delivery] = field(default_factory=deque)


class Worker:
    """Runs the jobs of ``queues`` with ``concurrency`` slots. See :func:`run_worker`."""

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        burst: bool = False,
        grace: float = 30.0,
        worker_id: str | None = None,
        block_warning: float | None = None,
        pool: str = "thread",
        app_spec: str | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: float | None = None,
    ) -> None:
        self.queues = _queues(queues, app.settings.default_queue)
        if pool not in ("thread", "process"):
            raise ConfigError(f"pool must be 'thread' or 'process', not {pool!r}")
        if concurrency is None:
            concurrency = 32 if pool == "thread" else len(os.sched_getaffinity(0))
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, not {concurrency}")
        if pool == "thread" and (max_tasks_per_child or max_memory_per_child):
            raise ConfigError(
                "--max-tasks-per-child and --max-memory-per-child recycle pool children: use "
                "them with --pool process"
            )
        self.limits = Limits(time_limit, soft_time_limit)
        self.limits.check(app, pool, self.queues)
        self.pool_kind = pool
        self.app_spec = (app_spec or app_spec_of(app)) if pool == "process" else app_spec
        self._max_tasks_per_child = max_tasks_per_child
        self._max_memory_per_child = max_memory_per_child
        if concurrency < len(self.queues):
            raise ConfigError(
                f"concurrency {concurrency} is less than the {len(self.queues)} queue(s) to "
                "consume: each queue needs a slot of its own; raise -c or consume fewer queues"
            )
        self.app = app
        self.concurrency = concurrency
        self.burst = burst
        self.grace = grace
        #: seconds the event loop may be blocked before the blocking task is named in a warning
        self.block_warning = block_warning or min(1.0, app.settings.ack_wait / 3)
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.hooks: list[Hooks] = list(app.hooks)
        self.started_at = time.time()
        self._lanes: dict[str, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._active: dict[Delivery, float] = {}
        self._stop = asyncio.Event()
        #: job id -> kind -> data: what running jobs reported from their pool child
        self._reports: dict[str, dict[str, dict[str, Any]]] = {}
        self._pool: Pool | None = None
        self._executor: TaskExecutor | None = None
        self._runner: JobRunner | None = None
        self._stats = WorkerStats()
        self._broker: Broker | None = None
        self._registry: WorkerRegistry | None = None
        self._revoked: RevokedSet | None = None
        self._background: list[asyncio.Task[None]] = []
        #: seconds to get a new connection after nats-py closed the old one for good
        self.reconnect_timeout = 60.0
        #: connections this worker has run on (more than one after a connection was lost)
        self.sessions = 0
        self.started = asyncio.Event()

    @property
    def stats(self) -> WorkerStats:
        return self._stats

    @property
    def running(self) -> dict[str, tuple[str, str, float]]:
        """job id -> (task, queue, started at) of the jobs running now."""
        return self._runner.running if self._runner else {}

    # -- lifecycle -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to stop gracefully (what the first SIGTERM does)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self, wait_for_server: float = 0.0) -> WorkerStats:
        """Run until :meth:`stop` (or, with ``burst``, until the queues are empty).

        A connection that nats-py closes for good (it does so on some server errors) is
        replaced by a new one: the worker never stays alive and idle. If no new connection
        comes within ``reconnect_timeout`` seconds, :class:`ConnectError` ends the run.
        """
        watch = LoopWatch(self.block_warning, JobRunner.culprit)
        watch.start()
        self._pool = self._make_pool()
        self._executor = TaskExecutor(self._pool, self.limits, self.id)
        try:
            await self._pool.start()
            await self._open(wait_for_server)
            while await self._serve():
                await self._reopen()
        finally:
            watch.stop()
            await self._close()
        log.info("worker %s stopped: %s", self.id, self.stats.summary())
        return self.stats

    async def _open(self, wait_for_server: float) -> None:
        """Connect and set everything up: runner, registry, one puller per queue."""
        await self.app.connect(wait=wait_for_server)
        broker = await self.app.broker()
        self._broker = broker
        self.sessions += 1
        self._revoked = RevokedSet(on_terminate=self._terminate)
        await self._revoked.start(self.app)
        hooks = list(self.hooks)
        if self.app.settings.events:
            hooks.append(EventPublisher(broker))
        results = await self.app.result_backend()
        assert self._executor is not None
        self._runner = JobRunner(
            self.app, self.id, broker, results, self._revoked, self._executor, hooks, self._stats
        )
        registry = WorkerRegistry(await broker.kv("workers", ttl=REGISTRY_TTL))
        self._registry = registry
        shares = _split(self.concurrency, len(self.queues))
        self._lanes = {}
        for queue, share in zip(self.queues, shares, strict=True):
            consumer = await broker.ensure_consumer(queue)
            puller = Puller(broker, queue, consumer, share, self._on_delivery, self._on_late)
            self._lanes[queue] = _Lane(puller)
        self._background = [
            asyncio.create_task(self._heartbeats()),
            asyncio.create_task(self._report(registry)),
        ]
        if self.burst:
            self._background.append(asyncio.create_task(self._burst_watch()))
        for lane in self._lanes.values():
            await lane.puller.start()
        log.info(
            "worker %s ready: queues %s, concurrency %d, %s pool, NATS %s",
            self.id,
            ",".join(self.queues),
            self.concurrency,
            self.pool_kind,
            broker.url,
        )
        self.started.set()

    async def _serve(self) -> bool:
        """Wait for a stop (drain, return False) or a lost connection (return True)."""
        assert self._broker is not None
        stop = asyncio.ensure_future(self._stop.wait())
        lost = asyncio.ensure_future(self._broker.lost.wait())
        try:
            await asyncio.wait({stop, lost}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # cancelled (run_worker in a task of yours): stop now, give every job back
            self.grace = 0.0
            self._stop.set()
            await self._drain()
            raise
        finally:
            stop.cancel()
            lost.cancel()
        if self._stop.is_set() or not self._broker.lost.is_set():
            await self._drain()
            return False
        return True

    async def _reopen(self) -> None:
        """The connection is closed for good: drop this session's jobs and start again."""
        assert self._broker is not None
        log.error(
            "worker %s: NATS closed the connection for good (%s); its %d running job(s) will "
            "come back after ack_wait; connecting again with a new client",
            self.id,
            self._broker.lost_reason,
            len(self._tasks),
        )
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)
        await self._close_session()
        await self._open(self.reconnect_timeout)
        log.warning("worker %s: connected again; serving on", self.id)

    async def _close_session(self) -> None:
        for task in self._background:
            task.cancel()
        self._background = []
        for lane in self._lanes.values():
            lane.backlog.clear()
            await lane.puller.close()
        self._active.clear()
        if self._revoked is not None:
            await self._revoked.stop()
        # the app's next use in this loop connects anew (App notices the lost connection)

    async def _close(self) -> None:
        for task in self._background:
            task.cancel()
        for lane in self._lanes.values():
            await lane.puller.close()
        if self._pool is not None:
            await self._pool.close()
        if self._registry is not None:
            await self._registry.remove(self.id)
        if self._revoked is not None:
            await self._revoked.stop()
        for hook in self.hooks:
            await hook.on_worker_stop()
        if self._broker is not None and self._broker.is_connected:
            await self._broker.flush()

    async def _drain(self) -> None:
        """Stop pulling, let running jobs finish within ``grace``, give back the rest.

        The pull inboxes are closed first (a round trip makes sure the server saw it), so a job
        given back cannot be redelivered to this worker's own still-open pull requests.
        """
        log.info("worker %s stopping: %d job(s) running", self.id, len(self._tasks))
        for lane in self._lanes.values():
            await lane.puller.close()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.grace)
            if pending:
                log.warning(
                    "%d job(s) still running after %.1fs; giving them back",
                    len(pending),
                    self.grace,
                )
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=10)
        for lane in self._lanes.values():
            while lane.backlog:
                delivery = lane.backlog.popleft()
                await self._give_back(delivery)
                await lane.puller.release()

    # -- dispatch ------------------------------------------------------------------------------

    def _on_delivery(self, delivery: Delivery) -> None:
        lane = self._lanes[delivery.queue]
        if lane.running < lane.puller.capacity:
            self._start(lane, delivery)
        else:
            lane.backlog.append(delivery)
            self._active[delivery] = time.monotonic()

    def _on_late(self, delivery: Delivery) -> None:
        """A job that arrived after we stopped pulling: give it back at once."""
        lane = self._lanes[delivery.queue]

        async def give_back() -> None:
            await self._give_back(delivery)
            await lane.puller.release()

        self._track(asyncio.get_running_loop().create_task(give_back()))

    def _start(self, lane: _Lane, delivery: Delivery) -> None:
        lane.running += 1
        self._active[delivery] = time.monotonic()
        self._track(asyncio.get_running_loop().create_task(self._handle(lane, delivery)))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, lane: _Lane, delivery: Delivery) -> None:
        try:
            assert self._runner is not None
            await self._runner.process(delivery)
        except asyncio.CancelledError:
            await self._give_back(delivery)
            raise
        except Exception:
            # Our own failure (e.g. the server went away while settling): the job stays
            # unacked and the server delivers it again after ack_wait.
            log.exception("job on %s (delivery %d) not settled", delivery.queue, delivery.attempt)
        finally:
            self._active.pop(delivery, None)
            lane.running -= 1
            if lane.backlog and not self.stopping:
                self._start(lane, lane.backlog.popleft())
            await lane.puller.release()

    async def _give_back(self, delivery: Delivery) -> None:
        self._active.pop(delivery, None)
        if not delivery.settled:
            try:
                await delivery.nak()
            except Exception as exc:  # disconnected: it comes back after ack_wait
                log.debug("nak at shutdown failed: %r", exc)

    # -- background ----------------------------------------------------------------------------

    def _make_pool(self) -> Pool:
        if self.pool_kind == "thread":
            return ThreadPool(self.app, self.concurrency)
        assert self.app_spec is not None
        return ProcessPool(
            self.app_spec,
            self.concurrency,
            worker_id=self.id,
            on_report=self._on_report,
            max_tasks_per_child=self._max_tasks_per_child,
            max_memory_per_child=self._max_memory_per_child,
        )

    def _on_report(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        """What a job in a pool child reported while it runs: the latest of each kind is kept
        for the registry (``jsqueue inspect workers``)."""
        self._reports.setdefault(job_id, {})[kind] = data

    async def _terminate(self, job_id: str) -> None:
        """A revoke with ``terminate=True`` arrived: stop the job if it runs here."""
        if self._executor is None:
            return
        done = await self._executor.terminate(job_id)
        if done == "cannot":
            log.warning(
                "job %s was revoked with terminate, but it runs in a thread, which cannot be "
                "stopped: it runs to its end (its outcome is not recorded: REVOKED stays)",
                job_id,
            )
        elif done is not None:
            log.warning("job %s was revoked with terminate: %s", job_id, done)

    async def abort(self) -> None:
        """Stop now (the second signal): kill the pool's children and give back every job in
        flight, so that other workers run them at once."""
        log.warning("worker %s aborting: %d job(s) given back", self.id, len(self._active))
        if self._pool is not None:
            await self._pool.close(kill=True)
        for delivery in list(self._active):
            await self._give_back(delivery)
        for lane in self._lanes.values():
            for delivery in lane.backlog:
                await self._give_back(delivery)
        if self._broker is not None and self._broker.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._broker.flush(), 2)

    async def _heartbeats(self) -> None:
        """Tell the server that long jobs are alive, at a third of ack_wait; name the jobs
        that run in a thread past their time limit, once per ack_wait."""
        every = self.app.settings.ack_wait / 3
        told: dict[str, float] = {}
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for delivery, since in list(self._active.items()):
                if now - since >= every and not delivery.settled:
                    try:
                        await delivery.in_progress()
                    except Exception as exc:  # disconnected; redelivery is the fallback
                        log.debug("in_progress failed: %r", exc)
            for job_id, (task, ran) in self.stuck().items():
                if now - told.get(job_id, 0.0) >= self.app.settings.ack_wait:
                    told[job_id] = now
                    log.warning(
                        "%s[%s] has run %.0fs in a thread, past the time limit of %ss; a "
                        "thread cannot be stopped (run the worker with --pool process)",
                        task,
                        job_id,
                        ran,
                        self.limits.time_limit,
                    )
            for job_id in set(told) - set(self.running):
                del told[job_id]

    def stuck(self) -> dict[str, tuple[str, float]]:
        """job id -> (task, seconds run) of the jobs in a thread past ``--time-limit``."""
        limit = self.limits.time_limit
        if limit is None or not isinstance(self._pool, ThreadPool):
            return {}
        now = time.time()
        return {
            job_id: (task, now - started)
            for job_id, (task, started) in list(self._pool.running.items())
            if now - started > limit
        }

    async def _report(self, registry: WorkerRegistry) -> None:
        """Keep this worker's record in the registry; give hooks a look at the queues."""
        while True:
            try:
                await registry.beat(self.record())
                if self.hooks:
                    broker = self._broker
                    assert broker is not None
                    for queue in self.queues:
                        info = await broker.consumer_info(queue)
                        if info is not None:
                            ready, unacked = info.num_pending or 0, info.num_ack_pending or 0
                            await queue_stats(self.hooks, queue, ready, unacked)
            except Exception as exc:  # an outage: the record expires, then comes back
                log.debug("registry heartbeat failed: %r", exc)
            await asyncio.sleep(REGISTRY_EVERY)

    def record(self) -> dict[str, Any]:
        """What the registry says about this worker."""
        stats = self.stats
        running = list(self.running.items())
        for job_id in set(self._reports) - set(self.running):
            del self._reports[job_id]
        return {
            "id": self.id,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "queues": self.queues,
            "concurrency": self.concurrency,
            "pool": self.pool_kind,
            "children": [_child_record(c) for c in (self._pool.children() if self._pool else [])],
            "running": [self._running_record(job_id, *info) for job_id, info in running],
            "processed": stats.processed,
            "succeeded": stats.succeeded,
            "failed": stats.failed,
            "retried": stats.retried,
            "dead_lettered": stats.dead_lettered,
            "started": self.started_at,
            "versions": versions(),
            "seen": time.time(),
        }

    def _running_record(self, job_id: str, task: str, queue: str, at: float) -> dict[str, Any]:
        where = self._executor.where.get(job_id, "") if self._executor else ""
        return {
            "id": job_id,
            "task": task,
            "queue": queue,
            "started": at,
            "where": where,  # async, thread or process: what terminate can do
            "stuck": job_id in self.stuck(),
            "reported": self._reports.get(job_id, {}),
        }

    async def _burst_watch(self) -> None:
        """In burst mode, stop once no queue has jobs ready or unacked and nothing runs."""
        broker = self._broker
        assert broker is not None
        while not self.stopping:
            await asyncio.sleep(0.05)
            if self._tasks or any(lane.backlog for lane in self._lanes.values()):
                continue
            idle = True
            for queue in self.queues:
                info = await broker.consumer_info(queue)
                if info is None or info.num_pending or info.num_ack_pending:
                    idle = False
                    break
            if idle and not self._tasks:
                log.info("worker %s: queues are empty (burst mode)", self.id)
                self.stop()


def _child_record(child: Any) -> dict[str, Any]:
    return {
        "pid": child.pid,
        "job": child.job_id,
        "started": child.started,
        "rss_mb": child.rss_mb,
        "jobs": child.jobs_done,
    }


def _queues(queues: Sequence[str] | None, default: str) -> list[str]:
    if queues is None:
        return [default]
    if isinstance(queues, str) or not queues:
        raise ConfigError(f"queues must be a list of queue names, e.g. ['default'], not {queues!r}")
    checked = [check_queue(q) for q in queues]
    twice = sorted({q for q in checked if checked.count(q) > 1})
    if twice:
        raise ConfigError(f"queue(s) {', '.join(twice)} given more than once")
    return checked


def _split(total: int, parts: int) -> list[int]:
    """Split ``total`` slots over ``parts`` queues (``total >= parts``, so each gets one)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


async def run_worker(
    app: App,
    *,
    queues: Sequence[str] | None = None,
    concurrency: int | None = None,
    burst: bool = False,
    grace: float = 30.0,
    wait_for_server: float = 0.0,
    worker_id: str | None = None,
    block_warning: float | None = None,
    pool: str = "thread",
    app_spec: str | None = None,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
    max_tasks_per_child: int | None = None,
    max_memory_per_child: float | None = None,
) -> WorkerStats:
    """Run a worker for ``app`` in the current event loop until it is stopped.

    ``pool="thread"`` (the default) runs ``def`` tasks in threads, ``concurrency`` (default 32)
    jobs at once. ``pool="process"`` runs them in supervised child processes, ``concurrency``
    children (default: the CPU count); they import the app by ``app_spec`` ("module:app",
    found from the tasks' module when not given). ``time_limit`` and ``soft_time_limit`` are
    seconds for tasks that set none; ``max_tasks_per_child`` and ``max_memory_per_child`` (MB
    resident after a job) replace a child once it reaches them.

    Cancelling the task that runs it stops it at once: running jobs are cancelled and, with
    those waiting for a slot, given back (``nak``) so that another worker runs them now.

    With ``burst=True`` it returns once the queues hold nothing ready or unacked (retries
    included) and nothing runs. Signal handling is the caller's: ``jsqueue worker`` installs it.
    """
    worker = Worker(
        app,
        queues=queues,
        concurrency=concurrency,
        burst=burst,
        grace=grace,
        worker_id=worker_id,
        block_warning=block_warning,
        pool=pool,
        app_spec=app_spec,
        time_limit=time_limit,
        soft_time_limit=soft_time_limit,
        max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=max_memory_per_child,
    )
    return await worker.run(wait_for_server=wait_for_server)

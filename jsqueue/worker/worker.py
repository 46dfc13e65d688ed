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
import functools
import logging
import time
from typing import Any

from jsqueue import middleware
from jsqueue.app import App
from jsqueue.config import LEVELS, Settings
from jsqueue.hooks import Hooks
from jsqueue.pools import ProcessPool
from jsqueue.pools.thread import ThreadPool
from jsqueue.services import republish
from jsqueue.services.events import EventPublisher
from jsqueue.services.queues import PAUSED_UNTIL, PausedQueues, consumers_of
from jsqueue.services.registry import REGISTRY_TTL, WorkerRegistry
from jsqueue.services.results import RevokedSet
from jsqueue.wire import Broker, Delivery
from jsqueue.worker import startup, upkeep
from jsqueue.worker.dispatch import Dispatch
from jsqueue.worker.execute import Pool, TaskExecutor, culprit
from jsqueue.worker.loopwatch import LoopWatch
from jsqueue.worker.options import WorkerOptions, hand_ahead
from jsqueue.worker.progress import ProgressWriter
from jsqueue.worker.runner import JobRunner, WorkerStats

log = logging.getLogger("jsqueue.worker")

#: seconds a pull request waits when a worker has several lanes: a lane that ran out of work
#: gives its slots to the others at most this long after
SHARED_PULL_EXPIRES = 3.0


class Worker:
    """Runs the jobs of ``queues`` with ``concurrency`` slots. See :func:`run_worker`."""

    def __init__(self, app: App, **options: Any) -> None:
        """``options`` are :func:`run_worker`'s (see :class:`WorkerOptions`)."""
        self.options = opts = WorkerOptions.create(app, **options)
        self.queues = list(opts.queues)
        self.limits = opts.limits
        self.pool_kind = opts.pool
        self.app_spec = opts.app_spec
        self.app = app
        self.concurrency = opts.concurrency
        self.burst = opts.burst
        self.grace = opts.grace
        self.id = opts.worker_id
        self.hooks: list[Hooks] = list(app.hooks)
        self.started_at = time.time()
        self._stop = asyncio.Event()
        #: jobs handed to busy pool children to run next: they count as slots of the dispatch
        self.ahead = hand_ahead(opts, app)
        self.dispatch = Dispatch(
            self._process,
            lambda: self._stop.is_set(),
            self.concurrency + self.ahead,
            hand_back=self._hand_back,
            prefetch=opts.prefetch,
        )
        #: job id -> kind -> data: what running jobs reported from their pool child
        self.reports: dict[str, dict[str, dict[str, Any]]] = {}
        self.pool: Pool | None = None
        self.executor: TaskExecutor | None = None
        self._runner: JobRunner | None = None
        self._stats = WorkerStats()
        self.broker: Broker | None = None
        self._registry: WorkerRegistry | None = None
        self._revoked: RevokedSet | None = None
        self._progress: ProgressWriter | None = None
        self._paused: PausedQueues | None = None
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
    def settings(self) -> Settings:
        return self.app.settings

    def held(self) -> int:
        """Deliveries waiting for a slot, in every lane."""
        return self.dispatch.held()

    @property
    def tasks(self) -> set[asyncio.Task[None]]:
        return self.dispatch.tasks

    @property
    def active(self) -> dict[Delivery, float]:
        return self.dispatch.active

    async def _process(self, delivery: Delivery) -> float | None:
        assert self._runner is not None
        return await self._runner.process(delivery)

    @property
    def running(self) -> dict[str, tuple[str, str, float, int]]:
        """job id -> (task, queue, started at, attempt) of the jobs running now."""
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
        watch = LoopWatch(self.options.block_warning, culprit)
        watch.start()
        self.pool = self._make_pool()
        mw = self.app.middleware
        self.executor = TaskExecutor(
            self.pool, self.limits, self.id, on_report=self._on_report, middleware=mw
        )
        self.executor.ahead = self.ahead > 0
        try:
            await middleware.worker_started(mw, self.id)
            await self.pool.start()
            # as patient with a JetStream that does not answer yet as a running worker is
            # with a lost connection (a cluster that lost its quorum while this one started)
            budget = max(wait_for_server, self.reconnect_timeout)
            opening = functools.partial(self._open, wait_for_server)
            await startup.opened(opening, self._close_session, budget, self.id)
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
        self.broker = broker
        self.sessions += 1
        results = await self.app.result_backend()
        self._revoked = RevokedSet(on_terminate=self._terminate)
        await self._revoked.start(results)
        hooks = list(self.hooks)
        if self.app.settings.events:
            hooks.append(EventPublisher(broker))
        assert self.executor is not None
        self._progress = ProgressWriter(
            results, hooks, lambda: self.running, self.id, recorded=self._keeps_results
        )
        self._runner = JobRunner(
            self.app,
            self.id,
            broker,
            results,
            self._revoked,
            self.executor,
            hooks,
            self._stats,
            park_room=self.dispatch.park_room,
            track=self.dispatch.track,
            pipelined=self.concurrency,
        )
        registry = WorkerRegistry(await broker.kv("workers", ttl=REGISTRY_TTL))
        self._registry = registry
        self._paused = PausedQueues(self._on_pause_change)
        await self._paused.start(broker)
        self.dispatch.lanes = {}
        lanes = len(self.queues) * len(LEVELS)
        for queue in self.queues:
            consumers = [await broker.ensure_consumer(queue, level) for level in LEVELS]
            if queue in self._paused:  # a consumer created now must not run the queue
                await broker.pause_consumers(consumers, PAUSED_UNTIL)
            for level, consumer in zip(LEVELS, consumers, strict=True):
                puller = broker.puller(
                    queue,
                    consumer,
                    self.concurrency,
                    self.dispatch.on_delivery,
                    self.dispatch.on_late,
                    priority=level,
                    expires=SHARED_PULL_EXPIRES if lanes > 1 else 30.0,
                )
                self.dispatch.add_lane(queue, puller, level)
            self.dispatch.set_paused(queue, queue in self._paused)
        self._background = [
            asyncio.create_task(upkeep.heartbeats(self)),
            asyncio.create_task(upkeep.report(self, registry)),
            asyncio.create_task(upkeep.hand_back_held(self)),
        ]
        if self.burst:
            self._background.append(asyncio.create_task(upkeep.burst_watch(self)))
        for lane in self.dispatch.lanes.values():
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
        assert self.broker is not None
        stop = asyncio.ensure_future(self._stop.wait())
        lost = asyncio.ensure_future(self.broker.lost.wait())
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
        if self._stop.is_set() or not self.broker.lost.is_set():
            await self._drain()
            return False
        return True

    async def _reopen(self) -> None:
        """The connection is closed for good: drop this session's jobs and start again."""
        assert self.broker is not None
        log.error(
            "worker %s: NATS closed the connection for good (%s); its %d running job(s) will "
            "come back after ack_wait; connecting again with a new client",
            self.id,
            self.broker.lost_reason,
            len(self.tasks),
        )
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=10)
        await self._close_session()
        opening = functools.partial(self._open, self.reconnect_timeout)
        await startup.opened(opening, self._close_session, self.reconnect_timeout, self.id)
        log.warning("worker %s: connected again; serving on", self.id)

    async def _close_session(self) -> None:
        for task in self._background:
            task.cancel()
        self._background = []
        self.dispatch.clear()
        for lane in self.dispatch.lanes.values():
            await lane.puller.close()
        self.active.clear()
        if self._revoked is not None:
            await self._revoked.stop()
        if self._paused is not None:
            await self._paused.stop()
        if self._progress is not None:
            await self._progress.close()
        # the app's next use in this loop connects anew (App notices the lost connection)

    async def _close(self) -> None:
        for task in self._background:
            task.cancel()
        for lane in self.dispatch.lanes.values():
            await lane.puller.close()
        if self.pool is not None:
            await self.pool.close()
        if self._runner is not None and self.broker is not None and self.broker.is_connected:
            await self._runner.admission.close()
        if self._registry is not None:
            await self._registry.remove(self.id)
        if self._revoked is not None:
            await self._revoked.stop()
        if self._paused is not None:
            await self._paused.stop()
        if self._progress is not None:
            await self._progress.close()
        for hook in self.hooks:
            await hook.on_worker_stop()
        await middleware.worker_stopped(self.app.middleware, self.id)
        if self.broker is not None and self.broker.is_connected:
            await self.broker.flush()

    async def _drain(self) -> None:
        """Stop pulling, let running jobs finish within ``grace``, give back the rest."""
        log.info("worker %s stopping: %d job(s) running", self.id, len(self.tasks))
        await self.dispatch.drain(self.grace)

    # -- background ----------------------------------------------------------------------------

    def _make_pool(self) -> Pool:
        if self.pool_kind == "thread":
            return ThreadPool(self.app, self.concurrency, on_report=self._on_report)
        assert self.app_spec is not None
        return ProcessPool(
            self.app_spec,
            self.concurrency,
            worker_id=self.id,
            on_report=self._on_report,
            max_tasks_per_child=self.options.max_tasks_per_child,
            max_memory_per_child=self.options.max_memory_per_child,
        )

    def _on_report(self, job_id: str, kind: str, data: dict[str, Any]) -> None:
        """What a running job reported: progress is recorded (throttled); the latest of each
        kind is kept for the registry (``jsqueue inspect workers``)."""
        if job_id not in self.running:
            return  # a late report of a job that is over
        self.reports.setdefault(job_id, {})[kind] = data
        if kind == "progress" and self._progress is not None:
            self._progress.offer(job_id, data)

    async def _on_pause_change(self, queue: str, paused: bool) -> None:
        if queue in self.queues:
            log.warning("queue %s %s: %s", queue, "paused" if paused else "resumed", self.id)
            self.dispatch.set_paused(queue, paused)
            if not paused and self.broker is not None:
                # a worker that started while the queue was resumed may have paused its
                # consumers again after the resume did: resume them (idempotent)
                await self.broker.pause_consumers(consumers_of(self.broker, queue), None)

    async def _hand_back(self, delivery: Delivery) -> None:
        assert self.broker is not None
        await republish.hand_back(self.broker, delivery)

    def _keeps_results(self, name: str) -> bool:
        task = self.app.tasks.get(name)
        return task is None or not task.options.ignore_result

    async def _terminate(self, job_id: str) -> None:
        """A revoke with ``terminate=True`` arrived: stop the job if it runs here."""
        if self.executor is None:
            return
        done = await self.executor.terminate(job_id)
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
        log.warning("worker %s aborting: %d job(s) given back", self.id, len(self.active))
        if self.pool is not None:
            await self.pool.close(kill=True)
        for delivery in list(self.active):
            await self.dispatch.give_back(delivery)
        for lane in self.dispatch.lanes.values():
            for delivery in lane.waiting:
                await self.dispatch.give_back(delivery)
        if self.broker is not None and self.broker.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.broker.flush(), 2)

    async def refresh_slots(self) -> None:
        """Keep the cluster-wide concurrency slots of the jobs running here."""
        if self._runner is not None:
            await self._runner.admission.refresh()

    def stuck(self) -> dict[str, tuple[str, float]]:
        """job id -> (task, seconds run) of the jobs in a thread past ``--time-limit``."""
        return upkeep.stuck(self.limits.time_limit, self.pool)

    def record(self) -> dict[str, Any]:
        """What the registry says about this worker."""
        return upkeep.record(self)

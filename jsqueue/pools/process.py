"""A supervised pool of child processes for ``def`` tasks: Celery's prefork pool, done right.

The worker keeps the only NATS connection, decodes each job and awaits :meth:`ProcessPool.run`,
which runs it on a free child and returns a :class:`ChildOutcome` for the worker to settle.
Nothing a task or a child does makes ``run()`` raise: a crash, a kill from outside, a time limit
or a termination fails only that job, and a fresh child takes the slot.

Children come from multiprocessing's **forkserver**, never from ``fork``: the worker has threads
and a NATS connection, and a forked child would inherit their locks mid-use and the socket.
``spawn`` would be as safe but starts an interpreter and imports jsqueue and the app in every
child: 400-500 ms each on a 2-core machine. The forkserver is spawned once (about 550 ms, on the
first start) and is single-threaded, with jsqueue and, when the worker has imported it, the app
module preloaded; a child forked from it is ready in about 10 ms, so replacing a child after a
crash, a limit or a recycle is cheap. As with spawn, a worker's main script (not a ``-m``
module) is imported in each child as ``__mp_main__``: guard its entry point.

Nobody outlives the worker: the forkserver exits when the worker dies, however it dies, and
each child arms ``PR_SET_PDEATHSIG`` against the forkserver (see :mod:`jsqueue.pools.child`).

Time limits are the parent's timers (:mod:`jsqueue.pools.assign`): SIGUSR1 at the soft one
(the child raises ``SoftTimeLimitExceeded`` in the task), SIGKILL at the hard one. No heartbeat:
the socket's EOF and the sentinel tell the parent the moment a child dies, and a hung child is
what the limits are for. Task code can :func:`jsqueue.pools.child.report`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from jsqueue.context import ReportCallback
from jsqueue.errors import (
    ChildDied,
    ConfigError,
    JsqueueError,
    PoolClosed,
    SerializeError,
    Terminated,
)
from jsqueue.pools import protocol
from jsqueue.pools.assign import Assignments
from jsqueue.pools.handle import ChildHandle, describe_exit, launch, preload_modules
from jsqueue.pools.outcome import Busy, ChildInfo, ChildOutcome, closed_before, from_done
from jsqueue.pools.protocol import ChildConfig, ChildJob, Done, Report, RunJob

log = logging.getLogger("jsqueue.pool")


#: seconds a retiring child has to exit after Stop before it is killed
_STOP_GRACE = 10.0
#: first and longest wait between attempts to start a replacement child that failed to start
_RETRY_FIRST, _RETRY_MAX = 0.5, 30.0


class ProcessPool:
    """``size`` child processes that import ``app_spec`` ("module:attr") and run jobs.
    ``max_tasks_per_child`` and ``max_memory_per_child`` (MB resident after a job) replace a
    child once it reaches them; ``on_report(job_id, kind, data)`` receives what tasks report."""

    kind = "process"

    def __init__(
        self,
        app_spec: str,
        size: int,
        *,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: float | None = None,
        on_report: ReportCallback | None = None,
        worker_id: str = "",
        start_timeout: float = 60.0,
    ) -> None:
        if not app_spec.partition(":")[0]:
            raise ConfigError(f"app_spec {app_spec!r}: expected module:attribute, e.g. tasks:app")
        if size < 1:
            raise ConfigError(f"a process pool needs at least one child, not size={size}")
        if max_tasks_per_child is not None and max_tasks_per_child < 1:
            raise ConfigError("max_tasks_per_child must be at least 1, or None for no limit")
        if max_memory_per_child is not None and max_memory_per_child <= 0:
            raise ConfigError("max_memory_per_child must be positive MB, or None for no limit")
        self._spec = app_spec
        self._size = size
        self._max_tasks = max_tasks_per_child
        self._max_memory = max_memory_per_child
        self._on_report = on_report
        self._worker_id = worker_id
        self._start_timeout = start_timeout
        self._live: dict[ChildHandle, None] = {}  # in service, idle or busy, in start order
        self._idle: deque[ChildHandle] = deque()
        self._jobs = Assignments(max_tasks_per_child)  # which job each child runs, and next
        self._retiring: set[ChildHandle] = set()
        self._waiters: deque[asyncio.Future[ChildHandle | None]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()  # readers and replacements
        self._refills: set[asyncio.Task[None]] = set()
        self._started = False
        self._closed = False
        self._closing = asyncio.Event()

    @property
    def size(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"<ProcessPool {self._spec} size={self._size} busy={len(self._jobs.running)}>"

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start ``size`` children and return when all have loaded the app; ConfigError quoting
        a child's error if one cannot."""
        if self._started:
            raise JsqueueError("this ProcessPool was already started")
        self._started = True
        results = await asyncio.gather(
            *(self._launch() for _ in range(self._size)), return_exceptions=True
        )
        for result in results:
            if isinstance(result, ChildHandle):
                self._adopt(result)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.close(kill=True)
            raise failures[0]

    async def close(self, *, kill: bool = False) -> None:
        """Start no new job and stop the children: idle ones exit now, busy ones after their
        job; ``kill=True`` SIGKILLs all at once. ``run()`` calls still waiting for a child
        return :class:`PoolClosed`. Returns when the stopped children are gone."""
        self._closed = True
        self._closing.set()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        if self._refills:
            await asyncio.gather(*list(self._refills), return_exceptions=True)
        stopping = [*self._live, *self._retiring]
        for handle in stopping:
            busy = self._jobs.running.get(handle)
            if kill and busy is not None:
                reason = PoolClosed(f"the pool was killed while {busy.label} ran")
                self._jobs.kill(handle, busy, reason)
            elif kill:
                handle.kill()
            elif busy is None:
                self._retire(handle)
        waits = [h.exited.wait() for h in stopping if kill or h.retiring]
        if waits:
            try:
                await asyncio.wait_for(asyncio.gather(*waits), _STOP_GRACE + 15.0)
            except TimeoutError:
                log.error("some pool children did not exit on close; see the errors above")

    # -- running jobs --------------------------------------------------------------------------

    async def run(
        self, job: ChildJob, *, ahead: bool = False, on_start: Callable[[], None] | None = None
    ) -> ChildOutcome:
        """Run ``job`` on a free child, waiting for one if all are busy. Never raises for what
        the task or the child does: see ``ChildOutcome.error``.

        With ``ahead``, a child that runs a job may be handed this one next: it starts the
        moment the child is done, with no wait on the parent, and its time limits count from
        then. Should the child die first, the job goes to another child; terminated first, it
        never runs. ``on_start`` is called when the job starts."""
        if not self._started:
            raise JsqueueError("call ProcessPool.start() before run()")
        if self._closed:
            return closed_before(job)
        try:
            body = protocol.dump_job(job)
        except SerializeError as exc:
            return ChildOutcome(error=exc)
        handle = await self._acquire(ahead)
        if handle is None:
            return closed_before(job)
        loop = asyncio.get_running_loop()
        message = RunJob(job.job_id, job.task, body)
        busy = Busy(job, loop.create_future(), 0.0, 0.0, on_start=on_start, message=message)
        return await self._dispatch(handle, busy)

    async def terminate(self, job_id: str) -> bool:
        """Kill the child running ``job_id`` now (or, handed to a child to run next, see that
        it never runs); its ``run()`` returns :class:`Terminated`. False if no child has it."""
        return self._jobs.terminate(job_id)

    def handed(self) -> list[ChildJob]:
        """The jobs handed to a busy child to run next (not started yet)."""
        return self._jobs.handed()

    def children(self) -> list[ChildInfo]:
        """The children in service, in the order they started."""
        return [self._jobs.info(handle) for handle in self._live]

    async def _acquire(self, ahead: bool = False) -> ChildHandle | None:
        if self._idle:
            return self._idle.popleft()
        if ahead and (handle := self._jobs.child_for_next()) is not None:
            return handle
        waiter: asyncio.Future[ChildHandle | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and (handle := waiter.result()):
                self._release(handle)  # handed over just as the caller gave up
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            raise

    async def _send(self, handle: ChildHandle, busy: Busy) -> None:
        self._jobs.hand(handle, busy)
        assert busy.message is not None
        with contextlib.suppress(OSError):  # a dead child: its reader settles the job
            await handle.send(busy.message)

    async def _dispatch(self, handle: ChildHandle, busy: Busy) -> ChildOutcome:
        await self._send(handle, busy)
        try:
            return await busy.future
        except asyncio.CancelledError:
            self._jobs.withdraw(busy, Terminated(f"the run() of {busy.label} was cancelled"))
            raise

    async def _hand_again(self, busy: Busy) -> None:
        """A job handed to a child that died before starting it goes to another child."""
        handle = None if self._closed else await self._acquire()
        if handle is None:
            if not busy.future.done():
                busy.future.set_result(closed_before(busy.job))
            return
        await self._send(handle, busy)

    # -- children ------------------------------------------------------------------------------

    async def _launch(self) -> ChildHandle:
        config = ChildConfig(
            app_spec=self._spec,
            cwd=os.getcwd(),
            sys_path=tuple(sys.path),
            worker_id=self._worker_id,
            track_memory=self._max_memory is not None,
        )
        return await launch(config, preload_modules(self._spec), self._start_timeout)

    def _adopt(self, handle: ChildHandle) -> None:
        self._live[handle] = None
        self._spawn(self._read(handle))
        self._release(handle)

    def _release(self, handle: ChildHandle) -> None:
        """A child is free: give it to the longest-waiting run(), or keep it idle."""
        if self._closed:
            self._retire(handle)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(handle)
                return
        self._idle.append(handle)

    def _retire(self, handle: ChildHandle) -> None:
        """Take a child out of service and ask it to exit; a replacement starts at once."""
        if handle.retiring:
            return
        handle.retiring = True
        self._live.pop(handle, None)
        with contextlib.suppress(ValueError):
            self._idle.remove(handle)
        self._retiring.add(handle)
        handle.stop(_STOP_GRACE)
        if not self._closed:
            self._refill()

    def _refill(self) -> None:
        task = self._spawn(self._replace())
        self._refills.add(task)
        task.add_done_callback(self._refills.discard)

    async def _replace(self) -> None:
        delay = _RETRY_FIRST
        while not self._closed:
            try:
                handle = await self._launch()
            except Exception as exc:
                log.error("cannot start a pool child (%s); trying again in %.1fs", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            self._adopt(handle)  # retired at once if the pool closed meanwhile
            return

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _read(self, handle: ChildHandle) -> None:
        """Everything a child sends, until it is gone; then settle what it was running."""
        try:
            while True:
                await handle.arrived()
                while (message := handle.take()) is not None:
                    if isinstance(message, Done):
                        self._on_done(handle, message)
                    elif isinstance(message, Report):
                        self._on_report_message(handle, message)
                    else:
                        kind = type(message).__name__
                        raise ValueError(f"unexpected {kind} from a running child")
        except (asyncio.IncompleteReadError, OSError):
            pass  # end of stream: the child exited or was killed
        except Exception:
            log.exception("pool child %d broke the protocol; killing it", handle.pid)
            handle.kill()
        code = None
        try:
            code = await handle.reap()
        finally:
            self._on_exit(handle, code)  # whatever happens, its job is settled

    def _on_done(self, handle: ChildHandle, done: Done) -> None:
        busy = self._jobs.running.get(handle)
        if busy is None or busy.kill_reason is not None or done.job_id != busy.job.job_id:
            return  # being killed: the kill reason is the outcome
        following = self._jobs.finish(handle)
        handle.jobs_done += 1
        if done.rss_mb is not None:
            handle.rss_mb = done.rss_mb
        if not busy.future.done():
            busy.future.set_result(from_done(done, busy.job, handle.pid, handle.rss_mb))
        if following is not None:  # the child started it as it sent this Done
            return
        if self._worn_out(handle):
            self._retire(handle)
        else:
            self._release(handle)

    def _worn_out(self, handle: ChildHandle) -> bool:
        if self._max_tasks is not None and handle.jobs_done >= self._max_tasks:
            log.info("pool child %d retires after %d jobs", handle.pid, handle.jobs_done)
            return True
        rss = handle.rss_mb
        if self._max_memory is not None and rss is not None and rss > self._max_memory:
            log.info("pool child %d retires at %.0f MB resident", handle.pid, rss)
            return True
        return False

    def _on_report_message(self, handle: ChildHandle, report: Report) -> None:
        busy = self._jobs.running.get(handle)
        if self._on_report is None or busy is None or busy.job.job_id != report.job_id:
            return  # sent by a thread the job left behind
        try:
            data = protocol.load_blob(report.data)
            self._on_report(report.job_id, report.kind, data)
        except Exception:
            log.exception("report %r of job %s could not be handled", report.kind, report.job_id)

    def _on_exit(self, handle: ChildHandle, code: int | None) -> None:
        self._live.pop(handle, None)
        self._retiring.discard(handle)
        with contextlib.suppress(ValueError):
            self._idle.remove(handle)
        busy, following = self._jobs.lost(handle)
        if following is not None and following.kill_reason is None:  # (else nobody waits)
            self._spawn(self._hand_again(following))  # it never started there
        if busy is not None:
            error = busy.kill_reason or ChildDied(
                f"pool child {handle.pid} {describe_exit(code)} while running {busy.label}",
                pid=handle.pid,
                exitcode=code,
            )
            if isinstance(error, ChildDied):
                log.warning("%s", error)
            if not busy.future.done():
                duration = asyncio.get_running_loop().time() - busy.began
                busy.future.set_result(ChildOutcome(error=error, pid=handle.pid, duration=duration))
        elif not handle.retiring:
            log.warning("idle pool child %d %s", handle.pid, describe_exit(code))
        if not handle.retiring and not self._closed:
            self._refill()

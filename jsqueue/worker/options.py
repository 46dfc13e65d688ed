"""A worker's options, checked before anything starts: each wrong one is a :class:`ConfigError`
that names it and says what to do."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from jsqueue.app import App, app_spec_of
from jsqueue.config import check_queue
from jsqueue.errors import ConfigError
from jsqueue.worker.execute import Limits

POOLS = ("thread", "process")


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs; build it with :meth:`create`."""

    queues: tuple[str, ...]
    concurrency: int
    pool: str
    limits: Limits
    app_spec: str | None = None
    burst: bool = False
    grace: float = 30.0
    worker_id: str = ""
    #: seconds the event loop may be blocked before the blocking task is named in a warning
    block_warning: float = 1.0
    max_tasks_per_child: int | None = None
    max_memory_per_child: float | None = None
    #: jobs held beyond ``concurrency``, waiting for a free slot
    prefetch: int = 0

    @classmethod
    def create(
        cls,
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
        prefetch: int | None = None,
    ) -> WorkerOptions:
        checked = _queues(queues, app.settings.default_queue)
        if pool not in POOLS:
            raise ConfigError(f"pool must be 'thread' or 'process', not {pool!r}")
        if concurrency is None:
            concurrency = 32 if pool == "thread" else len(os.sched_getaffinity(0))
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, not {concurrency}")
        if prefetch is None:  # see run_worker: children make a held job no crash suspect
            prefetch = concurrency if pool == "process" else 0
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ConfigError(
                f"prefetch must be a whole number of jobs, 0 or more, not {prefetch!r} (0: hold "
                "no job beyond those running)"
            )
        if pool == "thread" and (max_tasks_per_child or max_memory_per_child):
            raise ConfigError(
                "--max-tasks-per-child and --max-memory-per-child recycle pool children: use "
                "them with --pool process"
            )
        limits = Limits(time_limit, soft_time_limit)
        limits.check(app, pool, checked)
        return cls(
            queues=tuple(checked),
            concurrency=concurrency,
            pool=pool,
            limits=limits,
            app_spec=(app_spec or app_spec_of(app)) if pool == "process" else app_spec,
            burst=burst,
            grace=grace,
            worker_id=worker_id or f"{socket.gethostname()}-{os.getpid()}",
            block_warning=block_warning or min(1.0, app.settings.ack_wait / 3),
            max_tasks_per_child=max_tasks_per_child,
            max_memory_per_child=max_memory_per_child,
            prefetch=prefetch,
        )


def hand_ahead(opts: WorkerOptions, app: App) -> int:
    """How many of its ``prefetch`` jobs a process-pool worker hands to busy children to run
    next (see :mod:`jsqueue.pools.assign`): one a child at most, and none where a coroutine task
    is routed to its queues (coroutines share the ``concurrency`` slots with the children, and
    a job handed ahead holds one of them)."""
    if opts.pool != "process":
        return 0
    if any(task.is_async and task.queue in opts.queues for task in app.tasks.values()):
        return 0
    return min(opts.prefetch, opts.concurrency)


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

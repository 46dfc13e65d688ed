"""The public coroutine that runs a worker in your own event loop."""

from __future__ import annotations

from collections.abc import Sequence

from jsqueue.app import App
from jsqueue.worker.job import WorkerStats
from jsqueue.worker.worker import Worker


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
    prefetch: int | None = None,
) -> WorkerStats:
    """Run a worker for ``app`` in the current event loop until it is stopped.

    ``pool="thread"`` (the default) runs ``def`` tasks in threads, ``concurrency`` (default 32)
    jobs at once. ``pool="process"`` runs them in supervised child processes, ``concurrency``
    children (default: the CPU count); they import the app by ``app_spec`` ("module:app",
    found from the tasks' module when not given). ``time_limit`` and ``soft_time_limit`` are
    seconds for tasks that set none; ``max_tasks_per_child`` and ``max_memory_per_child`` (MB
    resident after a job) replace a child once it reaches them. ``prefetch`` is how many jobs
    the worker holds beyond ``concurrency``, waiting for a slot: by default as many as
    ``concurrency`` under the process pool and none under the thread pool, where a crash of the
    worker makes every job it held a suspect that runs alone when it comes back (see the
    README's "Prefetch").

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
        prefetch=prefetch,
    )
    return await worker.run(wait_for_server=wait_for_server)

"""The worker runtime: pull jobs, run them where they belong, settle each exactly once.

:mod:`~jsqueue.worker.worker` pulls and drains, :mod:`~jsqueue.worker.runner` plans one job,
:mod:`~jsqueue.worker.execute` runs its task (on the loop, in a thread or a pool child),
:mod:`~jsqueue.worker.settle` carries the plan out.
"""

from jsqueue.worker.job import WorkerStats
from jsqueue.worker.run import run_worker
from jsqueue.worker.worker import Worker

__all__ = ["Worker", "WorkerStats", "run_worker"]

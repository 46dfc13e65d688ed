"""Pools that run a worker's ``def`` tasks somewhere other than its event loop.

:class:`ProcessPool` runs them in supervised child processes, so a crash, a leak or a runaway
loop costs one job and one child, never the worker. Nothing here touches NATS: the worker pulls,
decodes and settles; the pool only runs.
"""

from jsqueue.pools.child import report
from jsqueue.pools.outcome import ChildInfo, ChildOutcome
from jsqueue.pools.process import ProcessPool
from jsqueue.pools.protocol import ChildJob

__all__ = ["ChildInfo", "ChildJob", "ChildOutcome", "ProcessPool", "report"]

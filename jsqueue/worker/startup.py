"""Starting a worker while NATS is not ready yet: a cluster electing, a node just back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from jsqueue.errors import TransientError

log = logging.getLogger("jsqueue.worker")


async def opened(
    open_: Callable[[], Awaitable[None]],
    undo: Callable[[], Awaitable[None]],
    budget: float,
    worker_id: str,
) -> None:
    """``await open_()``; while it fails with a :class:`TransientError` (JetStream did not
    answer in time), ``undo()`` what it set up and try again, for ``budget`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    while True:
        try:
            await open_()
            return
        except TransientError as exc:
            if loop.time() >= deadline:
                raise
            log.warning("worker %s: NATS is not ready (%s); starting again", worker_id, exc)
        await undo()
        await asyncio.sleep(0.5)

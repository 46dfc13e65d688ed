"""Starting a worker while NATS is not ready yet: a cluster electing, a node just back."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_fixed,
)

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

    def again(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning("worker %s: NATS is not ready (%s); starting again", worker_id, exc)

    async for attempt in AsyncRetrying(
        stop=stop_after_delay(budget),
        wait=wait_fixed(0.5),
        retry=retry_if_exception_type(TransientError),
        before_sleep=again,
        reraise=True,
    ):
        with attempt:
            if attempt.retry_state.attempt_number > 1:
                await undo()  # what the failed try set up
            await open_()

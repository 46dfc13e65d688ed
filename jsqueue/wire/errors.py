"""What a nats-py error means to jsqueue, and riding out JetStream's leader elections.

Every public coroutine of the wire package raises only jsqueue's errors: :func:`translate` maps a
nats-py error to one of four a caller can act on: :class:`TransientError` (try again: a time-out,
an election, a reconnect), :class:`RefusedError` (a permission), :class:`InvalidError` (never
succeeds as sent: a bad key or subject, a size limit) and :class:`ConnectionLost` (the client is
closed for good). :func:`translated` applies it to a coroutine method.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import nats.errors
import nats.js.errors
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

from jsqueue.errors import (
    ConnectionLost,
    InvalidError,
    JsqueueError,
    RefusedError,
    TransientError,
)

log = logging.getLogger("jsqueue.wire.broker")
P = ParamSpec("P")
T = TypeVar("T")

#: What JetStream answers while it elects a leader (a cluster starting, a node coming back).
NOT_READY = (
    TimeoutError,
    nats.errors.TimeoutError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
)
#: Publishes are retried on these (with the same Msg-Id, so a retry never stores a job twice).
RETRYABLE = (
    nats.errors.TimeoutError,
    asyncio.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.ServiceUnavailableError,
)
_TRANSIENT = (
    *RETRYABLE,
    nats.errors.StaleConnectionError,
    nats.errors.ConnectionDrainingError,
    nats.errors.FlushTimeoutError,
    OSError,
)
_INVALID = (
    nats.errors.MaxPayloadError,
    nats.errors.BadSubjectError,
    nats.errors.BadHeaderError,
    nats.js.errors.InvalidKeyError,
    nats.js.errors.InvalidBucketNameError,
)
#: The nats-py errors the wire package catches to translate (everything it can raise).
NATS_ERRORS = (nats.errors.Error, TimeoutError, OSError)


def placement_pending(exc: nats.js.errors.APIError, doing: str) -> TransientError | None:
    """A :class:`TransientError` when JetStream cannot place or change a replicated stream or
    bucket only for now: a peer is offline (a node restarting) or the meta leader is being
    elected (503, "JetStream system temporarily unavailable"); retried while riding elections.
    ``None`` for every other refusal, which stays the caller's clear error."""
    if exc.err_code == 10005 and "offline" in (exc.description or ""):
        return TransientError(f"{doing}: a JetStream peer is offline ({exc.description})")
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):
        return TransientError(f"{doing}: JetStream is electing a leader ({exc.description})")
    return None


def translate(exc: BaseException) -> BaseException:
    """The jsqueue error for a nats-py error (others are returned as they are)."""
    if isinstance(exc, JsqueueError) or not isinstance(exc, Exception):
        return exc
    text = str(exc) or type(exc).__name__
    if isinstance(exc, nats.errors.ConnectionClosedError):
        return ConnectionLost(f"the NATS connection is closed: {text}")
    if isinstance(exc, _INVALID):
        return InvalidError(f"NATS cannot take this: {text}")
    if isinstance(exc, _TRANSIENT):
        return TransientError(f"NATS did not answer in time or is unavailable: {text}")
    if isinstance(exc, nats.js.errors.APIError):
        if "ermission" in text:
            return RefusedError(f"NATS refused it: {text}")
        return InvalidError(f"JetStream refused it: {exc.description or text} ({exc.err_code})")
    if isinstance(exc, nats.errors.Error):
        return TransientError(f"NATS error: {text}")
    return exc


def translated(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Wrap a coroutine function so that nats-py errors leave it as jsqueue's."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except NATS_ERRORS as exc:
            raise translate(exc) from None

    return wrapper


def while_electing(budget: float, waiting_for: str = "") -> AsyncRetrying:
    """Retry what times out or is "temporarily unavailable" while JetStream elects leaders
    (raw nats-py errors inside the wire package, :class:`TransientError` above it). With
    ``waiting_for``, the first failed try logs one warning naming it."""

    def announce(state: RetryCallState) -> None:
        if waiting_for and state.attempt_number == 1 and state.outcome is not None:
            exc = state.outcome.exception()
            log.warning(
                "%s did not answer (%s: %s); trying again for up to %.0fs",
                waiting_for,
                type(exc).__name__,
                exc,
                budget,
            )

    return AsyncRetrying(
        stop=stop_after_delay(budget),
        wait=wait_exponential(multiplier=0.1, max=1.0),
        retry=retry_if_exception_type((*NOT_READY, TransientError)),
        before_sleep=announce,
        reraise=True,
    )


async def riding_elections(budget: float, operation: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``await operation(*args)``, retried (with the same arguments) for ``budget`` seconds
    while JetStream answers that it is electing a leader; the first try costs nothing extra."""
    try:
        return await operation(*args)
    except (*NOT_READY, TransientError):
        pass
    async for attempt in while_electing(budget):
        with attempt:
            return await operation(*args)
    raise AssertionError("unreachable")  # pragma: no cover

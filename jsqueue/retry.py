"""Retry policies in tenacity's vocabulary, evaluated without sleeping.

A worker asks the policy, after a failed attempt, for the wait before the next one and passes it to
the server (``nak(delay=...)``): nothing sleeps in the worker, and the attempt number is the
server's delivery count, so it survives worker crashes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import tenacity
from tenacity.retry import retry_base
from tenacity.stop import stop_base
from tenacity.wait import wait_base

_RETRYING = tenacity.Retrying()  # only a handle that RetryCallState requires; never called


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed job runs again, and after how long.

    ``stop``, ``wait`` and ``retry`` are tenacity strategies, e.g.
    ``RetryPolicy(stop=stop_after_attempt(5), wait=wait_exponential(0.5, max=60),
    retry=retry_if_exception_type(IOError))``. Attempts count from 1 (the first run).
    """

    stop: stop_base = field(default_factory=lambda: tenacity.stop_after_attempt(3))
    wait: wait_base = field(default_factory=lambda: tenacity.wait_exponential(multiplier=1, max=60))
    retry: retry_base = field(default_factory=lambda: tenacity.retry_if_exception_type(Exception))

    def next_delay(self, attempt: int, exc: BaseException, elapsed: float = 0.0) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None if the job must not retry.

        ``elapsed`` is the time since the job was first enqueued, for ``stop_after_delay``.
        """
        state = _state(attempt, elapsed, exc)
        if not self.retry(state) or self.stop(state):
            return None
        return max(0.0, float(self.wait(state)))

    def retries(self, exc: BaseException) -> bool:
        """Whether the ``retry`` predicate accepts this exception at all."""
        return bool(self.retry(_state(1, 0.0, exc)))

    def should_stop(self, attempt: int, elapsed: float = 0.0) -> bool:
        """Whether attempt ``attempt`` was the last one the ``stop`` strategy allows."""
        return bool(self.stop(_state(attempt, elapsed, _SIMULATED)))

    def wait_for(self, attempt: int, exc: BaseException, elapsed: float = 0.0) -> float:
        """The ``wait`` strategy's answer after attempt ``attempt``, ignoring stop and retry."""
        return max(0.0, float(self.wait(_state(attempt, elapsed, exc))))

    def stops_by(self, limit: int) -> bool:
        """Whether ``stop`` ends the attempts at or before attempt ``limit``.

        Elapsed time is simulated as the sum of the policy's waits, so ``stop_after_delay`` counts.
        """
        elapsed = 0.0
        for attempt in range(1, limit + 1):
            if self.should_stop(attempt, elapsed):
                return True
            elapsed += self.wait_for(attempt, _SIMULATED, elapsed)
        return False


_SIMULATED = RuntimeError("simulated failure")


def _state(attempt: int, elapsed: float, exc: BaseException) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(retry_object=_RETRYING, fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.idle_for = elapsed
    state.set_exception((type(exc), exc, exc.__traceback__))
    state.start_time = (state.outcome_timestamp or time.monotonic()) - elapsed
    return state

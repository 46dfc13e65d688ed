"""What happens to a job after an attempt: a pure decision, unit-tested without a server.

The worker gathers the facts (what the task raised, which delivery this was, the task's retry
policy) and :func:`decide` answers ack, retry after a delay, or dead-letter with a reason. The
worker then carries the decision out.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from jsqueue.errors import Reject, Retry
from jsqueue.retry import RetryPolicy

#: The wait before a retry the task asked for without saying how long, and no policy says either.
DEFAULT_RETRY_DELAY = 1.0


class Action(enum.Enum):
    ACK = "ack"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


class Reason(enum.StrEnum):
    """Why a job was dead-lettered (a DLQ record's ``reason``)."""

    EXHAUSTED = "retries_exhausted"
    NOT_RETRYABLE = "not_retryable"
    REJECTED = "rejected"
    UNDECODABLE = "undecodable"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_TASK = "unknown_task"
    WRONG_ARGUMENTS = "wrong_arguments"
    CRASH_LOOP = "crash_loop"
    UNSERIALIZABLE_RESULT = "unserializable_result"


@dataclass(frozen=True)
class Decision:
    action: Action
    delay: float = 0.0
    reason: Reason | None = None

    @property
    def final(self) -> bool:
        return self.action is not Action.RETRY


ACK = Decision(Action.ACK)


def dead(reason: Reason) -> Decision:
    return Decision(Action.DEAD_LETTER, reason=reason)


def decide(
    exc: BaseException | None,
    *,
    attempt: int,
    max_deliver: int,
    policy: RetryPolicy | None,
    elapsed: float = 0.0,
) -> Decision:
    """The fate of a job whose attempt number ``attempt`` raised ``exc`` (None: it succeeded).

    - success: ack;
    - ``Reject``: dead-letter now;
    - ``Retry(delay)``: retry after ``delay`` (or the policy's wait), unless the policy's stop or
      ``max_deliver`` says this was the last attempt;
    - another exception: retry after the policy's wait if the policy retries it and has not
      stopped; otherwise dead-letter (no policy, not retryable, or exhausted).
    """
    if exc is None:
        return ACK
    if isinstance(exc, Reject):
        return dead(Reason.REJECTED)
    last = attempt >= max_deliver
    if isinstance(exc, Retry):
        if last or (policy is not None and policy.should_stop(attempt, elapsed)):
            return dead(Reason.EXHAUSTED)
        if exc.delay is not None:
            return Decision(Action.RETRY, max(0.0, float(exc.delay)))
        wait = policy.wait_for(attempt, exc, elapsed) if policy else DEFAULT_RETRY_DELAY
        return Decision(Action.RETRY, wait)
    if policy is None or not policy.retries(exc):
        return dead(Reason.NOT_RETRYABLE)
    delay = None if last else policy.next_delay(attempt, exc, elapsed)
    if delay is None:
        return dead(Reason.EXHAUSTED)
    return Decision(Action.RETRY, delay)


def unknown_task(attempt: int, retries: int, delay: float) -> Decision:
    """An unknown task may be a rolling deploy: retry ``retries`` deliveries, then dead-letter."""
    if attempt >= retries:
        return dead(Reason.UNKNOWN_TASK)
    return Decision(Action.RETRY, delay)

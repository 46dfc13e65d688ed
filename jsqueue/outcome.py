"""What happens to a job after a delivery: a pure settlement plan, unit-tested without a server.

The runner gathers the facts (what the task raised, which delivery this was, the task's retry
policy, whether a result is kept and whether canvas steps follow) and the functions here answer
with a :class:`Plan`: which state to record, which follow-ups to carry out, what to do with the
delivery (ack, ``nak`` with a delay, or a dead-letter copy and then ``term``), which counter to
bump and which event to emit. :mod:`jsqueue.worker.settle` carries every plan out in one
place, in the order the plan's promises need (result before ack, dead-letter copy before term).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from jsqueue.errors import Reject, Retry
from jsqueue.retry import RetryPolicy

#: The wait before a retry the task asked for without saying how long, and no policy says either.
DEFAULT_RETRY_DELAY = 1.0


class Action(enum.Enum):
    """What the delivery gets, last."""

    ACK = "ack"
    RETRY = "retry"  # nak with a delay
    DEAD_LETTER = "dead_letter"  # a copy in the dead-letter stream first, then term


class Record(enum.Enum):
    """The state written to the job's result record (NONE: nothing is written)."""

    NONE = "NONE"
    SUCCESS = "SUCCESS"
    RETRY = "RETRY"
    FAILURE = "FAILURE"
    DEAD = "DEAD"
    EXPIRED = "EXPIRED"
    REVOKED = "REVOKED"


class FollowUp(enum.Enum):
    """What the canvas steps after the job get."""

    NONE = "none"
    CONTINUE = "continue"  # the chain's next step is sent; a chord member is counted
    ABORT = "abort"  # the chain's later steps fail; the chord fails


class Counter(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRIED = "retried"
    DEAD_LETTERED = "dead_lettered"
    SKIPPED = "skipped"


class Event(enum.Enum):
    """The job event emitted (the kinds of :data:`jsqueue.hooks.EVENT_KINDS`)."""

    NONE = ""
    SUCCEEDED = "succeeded"
    RETRIED = "retried"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    EXPIRED = "expired"
    REVOKED = "revoked"


class Reason(enum.StrEnum):
    """Why a job was dead-lettered (a dead letter's ``reason``)."""

    EXHAUSTED = "retries_exhausted"
    NOT_RETRYABLE = "not_retryable"
    REJECTED = "rejected"
    UNDECODABLE = "undecodable"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_TASK = "unknown_task"
    WRONG_ARGUMENTS = "wrong_arguments"
    CRASH_LOOP = "crash_loop"
    UNSERIALIZABLE_RESULT = "unserializable_result"
    RESULT_TOO_LARGE = "result_too_large"
    #: the job's arguments were kept in the object store, and are gone (past result_ttl)
    ARGUMENTS_LOST = "arguments_lost"
    #: jsqueue itself failed on the job (a bug: report it with the letter's traceback)
    WORKER_ERROR = "worker_error"


#: Reasons for which the task ran and failed: state FAILURE and counter FAILED; the rest are DEAD.
TASK_FAILURES = frozenset(
    {
        Reason.EXHAUSTED,
        Reason.NOT_RETRYABLE,
        Reason.UNSERIALIZABLE_RESULT,
        Reason.RESULT_TOO_LARGE,
    }
)


@dataclass(frozen=True)
class Plan:
    """How one delivery is settled. ``delay`` is for RETRY, ``reason`` for DEAD_LETTER."""

    action: Action
    record: Record
    follow_up: FollowUp
    counter: Counter
    event: Event
    delay: float = 0.0
    reason: Reason | None = None
    #: the job is over after this delivery (no retry follows, it was not moved or given back)
    final: bool = True

    def without_result(self) -> Plan:
        """The same plan for a task that keeps no result (``ignore_result``)."""
        if self.record is Record.NONE:
            return self
        if self.record is Record.SUCCESS and self.action is Action.ACK:
            return _SUCCEEDED_UNRECORDED[self.follow_up is FollowUp.CONTINUE]
        return replace(self, record=Record.NONE)


def succeeded(*, followers: bool) -> Plan:
    return _SUCCEEDED[followers]


_SUCCEEDED = {
    followers: Plan(
        Action.ACK,
        Record.SUCCESS,
        FollowUp.CONTINUE if followers else FollowUp.NONE,
        Counter.SUCCEEDED,
        Event.SUCCEEDED,
    )
    for followers in (False, True)
}
#: the same for tasks that keep no result (``ignore_result``)
_SUCCEEDED_UNRECORDED = {
    followers: replace(plan, record=Record.NONE) for followers, plan in _SUCCEEDED.items()
}


def retry(delay: float) -> Plan:
    """Run again after ``delay`` seconds; later steps wait for the job's outcome."""
    counter, event = Counter.RETRIED, Event.RETRIED
    return Plan(Action.RETRY, Record.RETRY, FollowUp.NONE, counter, event, delay, final=False)


def dead(reason: Reason, *, followers: bool) -> Plan:
    """Dead-letter: FAILURE when the task ran and failed, DEAD when it could not run."""
    failed = reason in TASK_FAILURES
    return Plan(
        Action.DEAD_LETTER,
        Record.FAILURE if failed else Record.DEAD,
        FollowUp.ABORT if followers else FollowUp.NONE,
        Counter.FAILED if failed else Counter.DEAD_LETTERED,
        Event.FAILED if failed else Event.DEAD_LETTERED,
        reason=reason,
    )


def skipped(record: Record, *, followers: bool) -> Plan:
    """A job that must not run (EXPIRED or REVOKED): record why, end what follows, ack."""
    assert record in (Record.EXPIRED, Record.REVOKED)
    event = Event.EXPIRED if record is Record.EXPIRED else Event.REVOKED
    follow = FollowUp.ABORT if followers else FollowUp.NONE
    return Plan(Action.ACK, record, follow, Counter.SKIPPED, event)


def skipped_moved() -> Plan:
    """An old message of a job that moved on (re-published onto a retry schedule): ack it,
    record nothing, count it skipped."""
    return Plan(Action.ACK, Record.NONE, FollowUp.NONE, Counter.SKIPPED, Event.NONE, final=False)


def already_final(success: bool, *, followers: bool) -> Plan:
    """A redelivered job whose outcome is recorded: never run or dead-letter it again.

    Its follow-ups are carried out again (all are idempotent), since the delivery that recorded
    the outcome may have died before sending them.
    """
    follow = FollowUp.NONE if not followers else FollowUp.CONTINUE if success else FollowUp.ABORT
    return Plan(Action.ACK, Record.NONE, follow, Counter.SKIPPED, Event.NONE)


def given_back() -> Plan:
    """A job that could not finish here through no fault of its own: ``nak`` it at once."""
    return Plan(Action.RETRY, Record.NONE, FollowUp.NONE, Counter.SKIPPED, Event.NONE, final=False)


def decide(
    exc: BaseException | None,
    *,
    attempt: int,
    max_deliver: int,
    policy: RetryPolicy | None,
    elapsed: float = 0.0,
    followers: bool = False,
) -> Plan:
    """The plan for a job whose attempt number ``attempt`` raised ``exc`` (None: it succeeded).

    - success: record it, carry on with what follows, ack;
    - ``Reject``: dead-letter now;
    - ``Retry(delay)``: retry after ``delay`` (or the policy's wait), unless the policy's stop or
      ``max_deliver`` says this was the last attempt;
    - another exception: retry after the policy's wait if the policy retries it and has not
      stopped; otherwise dead-letter (no policy, not retryable, or exhausted).
    """
    if exc is None:
        return succeeded(followers=followers)
    if isinstance(exc, Reject):
        return dead(Reason.REJECTED, followers=followers)
    last = attempt >= max_deliver
    if isinstance(exc, Retry):
        if last or (policy is not None and policy.should_stop(attempt, elapsed)):
            return dead(Reason.EXHAUSTED, followers=followers)
        if exc.delay is not None:
            return retry(max(0.0, float(exc.delay)))
        return retry(policy.wait_for(attempt, exc, elapsed) if policy else DEFAULT_RETRY_DELAY)
    if policy is None or not policy.retries(exc):
        return dead(Reason.NOT_RETRYABLE, followers=followers)
    delay = None if last else policy.next_delay(attempt, exc, elapsed)
    if delay is None:
        return dead(Reason.EXHAUSTED, followers=followers)
    return retry(delay)


def unknown_task(attempt: int, retries: int, delay: float, *, followers: bool = False) -> Plan:
    """An unknown task may be a rolling deploy: retry ``retries`` deliveries, then dead-letter."""
    if attempt >= retries:
        return dead(Reason.UNKNOWN_TASK, followers=followers)
    return retry(delay)

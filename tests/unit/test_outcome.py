"""The settlement plan: the decision table, without a server."""

import pytest
from tenacity import retry_if_exception_type, stop_after_attempt, wait_fixed

from jsqueue import Reject, Retry, RetryPolicy
from jsqueue.outcome import (
    Action,
    Counter,
    Event,
    FollowUp,
    Plan,
    Reason,
    Record,
    already_final,
    dead,
    decide,
    skipped,
    unknown_task,
)

POLICY = RetryPolicy(
    stop=stop_after_attempt(3), wait=wait_fixed(2), retry=retry_if_exception_type(IOError)
)


def fate(
    exc: BaseException | None,
    attempt: int = 1,
    policy: RetryPolicy | None = POLICY,
    followers: bool = False,
) -> Plan:
    return decide(exc, attempt=attempt, max_deliver=10, policy=policy, followers=followers)


@pytest.mark.parametrize(
    ("exc", "attempt", "policy", "action", "delay", "reason"),
    [
        (None, 1, POLICY, Action.ACK, 0.0, None),
        (OSError(), 1, POLICY, Action.RETRY, 2.0, None),
        (OSError(), 2, POLICY, Action.RETRY, 2.0, None),
        (OSError(), 3, POLICY, Action.DEAD_LETTER, 0.0, Reason.EXHAUSTED),
        (ValueError(), 1, POLICY, Action.DEAD_LETTER, 0.0, Reason.NOT_RETRYABLE),
        (OSError(), 1, None, Action.DEAD_LETTER, 0.0, Reason.NOT_RETRYABLE),
        (Reject("no"), 1, POLICY, Action.DEAD_LETTER, 0.0, Reason.REJECTED),
        (Retry(delay=7), 1, POLICY, Action.RETRY, 7.0, None),
        (Retry(), 1, POLICY, Action.RETRY, 2.0, None),
        (Retry(delay=7), 3, POLICY, Action.DEAD_LETTER, 0.0, Reason.EXHAUSTED),
        (Retry(delay=7), 1, None, Action.RETRY, 7.0, None),
        (Retry(), 1, None, Action.RETRY, 1.0, None),
        (Retry(delay=1), 10, None, Action.DEAD_LETTER, 0.0, Reason.EXHAUSTED),
    ],
)
def test_decision_table(
    exc: BaseException | None,
    attempt: int,
    policy: RetryPolicy | None,
    action: Action,
    delay: float,
    reason: Reason | None,
) -> None:
    plan = fate(exc, attempt, policy)
    assert (plan.action, plan.delay, plan.reason) == (action, delay, reason)


def test_max_deliver_caps_a_generous_policy() -> None:
    policy = RetryPolicy(stop=stop_after_attempt(50), wait=wait_fixed(1))
    assert decide(OSError(), attempt=9, max_deliver=10, policy=policy).action is Action.RETRY
    last = decide(OSError(), attempt=10, max_deliver=10, policy=policy)
    assert last.reason is Reason.EXHAUSTED


def test_unknown_task_retries_then_dead_letters() -> None:
    assert unknown_task(1, 3, 10.0).action is Action.RETRY
    assert unknown_task(2, 3, 10.0).delay == 10.0
    assert unknown_task(3, 3, 10.0).reason is Reason.UNKNOWN_TASK


def test_success_records_then_continues_then_acks() -> None:
    plan = fate(None, followers=True)
    assert (plan.record, plan.follow_up, plan.action) == (
        Record.SUCCESS,
        FollowUp.CONTINUE,
        Action.ACK,
    )
    assert (plan.counter, plan.event) == (Counter.SUCCEEDED, Event.SUCCEEDED)
    assert fate(None).follow_up is FollowUp.NONE


def test_a_retry_records_retry_and_never_touches_what_follows() -> None:
    plan = fate(OSError(), followers=True)
    assert (plan.record, plan.follow_up, plan.counter) == (
        Record.RETRY,
        FollowUp.NONE,
        Counter.RETRIED,
    )


@pytest.mark.parametrize(
    ("reason", "record", "counter", "event"),
    [
        (Reason.EXHAUSTED, Record.FAILURE, Counter.FAILED, Event.FAILED),
        (Reason.NOT_RETRYABLE, Record.FAILURE, Counter.FAILED, Event.FAILED),
        (Reason.UNSERIALIZABLE_RESULT, Record.FAILURE, Counter.FAILED, Event.FAILED),
        (Reason.RESULT_TOO_LARGE, Record.FAILURE, Counter.FAILED, Event.FAILED),
        (Reason.REJECTED, Record.DEAD, Counter.DEAD_LETTERED, Event.DEAD_LETTERED),
        (Reason.MALFORMED, Record.DEAD, Counter.DEAD_LETTERED, Event.DEAD_LETTERED),
        (Reason.UNKNOWN_TASK, Record.DEAD, Counter.DEAD_LETTERED, Event.DEAD_LETTERED),
        (Reason.CRASH_LOOP, Record.DEAD, Counter.DEAD_LETTERED, Event.DEAD_LETTERED),
        (Reason.WORKER_ERROR, Record.DEAD, Counter.DEAD_LETTERED, Event.DEAD_LETTERED),
    ],
)
def test_dead_letters_say_whether_the_task_failed(
    reason: Reason, record: Record, counter: Counter, event: Event
) -> None:
    plan = dead(reason, followers=True)
    assert plan.action is Action.DEAD_LETTER
    assert (plan.record, plan.counter, plan.event, plan.reason) == (record, counter, event, reason)
    assert plan.follow_up is FollowUp.ABORT
    assert dead(reason, followers=False).follow_up is FollowUp.NONE


def test_skips_and_redeliveries_of_finished_jobs_are_acked_without_a_dead_letter() -> None:
    for record in (Record.EXPIRED, Record.REVOKED):
        plan = skipped(record, followers=True)
        assert (plan.action, plan.record, plan.follow_up) == (Action.ACK, record, FollowUp.ABORT)
    done = already_final(True, followers=True)
    assert (done.action, done.record, done.follow_up) == (
        Action.ACK,
        Record.NONE,
        FollowUp.CONTINUE,
    )
    assert already_final(False, followers=True).follow_up is FollowUp.ABORT
    assert already_final(True, followers=False).follow_up is FollowUp.NONE
    assert done.event is Event.NONE


def test_ignore_result_keeps_the_rest_of_the_plan() -> None:
    plan = dead(Reason.WRONG_ARGUMENTS, followers=True).without_result()
    assert (plan.record, plan.action, plan.follow_up) == (
        Record.NONE,
        Action.DEAD_LETTER,
        FollowUp.ABORT,
    )

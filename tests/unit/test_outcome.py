import pytest
from tenacity import retry_if_exception_type, stop_after_attempt, wait_fixed

from jsqueue import Reject, Retry, RetryPolicy
from jsqueue.outcome import Action, Decision, Reason, decide, unknown_task

POLICY = RetryPolicy(
    stop=stop_after_attempt(3), wait=wait_fixed(2), retry=retry_if_exception_type(IOError)
)


def fate(
    exc: BaseException | None, attempt: int = 1, policy: RetryPolicy | None = POLICY
) -> Decision:
    return decide(exc, attempt=attempt, max_deliver=10, policy=policy)


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
    decision = fate(exc, attempt, policy)
    assert (decision.action, decision.delay, decision.reason) == (action, delay, reason)


def test_max_deliver_caps_a_generous_policy() -> None:
    policy = RetryPolicy(stop=stop_after_attempt(50), wait=wait_fixed(1))
    assert decide(OSError(), attempt=9, max_deliver=10, policy=policy).action is Action.RETRY
    last = decide(OSError(), attempt=10, max_deliver=10, policy=policy)
    assert last.reason is Reason.EXHAUSTED


def test_unknown_task_retries_then_dead_letters() -> None:
    assert unknown_task(1, 3, 10.0) == Decision(Action.RETRY, 10.0)
    assert unknown_task(2, 3, 10.0) == Decision(Action.RETRY, 10.0)
    assert unknown_task(3, 3, 10.0).reason is Reason.UNKNOWN_TASK

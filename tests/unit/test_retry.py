from tenacity import (
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_fixed,
)

from jsqueue import RetryPolicy


def test_next_delay_follows_the_wait_strategy_until_stop() -> None:
    policy = RetryPolicy(stop=stop_after_attempt(4), wait=wait_exponential(multiplier=0.5, max=60))
    delays = [policy.next_delay(n, ValueError()) for n in range(1, 5)]
    assert delays == [0.5, 1.0, 2.0, None]


def test_retry_predicate_selects_exceptions() -> None:
    policy = RetryPolicy(retry=retry_if_exception_type(IOError))
    assert policy.next_delay(1, OSError()) is not None
    assert policy.next_delay(1, ValueError()) is None
    assert policy.retries(ConnectionError())
    assert not policy.retries(KeyError())


def test_stop_after_delay_uses_time_since_enqueue() -> None:
    policy = RetryPolicy(stop=stop_after_delay(10), wait=wait_fixed(1))
    assert policy.next_delay(2, ValueError(), elapsed=5) == 1.0
    assert policy.next_delay(2, ValueError(), elapsed=11) is None


def test_stops_by_simulates_attempts_and_waits() -> None:
    assert RetryPolicy(stop=stop_after_attempt(5)).stops_by(5)
    assert not RetryPolicy(stop=stop_after_attempt(6)).stops_by(5)
    # 60 one-second waits pass before a 60 s delay stops it: more than 10 attempts
    assert not RetryPolicy(stop=stop_after_delay(60), wait=wait_fixed(1)).stops_by(10)
    assert RetryPolicy(stop=stop_after_delay(60), wait=wait_fixed(30)).stops_by(10)

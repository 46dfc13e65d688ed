"""Carrying out settlement plans, without a server: the order of the steps and each fallback.

The broker, the result store and the delivery are stand-ins that write what is done to them into
one log, and fail on demand with the errors the broker layer raises.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from jsqueue import App
from jsqueue.envelope import Envelope, encode
from jsqueue.errors import InvalidError, TransientError
from jsqueue.outcome import Reason, already_final, dead, decide, retry, skipped
from jsqueue.outcome import Record as R
from jsqueue.services import continuation
from jsqueue.services import dlq as dead_letters
from jsqueue.worker.job import Job, WorkerStats
from jsqueue.worker.settle import Settler


class Log(list[str]):
    def __init__(self) -> None:
        super().__init__()
        self.fail: dict[str, list[BaseException]] = {}

    def do(self, step: str) -> None:
        errors = self.fail.get(step)
        if errors:
            raise errors.pop(0)
        self.append(step)


class Broker:
    def __init__(self, log: Log) -> None:
        self.log = log
        self.max_payload = 1_000
        self.letters: list[tuple[bytes, dict[str, str]]] = []

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        kind = "dlq-body" if dead_letters.FORMAT in headers else "dlq"
        self.log.do(kind)
        self.letters.append((payload, headers))


class Results:
    def __init__(self, log: Log) -> None:
        self.log = log
        self.records: dict[str, dict[str, Any]] = {}

    async def write_final(self, job_id: str, data: bytes, notify: str | None = None) -> None:
        state = json.loads(data)["state"]
        self.log.do(f"record {state}" + (f" notify {notify}" if notify else ""))
        self.records[job_id] = json.loads(data)

    async def write_progress(self, job_id: str, data: bytes) -> None:
        state = json.loads(data)["state"]
        self.log.do(f"record {state}")
        self.records[job_id] = json.loads(data)


class Delivery:
    def __init__(self, log: Log, data: bytes) -> None:
        self.log = log
        self.data = data
        self.queue = "default"
        self.attempt = 1
        self.stream_seq = 7
        self.headers: dict[str, str] = {}

    async def ack(self) -> None:
        self.log.do("ack")

    async def nak(self, delay: float = 0.0) -> None:
        self.log.do(f"nak {delay:g}")

    async def term(self) -> None:
        self.log.do("term")


@pytest.fixture
def log() -> Log:
    return Log()


@pytest.fixture
def settler(log: Log, monkeypatch: pytest.MonkeyPatch) -> Settler:
    async def after_success(app: object, env: object, value: object) -> None:
        log.do("follow continue")

    async def after_failure(
        app: object, env: object, error: object, *, errbacks: bool = True
    ) -> None:
        log.do("follow abort" if errbacks else "follow abort, no error callbacks")

    async def abandon(app: object, env: object, error: object) -> None:
        log.do("abandon")

    monkeypatch.setattr(continuation, "after_success", after_success)
    monkeypatch.setattr(continuation, "after_failure", after_failure)
    monkeypatch.setattr(continuation, "abandon", abandon)
    return Settler(App("unit"), "w1", Broker(log), Results(log), [], WorkerStats())  # type: ignore[arg-type]


def job(
    log: Log,
    *,
    payload: bytes | None = None,
    error: BaseException | None = None,
    notify: str | None = None,
) -> Job:
    env = Envelope(id="j1", task="t.add", link=({"task": "t.next"},), notify=notify)
    data = payload if payload is not None else encode(env)
    new = Job(Delivery(log, data), env=env, job_id="j1", task_name="t.add")  # type: ignore[arg-type]
    new.result = b'{"state":"SUCCESS","result":3}'
    new.error = error
    return new


async def test_success_is_recorded_then_followed_then_acked(log: Log, settler: Settler) -> None:
    await settler.settle(job(log), decide(None, attempt=1, max_deliver=3, policy=None,
                                           followers=True))  # fmt: skip
    assert log == ["record SUCCESS", "follow continue", "ack"]
    assert settler.stats.succeeded == 1


async def test_a_dead_letter_is_stored_before_the_record_and_the_term(
    log: Log, settler: Settler
) -> None:
    await settler.settle(job(log, error=ValueError("no")), dead(Reason.NOT_RETRYABLE,
                                                                followers=True))  # fmt: skip
    assert log == ["dlq", "record FAILURE", "follow abort", "term"]
    assert settler.stats.failed == 1


async def test_a_retry_records_retry_then_naks(log: Log, settler: Settler) -> None:
    await settler.settle(job(log, error=OSError("later")), retry(2.5))
    assert log == ["record RETRY", "nak 2.5"]


@pytest.mark.parametrize("record", [R.EXPIRED, R.REVOKED])
async def test_a_skip_records_why_ends_what_follows_and_acks(
    log: Log, settler: Settler, record: R
) -> None:
    await settler.settle(job(log), skipped(record, followers=True))
    # a job that never ran sends no error callbacks (as in Celery): only its followers end
    assert log == [f"record {record.value}", "follow abort, no error callbacks", "ack"]


async def test_a_finished_job_delivered_again_only_follows_up_and_acks(
    log: Log, settler: Settler
) -> None:
    await settler.settle(job(log), already_final(True, followers=True))
    assert log == ["follow continue", "ack"]
    assert settler.stats.skipped == 1


async def test_a_success_that_cannot_be_stored_becomes_a_failure(
    log: Log, settler: Settler
) -> None:
    log.fail["record SUCCESS"] = [InvalidError("maximum payload exceeded")]
    plan = decide(None, attempt=1, max_deliver=3, policy=None, followers=True)
    await settler.settle(done := job(log), plan)
    assert log == ["dlq", "record FAILURE", "follow abort", "term"]
    assert isinstance(done.error, InvalidError)
    letter = dead_letters.parse(_stored(settler))
    assert letter.reason == Reason.UNSERIALIZABLE_RESULT.value


async def test_a_payload_near_max_payload_keeps_its_record_in_the_body(
    log: Log, settler: Settler
) -> None:
    await settler.settle(job(log, payload=b"x" * 900), dead(Reason.UNDECODABLE, followers=False))
    assert log == ["dlq-body", "record DEAD", "term"]
    letter = dead_letters.parse(_stored(settler))
    assert (letter.reason, letter.payload_truncated, letter.payload_size) == (
        "undecodable",
        True,
        900,
    )


async def test_a_refused_dead_letter_falls_back_to_the_body_then_to_a_log_line(
    log: Log, settler: Settler, caplog: pytest.LogCaptureFixture
) -> None:
    log.fail["dlq"] = [InvalidError("header too large")]
    await settler.settle(job(log), dead(Reason.CRASH_LOOP, followers=False))
    assert log == ["dlq-body", "record DEAD", "term"]
    log.clear()
    log.fail["dlq"] = [InvalidError("no")]
    log.fail["dlq-body"] = [InvalidError("still no")]
    with caplog.at_level(logging.ERROR):
        await settler.settle(job(log), dead(Reason.CRASH_LOOP, followers=False))
    assert log == ["record DEAD", "term"]  # never an endless redelivery
    assert "could not be dead-lettered" in caplog.text


async def test_transient_failures_leave_the_job_unsettled(log: Log, settler: Settler) -> None:
    for step in ("dlq", "record DEAD", "follow abort"):
        log.clear()
        log.fail[step] = [TransientError("election")]
        with pytest.raises(TransientError):
            await settler.settle(job(log), dead(Reason.CRASH_LOOP, followers=True))
        assert "term" not in log


async def test_a_follow_up_that_can_never_be_sent_ends_what_follows(
    log: Log, settler: Settler
) -> None:
    log.fail["follow continue"] = [InvalidError("chord has no record")]
    await settler.settle(job(log), decide(None, attempt=1, max_deliver=3, policy=None,
                                           followers=True))  # fmt: skip
    assert log == ["record SUCCESS", "abandon", "ack"]


async def test_a_refused_state_record_is_written_again_without_its_traceback(
    log: Log, settler: Settler
) -> None:
    log.fail["record FAILURE"] = [InvalidError("too large")]
    await settler.settle(job(log, error=ValueError("x" * 5000)), dead(Reason.NOT_RETRYABLE,
                                                                      followers=False))  # fmt: skip
    assert log[1:] == ["record FAILURE", "term"]
    error = settler.results.records["j1"]["error"]  # type: ignore[attr-defined]
    assert "traceback" not in error
    assert len(error["message"]) <= 200


def _stored(settler: Settler) -> Any:
    from jsqueue.wire.streams import StoredMessage

    body, headers = settler.broker.letters[-1]  # type: ignore[attr-defined]
    return StoredMessage(1, "jsq.dlq.default", body, headers)


async def test_final_records_tell_the_sender_and_retries_do_not(log: Log, settler: Settler) -> None:
    plan = decide(None, attempt=1, max_deliver=3, policy=None, followers=False)
    await settler.settle(job(log, notify="jsq.notify.abc"), plan)
    assert log == ["record SUCCESS notify jsq.notify.abc", "ack"]
    log.clear()
    await settler.settle(job(log, error=OSError("x"), notify="jsq.notify.abc"), retry(1))
    assert log == ["record RETRY", "nak 1"]


async def test_a_quiet_success_is_acked_counted_logged_and_told(
    log: Log, settler: Settler, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[Any] = []

    class Hook:
        async def on_event(self, event: Any) -> None:
            events.append(event)

    plan = decide(None, attempt=1, max_deliver=3, policy=None).without_result()
    with caplog.at_level(logging.INFO, logger="jsqueue.worker"):
        await settler.settle(job(log), plan)
    assert log == ["ack"]
    assert settler.stats.succeeded == 1
    assert settler.stats.processed == 1
    assert "t.add[j1] succeeded in" in caplog.text
    settler.hooks = [Hook()]  # type: ignore[list-item]
    await settler.settle(job(log), plan)
    assert [(e.kind, e.job_id) for e in events] == [("succeeded", "j1")]
    assert settler.stats.succeeded == 2

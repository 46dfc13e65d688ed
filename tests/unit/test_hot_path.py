"""The short cuts a worker takes per job do what the long way does.

A delivery reads its numbers from either form of ack subject; a coroutine that never suspends
runs without asking asyncio for its task, and one that does can still be interrupted; a
progress sink makes its pacing only at the first report; outcomes are counted under their own
names.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jsqueue import progress
from jsqueue.context import sink_to
from jsqueue.outcome import Counter, succeeded
from jsqueue.wire.pull import ATTEMPT_HEADER, Delivery
from jsqueue.worker.interrupt import Interruptible
from jsqueue.worker.job import WorkerStats


def delivery(reply: str, headers: dict[str, str] | None = None) -> Delivery:
    return Delivery(None, "q", "p.q.q", reply, b"{}", headers)  # type: ignore[arg-type]


def test_a_delivery_reads_both_forms_of_ack_subject() -> None:
    short = delivery("$JS.ACK.P_JOBS.P_q.3.1234.77.1733100000000000000.5")
    assert (short.delivered, short.stream_seq, short.attempt, short.carried) == (3, 1234, 3, 0)
    long = delivery("$JS.ACK.hub.ACCHASH.P_JOBS.P_q.2.99.7.1733100000000000000.0.rnd")
    assert (long.delivered, long.stream_seq, long.attempt) == (2, 99, 2)
    eleven = delivery("$JS.ACK.hub.ACCHASH.P_JOBS.P_q.4.98.7.1733100000000000000.0")
    assert (eleven.delivered, eleven.stream_seq) == (4, 98)
    assert short.headers == {}
    with pytest.raises(IndexError):
        delivery("$JS.ACK.x")


@pytest.mark.parametrize(("value", "carried"), [("2", 2), ("0", 0), ("-3", 0), ("x", 0)])
def test_carried_attempts_come_from_the_header(value: str, carried: int) -> None:
    d = delivery("$JS.ACK.P_JOBS.P_q.1.5.5.1.0", {ATTEMPT_HEADER: value, "Other": "1"})
    assert (d.carried, d.attempt) == (carried, carried + 1)
    assert delivery("$JS.ACK.P_JOBS.P_q.1.5.5.1.0", {"Other": "1"}).carried == 0


async def test_a_coroutine_that_never_suspends_cannot_be_interrupted_and_returns() -> None:
    async def at_once() -> int:
        return 7

    runner = Interruptible(at_once())
    assert not runner.interrupt(RuntimeError("too early"))  # not started
    assert await runner == 7
    assert not runner.interrupt(RuntimeError("too late"))
    assert not runner.stop()


async def test_a_suspended_coroutine_gets_the_interrupt_and_a_stop() -> None:
    seen: list[str] = []

    async def sleeper() -> str:
        try:
            await asyncio.sleep(10)
        except RuntimeError as exc:
            seen.append(str(exc))
        await asyncio.sleep(0)
        return "went on"

    runner = Interruptible(sleeper())
    task = asyncio.ensure_future(_await(runner))
    await asyncio.sleep(0)
    assert runner.interrupt(RuntimeError("soft limit"))
    assert await task == "went on"
    assert seen == ["soft limit"]

    stopped = Interruptible(asyncio.sleep(10))
    task = asyncio.ensure_future(_await(stopped))
    await asyncio.sleep(0)
    assert stopped.stop()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _await(runner: Interruptible) -> Any:
    return await runner


def test_a_sink_paces_reports_from_the_first_one() -> None:
    got: list[tuple[str, str, dict[str, Any]]] = []
    calls: list[float] = []

    def later(delay: float, fn: Any) -> None:
        calls.append(delay)
        fn()

    sink = sink_to(lambda *a: got.append(a), "j1", later)
    assert sink is not None
    sink(progress.report(1, 10))
    sink(progress.report(2, 10))
    assert [g[0:2] for g in got] == [("j1", "progress"), ("j1", "progress")]
    assert got[-1][2]["done"] == 2.0
    assert calls[0] == 0.0
    assert calls[1] > 0.2
    assert sink_to(None, "j1", later) is None


def test_counting_outcomes() -> None:
    stats = WorkerStats()
    for counter in (Counter.SUCCEEDED, Counter.SUCCEEDED, Counter.FAILED, Counter.SKIPPED):
        stats.count(counter)
    stats.count(Counter.RETRIED)
    stats.count(Counter.DEAD_LETTERED)
    assert (stats.succeeded, stats.failed, stats.skipped, stats.retried) == (2, 1, 1, 1)
    assert stats.dead_lettered == 1
    assert succeeded(followers=False).without_result().counter is Counter.SUCCEEDED


@pytest.mark.parametrize(
    "data",
    [
        b'{"stream":"P_JOBS","seq":12}',
        b'{"stream":"P_JOBS","seq":12,"duplicate":true}',
        b'{"error":{"code":503,"description":"no"}}',
        b' {"stream":"s","seq":1}',
        b'{"stream":"s","seq":1}\r\n',
        b"{",
        b"[1]",
        b'{"stream":"\xff"}',
        b"",
    ],
)
def test_publish_acks_read_as_json_loads_reads_them(data: bytes) -> None:
    import json

    from jsqueue.compact import read_object as _object

    try:
        plain: Any = json.loads(data)
    except ValueError:
        plain = None
    fast = _object(data)
    assert fast is None or fast == plain
    if isinstance(plain, dict) and data[:1] == b"{" and data.rstrip() == data:
        assert fast == plain

"""Results and job states on JetStream KV, awaited through one shared watch."""

import asyncio
import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tenacity import stop_after_attempt, wait_fixed

from jsqueue import (
    App,
    AsyncResult,
    JobState,
    ResultTimeout,
    RetryPolicy,
    TaskFailed,
    current_job,
)
from jsqueue.services.producer import build_envelope, send
from jsqueue.services.results import success_record
from jsqueue.testing import burst, destroy, running_worker, wait_state, wait_until
from jsqueue.wire.server import NatsServer


async def test_get_returns_the_value_and_info_describes_the_job(jsq_app: App) -> None:
    @jsq_app.task
    async def add(x: int, y: int) -> int:
        return x + y

    async with jsq_app, running_worker(jsq_app):
        before = time.time()
        job = await add.delay(2, 3)
        assert await job.get(timeout=5) == 5
        info = await job.info()
    assert info["state"] == "SUCCESS"
    assert info["attempts"] == 1
    assert info["task"] == add.name
    assert info["worker"]
    assert before <= info["started"] <= info["finished"] <= time.time()
    assert info["result"] == 5


async def test_async_result_can_be_rebuilt_from_an_id(jsq_app: App) -> None:
    @jsq_app.task
    def echo(x: str) -> str:
        return x

    async with jsq_app:
        job = await echo.delay("hello")
        await burst(jsq_app)
        again: AsyncResult[str] = AsyncResult(jsq_app, job.id)
        assert await again.get(timeout=5) == "hello"
        assert await again.state() is JobState.SUCCESS


async def test_failure_is_data_with_remote_type_message_and_traceback(jsq_app: App) -> None:
    class PaymentDeclined(Exception):
        pass

    @jsq_app.task
    def charge() -> None:
        raise PaymentDeclined("card 4242 declined")

    async with jsq_app:
        job = await charge.delay()
        await burst(jsq_app)
        with pytest.raises(TaskFailed) as info:
            await job.get(timeout=5)
        record = json.loads((await (await jsq_app.result_backend()).store.get(job.id)).value)  # type: ignore[union-attr]
    failed = info.value
    assert str(failed) == f"job {job.id} failed: PaymentDeclined: card 4242 declined"
    assert (failed.remote_type, failed.remote_message) == ("PaymentDeclined", "card 4242 declined")
    assert 'raise PaymentDeclined("card 4242 declined")' in failed.remote_traceback
    assert failed.state == "FAILURE"
    assert set(record["error"]) == {"type", "message", "traceback"}  # text, never a pickle
    assert "pickle" not in record


async def test_get_times_out_with_result_timeout(jsq_app: App) -> None:
    @jsq_app.task
    def never_run() -> None: ...

    async with jsq_app:
        job = await never_run.delay()
        started = time.monotonic()
        with pytest.raises(ResultTimeout, match=f"job {job.id} has no outcome after 0.3s"):
            await job.get(timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 2
        assert await job.state() is JobState.PENDING
        assert (await jsq_app.result_backend()).waiting == 0


def test_get_sync_from_plain_code(jsq_app: App) -> None:
    @jsq_app.task
    def double(x: int) -> int:
        return 2 * x

    job = double.delay_sync(21)
    asyncio.run(_burst_and_close(jsq_app))
    assert job.get_sync(timeout=5) == 42


async def _burst_and_close(app: App) -> None:
    async with app:
        await burst(app)


async def test_started_state_only_with_track_started(jsq_app: App) -> None:
    gate = asyncio.Event()
    running = asyncio.Event()

    @jsq_app.task(track_started=True)
    async def tracked() -> str:
        running.set()
        await gate.wait()
        return "ok"

    @jsq_app.task
    async def untracked() -> str:
        await gate.wait()
        return "ok"

    async with jsq_app, running_worker(jsq_app):
        a = await tracked.delay()
        b = await untracked.delay()
        await asyncio.wait_for(running.wait(), 10)  # STARTED is recorded before the task runs
        assert await a.state() is JobState.STARTED
        assert (await a.info())["worker"]
        assert await b.state() is JobState.PENDING
        gate.set()
        assert await a.get(timeout=5) == await b.get(timeout=5) == "ok"


async def test_ignore_result_stores_nothing(jsq_app: App) -> None:
    ran = asyncio.Event()

    @jsq_app.task(ignore_result=True)
    async def fire_and_forget() -> int:
        ran.set()
        return 1

    async with jsq_app:
        job = await fire_and_forget.delay()
        # wrong arguments (past the producer's check): dead-lettered, and still nothing stored
        wrong = build_envelope(
            jsq_app.settings, fire_and_forget.name, (1, 2), queue="default", serializer="json"
        )
        await send(await jsq_app.broker(), wrong)
        stats = await burst(jsq_app)
        assert ran.is_set()
        assert stats.dead_lettered == 1
        assert await job.state() is JobState.PENDING
        assert await AsyncResult(jsq_app, wrong.id).state() is JobState.PENDING
        assert await (await jsq_app.result_backend()).store.count() == 0


async def test_forget_removes_the_record(jsq_app: App) -> None:
    @jsq_app.task
    def f() -> int:
        return 1

    async with jsq_app:
        job = await f.delay()
        await burst(jsq_app)
        assert await job.state() is JobState.SUCCESS
        await job.forget()
        assert await job.state() is JobState.PENDING


async def test_result_ttl_is_the_bucket_ttl(nats_server: NatsServer, jsq_prefix: str) -> None:
    app = App("ttl", url=nats_server.url, prefix=jsq_prefix, result_ttl=3600)
    try:
        async with app:
            backend = await app.result_backend()
            info = await (await app.broker()).streams.state(backend.store.stream)
            assert info.max_age == 3600
    finally:
        await destroy(app)


async def test_defaults_one_day_results_and_app_wide_settings(
    nats_server: NatsServer, jsq_prefix: str
) -> None:
    app = App(
        "defaults",
        url=nats_server.url,
        prefix=jsq_prefix,
        track_started=True,  # app-wide, as in Celery
        default_retry=RetryPolicy(stop=stop_after_attempt(3), wait=wait_fixed(0.05)),
    )
    attempts: list[int] = []
    seen_state: list[JobState] = []

    @app.task
    async def flaky() -> str:
        seen_state.append(await AsyncResult(app, current_job().id).state())
        attempts.append(current_job().attempt)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return "third time"

    try:
        async with app:
            backend = await app.result_backend()
            info = await (await app.broker()).streams.state(backend.store.stream)
            assert info.max_age == 24 * 3600  # result_ttl's default: one day
            job = await flaky.delay()
            await burst(app)
            assert await job.get(timeout=5) == "third time"
        assert attempts == [1, 2, 3]  # default_retry applies to tasks without their own
        assert seen_state[0] is JobState.STARTED
        assert seen_state[1:] == [JobState.STARTED, JobState.STARTED]
    finally:
        await destroy(app)


async def test_cloudpickle_return_values_round_trip(
    nats_server: NatsServer, jsq_prefix: str
) -> None:
    app = App("pickled", url=nats_server.url, prefix=jsq_prefix, secret_key="k" * 32)

    @app.task(serializer="cloudpickle")
    async def make_set(n: int) -> frozenset[int]:
        return frozenset(range(n))  # not JSON

    try:
        async with app:
            job = await make_set.delay(3)
            await burst(app)
            assert await job.get(timeout=5) == frozenset({0, 1, 2})
            raw = await (await app.result_backend()).store.get(job.id)
            assert raw is not None
            assert b"frozenset" not in raw.value  # stored pickled and signed, not as text
    finally:
        await destroy(app)


async def test_first_recorded_outcome_wins_over_a_late_duplicate_execution(jsq_app: App) -> None:
    runs = []

    @jsq_app.task
    async def count() -> int:
        runs.append(1)
        return len(runs)

    async with jsq_app:
        job = await count.apply_async(job_id="dup-1")
        broker = await jsq_app.broker()
        [stored] = await broker.streams.messages(
            jsq_app.settings.jobs_stream, jsq_app.settings.queue_subject("default")
        )
        await burst(jsq_app, concurrency=1)
        # the same job stored again under another Msg-Id: as if a producer bypassed dedupe
        await broker.publish(stored.subject, stored.data, {"Nats-Msg-Id": "dup-1-again"})
        await burst(jsq_app, concurrency=1)  # a first delivery: it runs without a look
        assert runs == [1, 1]
        assert await job.get(timeout=5) == 1  # the first execution's value, not 2
        info = await job.info()
    assert info["result"] == 1


async def test_a_thousand_waiters_share_one_watch(jsq_app: App) -> None:
    @jsq_app.task
    async def square(x: int) -> int:
        return x * x

    async with jsq_app:
        jobs = await square.map(range(1000))
        backend = await jsq_app.result_backend()
        waiting = [asyncio.create_task(job.get(timeout=30)) for job in jobs]
        await asyncio.sleep(0)  # let every get() register before the worker runs
        async with running_worker(jsq_app, concurrency=64):
            results = await asyncio.gather(*waiting)
        assert results == [x * x for x in range(1000)]
        assert backend.waiting == 0
        assert backend.watching


async def test_retry_info_has_next_attempt_time_and_last_error(jsq_app: App) -> None:
    @jsq_app.task(retry=RetryPolicy(stop=stop_after_attempt(2), wait=wait_fixed(30)))
    def flaky() -> None:
        raise OSError("disk full")

    async with jsq_app, running_worker(jsq_app):
        job = await flaky.delay()
        await wait_state(job, JobState.RETRY)
        info = await job.info()
    assert info["state"] == "RETRY"
    assert info["attempts"] == 1
    assert 25 < info["retry_at"] - time.time() <= 30
    assert info["error"]["type"] == "OSError"
    assert info["error"]["message"] == "disk full"


async def test_waiters_survive_a_server_restart(tmp_path: object, jsq_prefix: str) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    server = NatsServer(store_dir=tmp_path / "store").start()
    app = App("r", url=server.url, prefix=jsq_prefix)
    gate = asyncio.Event()
    running = asyncio.Event()

    @app.task
    async def wait_for_gate() -> str:
        running.set()
        await gate.wait()
        return "after restart"

    try:
        async with app:
            job = await wait_for_gate.delay()
            waiter = asyncio.create_task(job.get(timeout=60))
            async with running_worker(app):
                await asyncio.wait_for(running.wait(), 10)
                await asyncio.to_thread(server.restart)
                gate.set()
                assert await waiter == "after restart"
    finally:
        await app.close()
        server.cleanup()


async def _listening(app: App, ids: list[str]) -> list[asyncio.Task[Any]]:
    """Waits of this process for ``ids`` (jobs it sent), once they listen for notices."""
    backend = await app.result_backend()
    waits = [asyncio.create_task(backend.waiters.wait(i, 10, notified=True)) for i in ids]
    await wait_until(
        lambda: backend.waiters.waiting == len(ids) and backend.waiters.listening, 5, "the waits"
    )
    return waits


async def test_one_notice_carries_many_outcomes_and_splits_at_the_payload_limit(
    jsq_app: App,
) -> None:
    async with jsq_app:
        backend = await jsq_app.result_backend()
        broker = await jsq_app.broker()
        value = "v" * (broker.max_payload // 3)  # two records fit in one notice, three do not
        ids = [f"notice-{i}" for i in range(3)]
        waits = await _listening(jsq_app, ids)
        before = backend.waiters.received
        records = [(i, success_record(i, value, "json", None, task="t")) for i in ids]
        await backend.notify_all(broker.notify_subject, records)
        outcomes = await asyncio.wait_for(asyncio.gather(*waits), 10)
    assert [o.value(None) for o in outcomes] == [value] * 3
    assert backend.waiters.received - before == 2


async def test_hostile_notices_resolve_nothing_and_the_next_true_one_lands(jsq_app: App) -> None:
    samples: list[bytes] = []

    @given(
        st.one_of(
            st.binary(max_size=200),
            st.lists(
                st.one_of(st.binary(max_size=30), st.sampled_from([b"", b"{", b'{"state":1}']))
            ).map(b"\n".join),
            st.just(b"notice-x\n" + b'{"state":"PENDING"}'),  # not final: no outcome
        )
    )
    @settings(max_examples=60, database=None, deadline=None)
    def collect(notice: bytes) -> None:
        samples.append(notice)

    collect()
    async with jsq_app:
        backend = await jsq_app.result_backend()
        broker = await jsq_app.broker()
        [waiting] = await _listening(jsq_app, ["notice-x"])
        before = backend.waiters.received
        for notice in samples:
            await broker.publish_core(broker.notify_subject, notice)
        await wait_until(
            lambda: backend.waiters.received - before == len(samples), 10, "the notices"
        )
        assert not waiting.done()
        record = success_record("notice-x", 42, "json", None, task="t")
        await backend.write_final("notice-x", record, notify=broker.notify_subject)
        outcome = await asyncio.wait_for(waiting, 10)
    assert outcome.value(None) == 42

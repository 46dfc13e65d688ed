"""Enqueueing against a real nats-server: what is stored, idempotency, bad input."""

import asyncio
import json

import pytest

from jsqueue import App, ArgumentsError, AsyncResult, ConfigError, JsqueueError
from jsqueue.envelope import decode


async def stored(app: App, queue: str = "default") -> list[dict[str, object]]:
    broker = await app.broker()
    subject = app.settings.queue_subject(queue)
    return [
        json.loads(m.data) for m in await broker.streams.messages(app.settings.jobs_stream, subject)
    ]


async def test_delay_stores_a_versioned_envelope(jsq_app: App) -> None:
    @jsq_app.task
    async def add(x: int, y: int) -> int:
        return x + y

    async with jsq_app:
        job = await add.delay(2, 3)
    assert isinstance(job, AsyncResult)
    async with jsq_app:
        [doc] = await stored(jsq_app)
    assert doc["id"] == job.id
    assert doc["v"] == 1
    assert (
        doc["task"]
        == add.name
        == "tests.integration.test_enqueue.test_delay_stores_a_versioned_envelope.<locals>.add"
    )
    assert doc["args"] == [2, 3]
    assert doc["queue"] == "default"


async def test_explicit_name_queue_and_job_id(jsq_app: App) -> None:
    @jsq_app.task(name="billing.charge", queue="money")
    def charge(amount: int) -> None: ...

    async with jsq_app:
        job = await charge.apply_async(args=(5,), job_id="order-42")
        other = await charge.apply_async(args=(6,), queue="math")
        money, math = await stored(jsq_app, "money"), await stored(jsq_app, "math")
    assert job.id == "order-42"
    assert [d["task"] for d in money] == ["billing.charge"]
    assert [d["id"] for d in math] == [other.id]


async def test_same_job_id_twice_stores_one_job(jsq_app: App) -> None:
    @jsq_app.task
    def f(x: int) -> None: ...

    async with jsq_app:
        a = await f.apply_async(args=(1,), job_id="once")
        b = await f.apply_async(args=(2,), job_id="once")
        docs = await stored(jsq_app)
    assert a.id == b.id == "once"
    assert [d["args"] for d in docs] == [[1]]


async def test_invalid_job_id_is_refused_before_publishing(jsq_app: App) -> None:
    @jsq_app.task
    def f() -> None: ...

    async with jsq_app:
        with pytest.raises(ConfigError, match="job id 'a:b' is not allowed"):
            await f.apply_async(job_id="a:b")
        assert await stored(jsq_app) == []


async def test_wrong_arguments_are_refused_at_enqueue(jsq_app: App) -> None:
    @jsq_app.task
    def f(x: int) -> None: ...

    async with jsq_app:
        with pytest.raises(ArgumentsError, match="missing a required argument: 'x'"):
            await f.delay()  # type: ignore[call-arg]
        assert await stored(jsq_app) == []


async def test_unserializable_arguments_are_refused_with_a_hint(jsq_app: App) -> None:
    @jsq_app.task
    def f(x: object) -> None: ...

    async with jsq_app:
        with pytest.raises(JsqueueError, match=r"cannot be sent as JSON.*cloudpickle"):
            await f.delay({1, 2})
        assert await stored(jsq_app) == []


def test_delay_without_a_loop_points_to_delay_sync(jsq_app: App) -> None:
    @jsq_app.task
    def notify(x: int) -> None: ...

    with pytest.raises(JsqueueError, match=r"notify.delay_sync\(\.\.\.\) instead"):
        notify.delay(1)


def test_delay_sync_from_plain_code(jsq_app: App) -> None:
    @jsq_app.task
    def notify(x: int) -> None: ...

    job = notify.delay_sync(7)
    other = notify.apply_async_sync(args=(8,), job_id="sync-8")
    assert other.id == "sync-8"

    async def read() -> list[dict[str, object]]:
        async with jsq_app:
            return await stored(jsq_app)

    docs = asyncio.run(read())
    assert [(d["id"], d["args"]) for d in docs] == [(job.id, [7]), ("sync-8", [8])]


async def test_sync_and_async_use_from_one_app(jsq_app: App) -> None:
    @jsq_app.task
    def f(x: int) -> None: ...

    async with jsq_app:
        await f.delay(1)
        # a sync caller in another thread while this loop runs
        await asyncio.to_thread(f.delay_sync, 2)
        assert sorted(d["args"][0] for d in await stored(jsq_app)) == [1, 2]  # type: ignore[index]


async def test_bulk_starmap_enqueues_pipelined(jsq_app: App) -> None:
    @jsq_app.task
    def f(x: int) -> None: ...

    async with jsq_app:
        jobs = await f.map(range(500))
        docs = await stored(jsq_app)
    assert len({j.id for j in jobs}) == 500
    assert [d["args"] for d in docs] == [[i] for i in range(500)]


async def test_signed_cloudpickle_arguments(nats_server: object, jsq_prefix: str) -> None:
    from jsqueue.wire.server import NatsServer

    assert isinstance(nats_server, NatsServer)
    app = App("p", url=nats_server.url, prefix=jsq_prefix, secret_key="s" * 32)

    @app.task(serializer="cloudpickle")
    def f(x: object) -> None: ...

    async with app:
        await f.delay({1, 2})
        broker = await app.broker()
        [msg] = await broker.streams.messages(
            app.settings.jobs_stream, app.settings.queue_subject("default")
        )
        assert "sig" in json.loads(msg.data)
        assert decode(msg.data, app.settings.secret_key).args == ({1, 2},)
        await broker.destroy_prefix()


async def test_first_use_connects_without_async_with(jsq_app: App) -> None:
    @jsq_app.task
    def f() -> None: ...

    job = await f.delay()
    assert job.id
    await jsq_app.close()


def test_duplicate_task_name_is_an_error() -> None:
    app = App("d")

    @app.task(name="same")
    def a() -> None: ...

    with pytest.raises(ConfigError, match="'same' is already registered"):

        @app.task(name="same")
        def b() -> None: ...


def test_retry_policy_beyond_max_deliver_is_refused_at_registration() -> None:
    from tenacity import stop_after_attempt

    from jsqueue import RetryPolicy

    app = App("d", max_deliver=5)
    with pytest.raises(ConfigError, match="allows more attempts than max_deliver=5"):

        @app.task(retry=RetryPolicy(stop=stop_after_attempt(6)))
        def a() -> None: ...

    @app.task(retry=RetryPolicy(stop=stop_after_attempt(5)))
    def b() -> None: ...

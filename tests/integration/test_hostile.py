"""Hostile and careless input: every message ends settled with its real reason, within a bound,
and the worker serves on. Each test names the defect it pins down."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jsqueue import App, TaskFailed
from jsqueue.services import dlq as dead_letters
from jsqueue.testing import burst, destroy, running_worker, unique_prefix, wait_until
from jsqueue.wire.server import NatsServer

from .support import jsqueue


@pytest.fixture
async def app(nats_server: NatsServer) -> AsyncIterator[App]:
    """Short settings, so that a job that loops would show within the test."""
    app = App(
        "hostile",
        url=nats_server.url,
        prefix=unique_prefix(),
        ack_wait=1,
        max_deliver=3,
        unknown_task_retries=1,
    )

    @app.task(name="add")
    async def add(x: int, y: int) -> int:
        return x + y

    try:
        yield app
    finally:
        await destroy(app)


async def raw(app: App, doc: object, headers: dict[str, str] | None = None) -> None:
    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    broker = await app.broker()
    await broker.publish(app.settings.queue_subject("default"), data, headers)


async def dead(app: App) -> list[dead_letters.DeadLetter]:
    return await dead_letters.list_letters(await app.broker())


async def served_on(app: App) -> None:
    """A valid job sent after the bad ones runs, and nothing is left in the queue."""
    good = await app.tasks["add"].delay(20, 22)
    await burst(app)
    assert await good.get(timeout=5) == 42
    broker = await app.broker()
    assert await broker.streams.subject_counts(app.settings.jobs_stream, ">") == {}


def job(job_id: str = "ok", task: str = "add", **fields: object) -> dict[str, object]:
    return {"v": 1, "id": job_id, "task": task, "args": [1, 2], **fields}


ILLEGAL_IDS = ["x" * 10_000, "has:colon and space", "*", "a..b", "", "order:1", "new\nline"]


async def test_1_2_illegal_ids_are_dead_lettered_without_running(app: App) -> None:
    """A 10 KB id used to become a subject and close the worker's connection; ids with ':' or
    spaces ran, then looped on the result write."""
    ran: list[str] = []

    @app.task(name="spy")
    async def spy() -> None:
        ran.append("ran")

    async with app:
        for job_id in ILLEGAL_IDS:
            await raw(app, {"v": 1, "id": job_id, "task": "spy"})
        stats = await burst(app)
        await served_on(app)
        found = await dead(app)
    assert ran == []
    assert stats.dead_lettered == len(ILLEGAL_IDS)
    assert [x.reason for x in found] == ["malformed"] * len(ILLEGAL_IDS)
    assert all(x.job_id.startswith("seq-") and x.attempts == 1 for x in found)
    assert all("field 'id'" in x.error_message for x in found)
    given = {x.given_id for x in found}
    assert "order:1" in given  # as sent, so the id as typed finds it
    assert all(len(g) <= 200 for g in given)  # the 10 KB id is kept short


async def test_2_inspect_and_show_an_illegal_id_in_one_line(
    app: App, nats_server: NatsServer
) -> None:
    async with app:
        await raw(app, job("order:1"))
        await burst(app)
    prefix, url = app.settings.prefix, nats_server.url
    shown = jsqueue(prefix, url, "dlq", "show", "order:1")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["reason"] == "malformed"
    inspected = jsqueue(prefix, url, "inspect", "job", "order:1")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["where"] == "dead-lettered"
    missing = jsqueue(prefix, url, "inspect", "job", "no:such")
    assert missing.returncode == 1
    assert "not a legal job id" in missing.stderr
    assert "Traceback" not in missing.stderr + inspected.stderr + shown.stderr


async def test_3_deeply_nested_json_is_undecodable(app: App) -> None:
    async with app:
        await raw(app, b"[" * 100_000 + b"]" * 100_000)
        await raw(app, b'{"v": 1, "id": "deep", "task": "add", "args": ' + b"[" * 50_000)
        await served_on(app)
        found = await dead(app)
    assert [x.reason for x in found] == ["undecodable", "undecodable"]
    assert "too deeply" in found[0].error_message


async def test_4_a_body_near_max_payload_is_dead_lettered_with_its_record_in_the_body(
    app: App,
) -> None:
    @app.task(name="fails")
    def fails(blob: str) -> None:
        raise ValueError("no good")

    async with app:
        limit = (await app.broker()).max_payload
        # the producer accepted these: they fill max_payload up to a few bytes
        unknown = json.dumps(job("big-unknown", "no.such", args=[])).encode()
        unknown = unknown[:-1] + b', "pad": "' + b"u" * (limit - len(unknown) - 60) + b'"}'
        failing = json.dumps(job("big-fails", "fails", args=[""])).encode()
        failing = failing.replace(b'[""]', b'["' + b"f" * (limit - len(failing) - 60) + b'"]')
        await raw(app, unknown)
        await raw(app, failing)
        await served_on(app)
        found = {x.job_id: x for x in await dead(app)}
        with pytest.raises(TaskFailed, match="no good"):
            await app.result("big-fails").get(timeout=5)
    assert found["big-unknown"].reason == "unknown_task"
    assert found["big-fails"].reason == "not_retryable"
    for letter, body in ((found["big-unknown"], unknown), (found["big-fails"], failing)):
        assert letter.payload_truncated
        assert letter.payload_size == len(body)
        assert body.startswith(letter.payload)
        assert len(body) - len(letter.payload) < 9_000


async def test_5_huge_error_texts_and_names_keep_their_reason(app: App) -> None:
    @app.task(name="shouts")
    async def shouts() -> None:
        raise ValueError("!" * 1_000_000)

    async with app:
        await app.tasks["shouts"].apply_async(job_id="shouts")
        await raw(app, job("long-name", "t" * 100_000))
        await served_on(app)
        found = {x.job_id: x for x in await dead(app)}
        with pytest.raises(TaskFailed) as failed:
            await app.result("shouts").get(timeout=5)
    assert found["shouts"].reason == "not_retryable"
    assert len(found["shouts"].error_message) < 5_000
    assert len(failed.value.remote_message) < 5_000
    assert found["long-name"].reason == "malformed"
    assert "field 'task'" in found["long-name"].error_message


async def test_6_an_unprintable_error_and_a_deep_return_value(app: App) -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    @app.task(name="unprintable")
    async def unprintable() -> None:
        raise Unprintable

    @app.task(name="deep")
    async def deep() -> list[object]:
        value: list[object] = []
        for _ in range(100_000):
            value = [value]
        return value

    async with app:
        a = await app.tasks["unprintable"].apply_async(job_id="unprintable")
        b = await app.tasks["deep"].apply_async(job_id="deep")
        await served_on(app)
        found = {x.job_id: x for x in await dead(app)}
        with pytest.raises(TaskFailed, match="unprintable Unprintable"):
            await a.get(timeout=5)
        with pytest.raises(TaskFailed, match="nests too deeply"):
            await b.get(timeout=5)
    assert (found["unprintable"].reason, found["unprintable"].attempts) == ("not_retryable", 1)
    assert (found["deep"].reason, found["deep"].attempts) == ("unserializable_result", 1)


@pytest.mark.parametrize(
    "change",
    [
        {"expires": "soon"},
        {"eta": "tomorrow"},
        {"link": "abc"},
        {"link": [42]},
        {"chord": "nochord"},
        {"chord": {"id": "c", "index": 5, "size": 2}},
        {"headers": {"a": 1}},
    ],
)
async def test_7_8_a_field_of_the_wrong_type_is_refused_at_once(
    app: App, change: dict[str, object]
) -> None:
    async with app:
        await raw(app, job("wrong", **change))
        stats = await burst(app)
        found = await dead(app)
        record = await app.result("wrong").info()
    assert stats.succeeded == 0
    assert [(x.reason, x.attempts) for x in found] == [("malformed", 1)]
    field = next(iter(change))
    assert f"field '{field}" in found[0].error_message
    assert record["state"] == "DEAD"  # get() answers instead of timing out


async def test_8_a_chord_that_does_not_exist_ends_without_looping(app: App) -> None:
    async with app:
        await raw(app, job("member", chord={"id": "nochord", "index": 0, "size": 1}))
        stats = await burst(app)
        member = await app.result("member").get(timeout=5)
        with pytest.raises(TaskFailed, match="no record"):
            await app.result("nochord").get(timeout=5)
        assert await dead(app) == []
    assert member == 3
    assert stats.succeeded == 1


async def test_9_a_task_that_blocks_the_loop_is_named_and_nothing_runs_twice(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[str] = []

    @app.task(name="blocker")
    async def blocker(i: int) -> int:
        runs.append(f"blocker{i}")
        time.sleep(2.5)  # noqa: ASYNC251 - the point: past ack_wait (1 s), so it is redelivered
        return i

    @app.task(name="behind")
    async def behind(i: int) -> int:
        runs.append(f"behind{i}")
        return i

    caplog.set_level(logging.INFO, logger="jsqueue")
    async with app:
        a = await app.tasks["blocker"].apply_async(args=(1,), job_id="blocks")
        b = await app.tasks["behind"].apply_async(args=(2,), job_id="behind")
        stats = await burst(app)
        assert (await a.get(timeout=5), await b.get(timeout=5)) == (1, 2)
        assert await dead(app) == []
    assert sorted(runs) == ["behind2", "blocker1"]
    warnings = [r.getMessage() for r in caplog.records if "blocked the event loop" in r.message]
    assert any(w.startswith("blocker[blocks] has blocked the event loop for") for w in warnings)
    assert any(
        "blocker[blocks] blocked the event loop for" in w and "in all" in w for w in warnings
    )
    assert stats.skipped >= 1  # a redelivery acked without running: "already SUCCESS"
    assert any("already SUCCESS" in r.getMessage() for r in caplog.records)


async def test_10_dead_letters_keep_their_ids_and_write_a_record(app: App) -> None:
    async with app:
        await raw(app, b"\x00 not json", headers={"Nats-Msg-Id": "from-header"})
        await raw(app, b"\x00 not json either")
        await raw(app, job("ghost", "no.such.task"))
        await served_on(app)
        found = await dead(app)
        broker = await app.broker()
        by_id = {x.job_id: x for x in found}
        assert set(by_id) >= {"from-header", "ghost"}
        for letter in found:  # a listed id finds its own letter, not another with that seq
            shown = await dead_letters.find(broker, letter.job_id)
            assert shown is not None
            assert shown.seq == letter.seq
        for job_id in ("from-header", "ghost"):
            with pytest.raises(TaskFailed) as failed:
                await app.result(job_id).get(timeout=5)
            assert failed.value.state == "DEAD"


async def test_a_closed_connection_is_replaced_and_the_worker_serves_on(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    add = app.tasks["add"]
    async with running_worker(app) as worker:
        assert await (await add.delay(1, 1)).get(timeout=5) == 2
        broker = await app.broker()
        # any protocol error makes nats-py close the client for good: a subject over the
        # server's control line limit is one
        await broker.publish_core("x" * 5_000, b"")
        await wait_until(lambda: worker.sessions == 2, 20, "a second connection")
        assert broker.lost.is_set()
        assert await (await add.delay(2, 2)).get(timeout=10) == 4
    assert "closed the connection for good" in caplog.text


async def test_a_worker_that_cannot_connect_again_in_time_ends_with_an_error(
    tmp_path: Path,
) -> None:
    """Alive and idle is never an outcome: with its connection gone for good and no server to
    reach, the worker gives up after ``reconnect_timeout`` with ConnectError (the CLI exits 1)."""
    import asyncio

    from jsqueue.errors import ConnectError
    from jsqueue.worker import Worker

    with NatsServer(store_dir=tmp_path / "store") as server:
        app = App("gone", url=server.url, prefix=unique_prefix())

        @app.task(name="add")
        async def add(x: int, y: int) -> int:
            return x + y

        worker = Worker(app, concurrency=2)
        worker.reconnect_timeout = 2.0
        running = asyncio.create_task(worker.run())
        try:
            await asyncio.wait_for(worker.started.wait(), 30)
            broker = await app.broker()
            server.stop()  # nothing to connect to again
            await broker.connection.nc.close()  # closed for good, as nats-py closes a client
            began = time.monotonic()
            with pytest.raises(ConnectError):
                await asyncio.wait_for(running, 60)
            waited = time.monotonic() - began
        finally:
            running.cancel()
            await app.close()
    assert waited < 30, f"gave up after {waited:.1f}s, reconnect_timeout 2 s"


async def test_11_cli_refuses_empty_queues_and_bad_urls_in_one_line(
    app: App, nats_server: NatsServer
) -> None:
    prefix, url = app.settings.prefix, nats_server.url
    for queues in ("", ",", " , "):
        out = jsqueue(prefix, url, "worker", "-Q", queues, "--burst")
        assert out.returncode == 2, out.stdout
        assert "names no queue" in out.stderr
    for command in (["worker", "--burst"], ["status"], ["dlq", "list"]):
        out = jsqueue(prefix, "nats://[::1", *command)
        assert out.returncode == 1
        assert "is not a valid URL (Invalid IPv6 URL)" in out.stderr
        assert "Traceback" not in out.stderr


async def test_redelivered_finished_job_sends_what_follows_without_running_again(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delivery that recorded SUCCESS loses the server before it sends the chain's next
    step: the redelivery sends the step, and the task does not run again."""
    from jsqueue import chain
    from jsqueue.errors import TransientError
    from jsqueue.services import continuation

    runs: list[int] = []

    @app.task(name="once")
    async def once(i: int) -> int:
        runs.append(i)
        return i

    real = continuation.after_success
    failures = [TransientError("the server went away")]

    async def flaky(*args: object) -> None:
        if failures:
            raise failures.pop()
        await real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(continuation, "after_success", flaky)
    async with app:
        handle = await chain(app.tasks["once"].s(1), app.tasks["add"].s(10)).delay()
        stats = await burst(app)  # the step stays unacked, comes back after ack_wait (1 s)
        assert await handle.get(timeout=5) == 11
    assert runs == [1]
    assert stats.skipped == 1

"""Results that scale: a waiting process receives its own outcomes only; values too large for a
message travel through the object store."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jsqueue import App, TaskFailed
from jsqueue.services import dlq as dead_letters
from jsqueue.testing import burst, destroy, running_worker, wait_until
from jsqueue.wire.server import NatsServer

from .support import ROOT
from .support import procapp_worker as worker
from .test_protocol import ENVELOPE, RESULT, assert_valid

pytestmark = pytest.mark.slow

PRODUCE = """
import asyncio, sys
from tests.apps.procapp import app

async def main() -> None:
    async with app:
        await app.tasks["tests.apps.procapp.echo"].starmap([(i,) for i in range(int(sys.argv[1]))])

asyncio.run(main())
"""


async def test_a_waiting_process_receives_only_the_outcomes_it_waits_for(
    procapp: App,
    tmp_path: Path,
) -> None:
    echo = procapp.tasks["tests.apps.procapp.echo"]
    async with procapp:
        mine = await echo.apply_async(args=(7,), queue="mine")  # type: ignore[attr-defined]
        waiting = asyncio.create_task(mine.get(timeout=120))
        backend = await procapp.result_backend()
        await wait_until(lambda: backend.watching, 10, "the process to listen")
        env = {"JSQ_TEST_PREFIX": procapp.settings.prefix, "JSQUEUE_URL": str(procapp.settings.url)}
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", PRODUCE, "20000"],
            cwd=ROOT,
            env={**os.environ, **env},
            check=True,
            timeout=120,
        )
        broker = await procapp.broker()
        with worker(procapp, tmp_path, "-c", "64"):
            deadline = time.monotonic() + 90
            while True:  # all 20,000 results written while this process waits
                info = await broker.streams.consumer("default")
                if info is not None and not info.pending and not info.ack_pending:
                    break
                assert time.monotonic() < deadline, info
                await asyncio.sleep(0.2)
        results = await broker.streams.state(f"KV_{procapp.settings.bucket('results')}")
        received_meanwhile = backend.waiters.received
        await burst(procapp, queues=["mine"])
        assert await waiting == 7
    assert results.messages >= 20_000
    assert received_meanwhile == 0  # not one of another process's 20,000 outcomes
    assert backend.waiters.received == 1  # its own


async def test_a_handle_rebuilt_from_an_id_elsewhere_watches_its_one_key(jsq_app: App) -> None:
    @jsq_app.task(name="slowly")
    async def slowly() -> str:
        await asyncio.sleep(0.3)
        return "done"

    async with jsq_app:
        sent = await slowly.delay()
        rebuilt = jsq_app.result(sent.id)  # as a web request that only has the id
        assert not rebuilt.notified
        async with running_worker(jsq_app):
            assert await rebuilt.get(timeout=10) == "done"
        backend = await jsq_app.result_backend()
        assert not backend.watching  # no subscription for jobs it did not send


@pytest.mark.parametrize(
    "notify",
    [
        "$JS.API.STREAM.DELETE.{stream}",
        "other.notify.x",
        "{prefix}.notify.a b",
        "{prefix}.q.default",
    ],
)
async def test_a_forged_notify_subject_is_refused_not_obeyed(jsq_app: App, notify: str) -> None:
    @jsq_app.task(name="spy")
    async def spy() -> None:
        raise AssertionError("a forged envelope must not run")

    s = jsq_app.settings
    forged = notify.format(stream=s.jobs_stream, prefix=s.prefix)
    async with jsq_app:
        broker = await jsq_app.broker()
        doc = {"v": 1, "id": "forged", "task": "spy", "notify": forged}
        await broker.publish(s.queue_subject("default"), json.dumps(doc).encode())
        stats = await burst(jsq_app)
        letters = await dead_letters.list_letters(broker)
        jobs = await broker.streams.state(s.jobs_stream)  # still there
    assert stats.dead_lettered == 1
    assert [(x.reason, "field 'notify'" in x.error_message) for x in letters] == [
        ("malformed", True)
    ]
    assert jobs.name == s.jobs_stream


async def test_results_and_arguments_over_max_payload_go_through_the_object_store(
    nats_server: NatsServer, jsq_prefix: str
) -> None:
    app = App("big", url=nats_server.url, prefix=jsq_prefix, max_object_size=12 * 2**20)

    @app.task(name="big")
    async def big(n: int) -> str:
        return "x" * n

    @app.task(name="length")
    async def length(blob: str) -> int:
        return len(blob)

    try:
        async with app:
            limit = (await app.broker()).max_payload
            ten = await big.delay(10 * 2**20)
            argued = await length.delay("y" * (3 * 2**20))  # its arguments go to the store too
            over = await big.delay(13 * 2**20)
            stats = await burst(app)
            assert len(await ten.get(timeout=30)) == 10 * 2**20
            assert await argued.get(timeout=30) == 3 * 2**20
            with pytest.raises(TaskFailed, match=r"ResultTooLarge.*over max_object_size"):
                await over.get(timeout=30)
            record, failed = await ten.info(), await over.info()
            objects = await (await app.broker()).objects()
            stored = await objects.get(f"args.{argued.id}")
            small = await (await app.result_backend()).store.get(ten.id)  # names the object
    finally:
        await destroy(app)
    # the object-store forms follow the written protocol too
    assert small is not None
    assert_valid(RESULT, json.loads(small.value))
    assert "object" in json.loads(small.value)
    assert stored is not None
    assert_valid(ENVELOPE, json.loads(stored))
    assert_valid(
        ENVELOPE, {"v": 1, "id": argued.id, "task": "length", "args_object": f"args.{argued.id}"}
    )
    assert record["object"] == f"results.{ten.id}.1"
    assert record["size"] > limit
    assert stored is not None  # the whole envelope, for a retry or a replay
    assert (failed["reason"], failed["attempts"]) == ("result_too_large", 1)  # failed once
    assert stats.failed == 1


async def test_replaying_a_job_whose_large_arguments_expired_says_so(jsq_app: App) -> None:
    @jsq_app.task(name="refuses")
    async def refuses(blob: str) -> None:
        raise ValueError("no")

    async with jsq_app:
        job = await refuses.delay("z" * (2 * 2**20))
        await burst(jsq_app)
        broker = await jsq_app.broker()
        [letter] = await dead_letters.list_letters(broker)
        objects = await broker.objects()
        await objects.delete(f"args.{job.id}")  # as result_ttl would
        with pytest.raises(Exception, match=f"object args.{job.id}, which has expired"):
            await dead_letters.replay(broker, letter)
        assert await dead_letters.list_letters(broker) == [letter]  # kept
    assert letter.reason == "not_retryable"


async def test_the_notice_reaches_the_sender_from_a_chains_last_step_and_a_chords_callback(
    jsq_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jsqueue import chain, chord, group

    @jsq_app.task(name="n.add")
    async def add(a: int, b: int) -> int:
        return a + b

    @jsq_app.task(name="n.total")
    async def total(values: list[int]) -> int:
        return sum(values)

    async with jsq_app:
        backend = await jsq_app.result_backend()
        noticed: list[str] = []
        deliver = backend.waiters.deliver

        def spy(job_id: str, record: bytes) -> None:
            noticed.append(job_id)
            deliver(job_id, record)

        monkeypatch.setattr(backend.waiters, "deliver", spy)
        steps = await chain(add.s(1, 2), add.s(3), add.s(4)).delay()
        summed = await chord(group(add.s(i, i) for i in range(5)), total.s()).delay()
        # listen before any of it runs: a notice sent to nobody is lost (the get reads first)
        waits = asyncio.gather(steps.get(timeout=20), summed.get(timeout=20))
        await wait_until(lambda: backend.watching, 10, "the process to listen")
        async with running_worker(jsq_app):
            # a notice is what ends these waits: the fallback re-read comes only every 30 s
            assert await waits == [10, 20]
    assert steps.id in noticed  # the chain's last step notified the sender
    assert summed.id in noticed  # and so did the chord's callback

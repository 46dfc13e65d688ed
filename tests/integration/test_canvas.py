"""chain, group and chord on a real server; a nested chord under repeated SIGKILL of its
workers."""

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jsqueue import (
    App,
    AsyncResult,
    ConfigError,
    GroupFailed,
    JobState,
    TaskFailed,
    chain,
    chord,
    group,
)
from jsqueue.testing import Process, burst, destroy, running_worker
from jsqueue.wire.server import NatsServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def math_app(jsq_app: App) -> App:
    @jsq_app.task(name="add")
    async def add(x: int, y: int) -> int:
        return x + y

    @jsq_app.task(name="mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @jsq_app.task(name="tsum")
    async def tsum(values: list[int]) -> int:
        return sum(values)

    @jsq_app.task(name="boom")
    async def boom(x: int) -> int:
        raise ValueError(f"cannot handle {x}")

    return jsq_app


def t(app: App, name: str):  # type: ignore[no-untyped-def]
    return app.tasks[name]


async def test_chain_passes_each_result_to_the_next_step(math_app: App) -> None:
    add, mul = t(math_app, "add"), t(math_app, "mul")
    async with math_app, running_worker(math_app):
        handle = await chain(add.s(1, 2), mul.s(10), add.s(5)).delay()
        assert await handle.get(timeout=10) == 35  # (1 + 2) * 10 + 5
        immutable = await chain(add.s(1, 1), add.si(100, 1)).delay()
        assert await immutable.get(timeout=10) == 101
        with_args = await chain(add.s(1), mul.s(3)).delay(4)
        assert await with_args.get(timeout=10) == 15


async def test_a_failing_step_stops_the_chain_with_its_error(math_app: App) -> None:
    add, boom = t(math_app, "add"), t(math_app, "boom")
    ran_after = []

    @math_app.task(name="after")
    async def after(x: int) -> None:
        ran_after.append(x)

    async with math_app, running_worker(math_app):
        first = add.s(1, 2).set(job_id="chain-step-1")
        failing = boom.s().set(job_id="chain-step-2")
        handle = await chain(first, failing, after.s()).delay()
        with pytest.raises(TaskFailed) as info:
            await handle.get(timeout=10)
        assert await handle.state() is JobState.FAILURE
    assert info.value.job_id == "chain-step-2"
    assert (info.value.remote_type, info.value.remote_message) == ("ValueError", "cannot handle 3")
    assert ran_after == []


async def test_group_returns_results_in_order(math_app: App) -> None:
    add = t(math_app, "add")
    async with math_app, running_worker(math_app, concurrency=16):
        handle = await group(add.s(i, i) for i in range(100)).delay()
        assert await handle.get(timeout=20) == [2 * i for i in range(100)]
        assert len(set(handle.ids)) == 100


async def test_group_failure_names_the_failed_members_after_all_finished(math_app: App) -> None:
    add, boom = t(math_app, "add"), t(math_app, "boom")
    async with math_app, running_worker(math_app):
        members = [add.s(1, 1), boom.s(7), add.s(2, 2), boom.s(9)]
        handle = await group(members).delay()
        with pytest.raises(GroupFailed) as info:
            await handle.get(timeout=10)
        assert await handle.results[2].get(timeout=1) == 4  # the others finished
    failed = info.value
    assert sorted(failed.failures) == [1, 3]
    assert "2 of 4 group members failed" in str(failed)
    assert f"#1 ({handle.ids[1]}): ValueError: cannot handle 7" in str(failed)


async def test_chord_callback_runs_once_with_results_in_order(math_app: App) -> None:
    add = t(math_app, "add")
    calls: list[list[int]] = []

    @math_app.task(name="collect")
    async def collect(values: list[int]) -> int:
        calls.append(values)
        return sum(values)

    async with math_app, running_worker(math_app, concurrency=16):
        handle = await chord(group(add.s(i, i) for i in range(50)), collect.s()).delay()
        assert await handle.get(timeout=20) == sum(2 * i for i in range(50))
    assert calls == [[2 * i for i in range(50)]]


async def test_a_failing_member_fails_the_chord_and_the_callback_never_runs(math_app: App) -> None:
    add, boom = t(math_app, "add"), t(math_app, "boom")
    calls = []

    @math_app.task(name="never")
    async def never(values: list[int]) -> None:
        calls.append(values)

    async with math_app, running_worker(math_app):
        handle = await chord([add.s(1, 1), boom.s(5), add.s(2, 2)], never.s()).delay()
        with pytest.raises(TaskFailed) as info:
            await handle.get(timeout=10)
    assert info.value.remote_type == "ValueError"
    assert "chord member 1" in info.value.remote_message
    assert "cannot handle 5" in info.value.remote_message
    assert calls == []


async def test_signature_options_route_and_delay(math_app: App) -> None:
    add = t(math_app, "add")
    async with math_app:
        routed = await add.s(1, 1).set(queue="other").delay()
        started = time.monotonic()
        delayed = await add.s(2, 2).set(countdown=0.6).delay()
        async with running_worker(math_app, queues=["other", "default"]):
            assert await routed.get(timeout=10) == 2
            assert await delayed.get(timeout=10) == 4
            assert time.monotonic() - started >= 0.55
        info = await delayed.info()
    assert info["started"] - info["finished"] <= 0


async def test_canvas_apply_async_options_and_sync_forms(math_app: App) -> None:
    add, tsum = t(math_app, "add"), t(math_app, "tsum")
    async with math_app:
        grouped = await group(add.s(i, i) for i in range(3)).apply_async(queue="other")
        pinned = await group(add.s(1, 1).set(queue="default"), add.s(2, 2)).apply_async(
            queue="other"
        )
        started = time.monotonic()
        chained = await chain(add.s(1), add.s(10)).apply_async(args=(1,), countdown=0.5)
        named = await chord((add.s(i, 1) for i in range(3)), tsum.s()).apply_async(
            job_id="chord-7", queue="other"
        )
        with pytest.raises(ConfigError, match="job_id= names one job"):
            await group(add.s(1, 1)).apply_async(job_id="x")
        # only "other" is consumed first: members routed there run, "default" waits
        other_only = await burst(math_app, queues=["other"])
        assert other_only.succeeded == 3 + 1 + 3
        assert await grouped.get(timeout=5) == [0, 2, 4]
        assert named.id == "chord-7"
        async with running_worker(math_app, queues=["other", "default"]):
            assert await named.get(timeout=10) == 6  # 1 + 2 + 3
            assert await pinned.get(timeout=10) == [2, 4]
            assert await chained.get(timeout=10) == 12
            assert time.monotonic() - started >= 0.45  # the first step waited its countdown

    # the same from code without an event loop (a thread here)
    def sync_code() -> tuple[list[int], int, int, int]:
        g = group(add.s(5, 5), add.s(6, 6)).apply_async_sync(queue="other")
        c = chain(add.s(1, 1), add.s(1)).apply_async_sync()
        d = chord([add.s(1, 1)], tsum.s()).apply_async_sync(job_id="chord-sync")
        s = add.s(3).apply_async_sync(args=(4,))
        return (
            g.get_sync(timeout=10),
            c.get_sync(timeout=10),
            d.get_sync(timeout=10),
            s.get_sync(timeout=10),
        )

    async with running_worker(math_app, queues=["other", "default"]):
        assert await asyncio.to_thread(sync_code) == ([10, 12], 3, 2, 7)
    math_app.close_sync()


async def test_large_group_enqueues_pipelined(math_app: App) -> None:
    add = t(math_app, "add")
    async with math_app:
        started = time.monotonic()
        handle = await group(add.s(i, 1) for i in range(2000)).delay()
        enqueued = time.monotonic() - started
        async with running_worker(math_app, concurrency=64):
            results = await handle.get(timeout=60)
    assert results == [i + 1 for i in range(2000)]
    print(f"2000-member group enqueued in {enqueued:.2f}s")


@pytest.fixture
async def canvas_app(
    nats_server: NatsServer, jsq_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[App]:
    monkeypatch.setenv("JSQ_TEST_PREFIX", jsq_prefix)
    import importlib

    import tests.apps.canvasapp as module

    app = importlib.reload(module).app
    app.configure(url=nats_server.url)
    try:
        yield app
    finally:
        await destroy(app)


@pytest.mark.slow
async def test_a_nested_chord_survives_repeated_sigkill_of_its_workers(
    canvas_app: App, nats_server: NatsServer, jsq_prefix: str, tmp_path: Path
) -> None:
    """Four chords of 50 members in the header of a chord: under SIGKILL at random moments,
    each inner callback and the outer one run exactly once."""
    tasks = canvas_app.tasks
    square, subtotal, total = (
        tasks[f"tests.apps.canvasapp.{name}"] for name in ("square", "subtotal", "total")
    )
    marks = tmp_path / "marks"
    marks.mkdir()
    parts, size = 4, 50

    def worker() -> Process:
        return Process.jsqueue(
            "worker",
            "-A",
            "tests.apps.canvasapp:app",
            "--url",
            nats_server.url,
            "-c",
            "8",
            env={"JSQ_TEST_PREFIX": jsq_prefix},
            cwd=ROOT,
            log_dir=tmp_path,
            name="worker",
        ).start()

    inner = [
        chord(
            group(square.s(i) for i in range(p * size, (p + 1) * size)),
            subtotal.s(str(marks), p),
        )
        for p in range(parts)
    ]
    expected = sum(i * i for i in range(parts * size))
    rng = random.Random(7)
    kills = 0
    async with canvas_app:
        handle = await chord(inner, total.s(str(marks))).delay()
        workers = [worker(), worker()]
        try:
            deadline = time.monotonic() + 90
            while not await handle.ready():
                assert time.monotonic() < deadline, "chord did not complete"
                await asyncio.sleep(rng.uniform(0.1, 0.4))  # a random moment to kill at
                victim = rng.randrange(len(workers))
                workers[victim].kill()
                kills += 1
                workers[victim] = worker()
            assert await handle.get(timeout=5) == expected
            for w in workers:
                w.stop()
            await burst(canvas_app)  # let every redelivery play out, then look for a 2nd callback
        finally:
            for w in workers:
                w.kill()
    lines = (marks / "callback.log").read_text().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].split()[1] == str(expected)
    subtotals = sorted((marks / "subtotal.log").read_text().splitlines())
    want = [f"{p} {sum(i * i for i in range(p * size, (p + 1) * size))}" for p in range(parts)]
    assert subtotals == sorted(want)
    assert kills >= 3
    print(f"nested chord of {parts}x{size} completed, one callback each, across {kills} SIGKILLs")


async def test_a_claim_left_by_a_crash_is_completed_by_the_same_member_once(math_app: App) -> None:
    """The crash window: the last member claimed the callback, then died before publishing."""
    from jsqueue.envelope import Envelope
    from jsqueue.services import chords
    from jsqueue.services.continuation import send_node

    calls = []

    @math_app.task(name="cb")
    async def cb(values: list[int]) -> int:
        calls.append(values)
        return sum(values)

    async with math_app:
        await chords.start_chord(math_app, "crashy", 2, cb.s().to_dict())
        store = await (await math_app.broker()).kv("chords", ttl=60)
        first = Envelope(id="m0", task="add", chord={"id": "crashy", "index": 0, "size": 2})
        last = Envelope(id="m1", task="add", chord={"id": "crashy", "index": 1, "size": 2})
        await chords.member_succeeded(math_app, first, 10, send_node)
        # member m1 recorded its result and its claim, then its worker died
        await store.create("crashy.m.1", b'{"r": 20}')
        await store.create("crashy.claim", b'{"state": "claimed", "member": "m1", "at": 0}')
        await chords.member_succeeded(
            math_app, first, 10, send_node
        )  # a redelivered other member: no
        await burst(math_app)
        assert calls == []
        await chords.member_succeeded(math_app, last, 20, send_node)  # m1 redelivered: it publishes
        await chords.member_succeeded(
            math_app, last, 20, send_node
        )  # again: the claim says published
        await burst(math_app)
        claim = await store.get("crashy.claim")
    assert calls == [[10, 20]]
    assert claim is not None
    assert b'"published"' in claim.value


async def test_a_claimer_that_fails_on_redelivery_still_sends_the_callback(math_app: App) -> None:
    """The claimer died before publishing, and its redelivery then failed for good: every member
    had succeeded, so the callback is sent once instead of the chord hanging."""
    from jsqueue.services import chords
    from jsqueue.services.producer import build_envelope, send

    calls = []

    @math_app.task(name="cb")
    async def cb(values: list[int]) -> int:
        calls.append(values)
        return sum(values)

    @math_app.task(name="second_run_fails")
    async def second_run_fails() -> int:
        raise ValueError("not this time")

    async with math_app:
        await chords.start_chord(math_app, "stranded", 2, cb.s().to_dict())
        store = await (await math_app.broker()).kv("chords", ttl=60)
        await store.create("stranded.m.0", b'{"r": 10}')
        # member 1 succeeded, recorded its result and its claim, then its worker died ...
        last = build_envelope(
            math_app.settings,
            "second_run_fails",
            queue="default",
            serializer="json",
            chord={"id": "stranded", "index": 1, "size": 2},
        )
        await store.create("stranded.m.1", b'{"r": 20}')
        claim = {"state": "claimed", "member": last.id, "at": 0}
        await store.create("stranded.claim", json.dumps(claim).encode())
        # ... and its redelivery raises, which dead-letters it
        await send(await math_app.broker(), last)
        await burst(math_app)
        await burst(math_app)  # the callback the failing member sent
        assert await AsyncResult(math_app, "stranded").get(timeout=5) == 30
        entry = await store.get("stranded.claim")
    assert calls == [[10, 20]]
    assert entry is not None
    assert json.loads(entry.value)["state"] == "published"


async def test_an_expired_member_fails_the_chord_and_stops_the_chain(math_app: App) -> None:
    add, tsum = t(math_app, "add"), t(math_app, "tsum")
    calls = []

    @math_app.task(name="after_expired")
    async def after_expired(x: int) -> None:
        calls.append(x)

    async with math_app:
        stale = add.s(2, 2).set(expires=0.05)
        handle = await chord([add.s(1, 1), stale], tsum.s()).delay()
        stopped = await chain(add.s(1, 1).set(expires=0.05), after_expired.s()).delay()
        await asyncio.sleep(0.1)  # past their expiry before any worker picks them up
        await burst(math_app)
        with pytest.raises(TaskFailed, match=r"Expired: chord member 1 .* expired before it could"):
            await handle.get(timeout=5)
        with pytest.raises(TaskFailed, match="expired before it could run"):
            await stopped.get(timeout=5)
    assert calls == []

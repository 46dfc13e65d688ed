"""Queues under load, with real worker processes: slots lent across queues, an urgent job
overtaking a 10,000-job backlog (and the backlog still moving), retries that wait an hour on a
server schedule without stalling the queue, and a pause that holds while jobs keep arriving."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from jsqueue import App, JobState
from jsqueue.config import check_priority
from jsqueue.errors import ConfigError
from jsqueue.services.producer import build_envelope, send_many
from jsqueue.services.status import queue_status
from jsqueue.testing import Process
from jsqueue.wire.server import NatsServer

from .support import ROOT, app_of

pytestmark = pytest.mark.slow


@pytest.fixture
async def loadapp(
    nats_server: NatsServer, jsq_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[App]:
    async with app_of(
        "loadapp", nats_server, jsq_prefix, monkeypatch, JSQ_TEST_MAX_ACK_PENDING="50"
    ) as app:
        yield app


def worker(app: App, tmp: Path, *args: str, name: str = "worker") -> Process:
    return Process.jsqueue(
        "worker",
        "-A",
        "tests.apps.loadapp:app",
        "--url",
        str(app.settings.url),
        *args,
        env={"JSQ_TEST_PREFIX": app.settings.prefix, "JSQ_TEST_MAX_ACK_PENDING": "50"},
        cwd=ROOT,
        log_dir=tmp,
        name=name,
    )


def cli(app: App, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jsqueue", *args, "-A", "tests.apps.loadapp:app"],
        cwd=ROOT,
        env={**os.environ, "JSQ_TEST_PREFIX": app.settings.prefix, "JSQUEUE_URL": app.settings.url},
        capture_output=True,
        text=True,
        timeout=60,
    )


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        await asyncio.sleep(0.02)


def task(app: App, name: str) -> object:
    return app.tasks[f"tests.apps.loadapp.{name}"]


async def test_idle_queues_lend_their_slots_and_the_over_pull_is_bounded(
    loadapp: App, tmp_path: Path
) -> None:
    hold = task(loadapp, "hold")
    held = tmp_path / "held"
    async with loadapp:
        for _ in range(40):
            await hold.delay(str(tmp_path))  # type: ignore[attr-defined]
        with worker(loadapp, tmp_path, "-Q", "a,b", "-c", "8"):
            # with a per-queue split, queue b would get 4 of the 8 slots while a sits empty
            await until(lambda: len(lines(held)) == 8, 20, "8 jobs of b running at once")
            broker = await loadapp.broker()
            state = await broker.streams.consumer("b")
            assert state is not None
            # 8 running, the rest wait in the stream: at most twice the slots (plus one per
            # idle lane) are out of it
            assert 8 <= state.ack_pending <= 2 * 8 + 8
            assert state.pending >= 40 - (2 * 8 + 8)
            (tmp_path / "go").touch()
            await until(lambda: len(lines(held)) == 40, 30, "all 40 held jobs")
    assert len({line.split()[0] for line in lines(held)}) == 40


async def test_prefetch_sets_how_many_jobs_a_worker_holds_beyond_its_slots(
    loadapp: App, tmp_path: Path
) -> None:
    hold = task(loadapp, "hold")
    held = tmp_path / "held"
    async with loadapp:
        for _ in range(20):
            await hold.delay(str(tmp_path))  # type: ignore[attr-defined]
        broker = await loadapp.broker()

        async def ack_pending() -> int:
            state = await broker.streams.consumer("b")
            assert state is not None
            return state.ack_pending

        with worker(loadapp, tmp_path, "-Q", "b", "-c", "2", "--prefetch", "0", name="w0"):
            await until(lambda: len(lines(held)) == 2, 20, "2 jobs running on the first worker")
            # it holds no job beyond its two slots: the other 18 wait for whichever worker
            assert await ack_pending() == 2
            with worker(loadapp, tmp_path, "-Q", "b", "-c", "2", "--prefetch", "2", name="w2"):
                await until(lambda: len(lines(held)) == 4, 20, "2 jobs running on the second")
                deadline = time.monotonic() + 10
                while (pending := await ack_pending()) < 6:
                    assert time.monotonic() < deadline, f"ack pending stayed {pending}, not 6"
                    await asyncio.sleep(0.05)
                assert pending == 6
                assert len(lines(held)) == 4  # a held job waits for a slot: it has not started
                (tmp_path / "go").touch()
                await until(lambda: len(lines(held)) == 20, 30, "all 20 held jobs")
    ids = [line.split()[0] for line in lines(held)]
    assert len(set(ids)) == 20  # each ran once
    assert {line.split()[1] for line in lines(held)} == {"1"}  # none was given back


def test_a_negative_prefetch_is_refused_by_the_cli(loadapp: App) -> None:
    done = cli(loadapp, "worker", "--prefetch", "-1")
    assert done.returncode == 2
    assert "--prefetch" in done.stderr
    assert "-1" in done.stderr


async def test_an_urgent_job_overtakes_a_backlog_of_10000_and_the_backlog_still_moves(
    loadapp: App, tmp_path: Path
) -> None:
    quick = task(loadapp, "quick")
    started = tmp_path / "started"
    marks = str(tmp_path)
    async with loadapp:
        broker = await loadapp.broker()

        def jobs(n: int, priority: int, tag: str) -> list[object]:
            return [
                build_envelope(
                    loadapp.settings,
                    quick.name,  # type: ignore[attr-defined]
                    (marks, tag),
                    queue="default",
                    serializer="json",
                    priority=priority,
                )
                for _ in range(n)
            ]

        await send_many(broker, jobs(10_000, 1, "normal"))  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match=r"off the scale: 0 \(low\) to 3 \(urgent\)"):
            await quick.apply_async((marks, "x"), priority=7)  # type: ignore[attr-defined]
        with worker(loadapp, tmp_path, "-c", "4"):
            await until(lambda: len(lines(started)) >= 300, 30, "300 normal jobs started")
            sent = time.time()
            await quick.apply_async((marks, "urgent"), priority=3)  # type: ignore[attr-defined]
            await until(lambda: any(x.startswith("urgent") for x in lines(started)), 10, "urgent")
            # then a stream of urgent work: the normal backlog must still get slots
            await send_many(broker, jobs(400, 3, "stream"))  # type: ignore[arg-type]
            await until(lambda: sum(x.startswith("stream") for x in lines(started)) == 400, 60, "")
    starts = [(tag, float(at)) for tag, at in (line.split() for line in lines(started))]
    urgent_at = next(at for tag, at in starts if tag == "urgent")
    assert urgent_at - sent < 1.0, (
        f"the urgent job started {urgent_at - sent:.3f}s after it was sent"
    )
    overtaken = 10_000 - sum(1 for tag, at in starts if tag == "normal" and at < urgent_at)
    assert overtaken > 9000  # it started ahead of nearly all the backlog
    stream = [at for tag, at in starts if tag == "stream"]
    window = [tag for tag, at in starts if min(stream) <= at <= max(stream)]
    share = window.count("normal") / len(window)
    assert 0.05 < share < 0.4, f"normal work got {share:.0%} of the slots under urgent load"
    print(
        f"urgent job started {1000 * (urgent_at - sent):.1f} ms after sending, ahead of "
        f"{overtaken} queued jobs; under 400 urgent jobs normal work got {share:.0%} of starts"
    )


async def test_jobs_waiting_an_hour_to_retry_do_not_stall_the_queue(
    loadapp: App, tmp_path: Path
) -> None:
    """max_ack_pending is 50: 300 jobs each waiting out a nak of an hour would stop the queue."""
    later, once = task(loadapp, "later"), task(loadapp, "once")
    marks = str(tmp_path)
    async with loadapp:
        failing = [await later.delay(marks) for _ in range(300)]  # type: ignore[attr-defined]
        healthy = [await once.delay(marks) for _ in range(300)]  # type: ignore[attr-defined]
        with worker(loadapp, tmp_path, "-c", "8"):
            for handle in healthy:
                await handle.get(timeout=60)
            await until(lambda: len(lines(tmp_path / "later")) == 300, 30, "300 first attempts")
            deadline = time.monotonic() + 20
            while (await failing[-1].state()) is not JobState.RETRY:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            [status] = [q for q in await queue_status(loadapp) if q.queue == "default"]
            shown = cli(loadapp, "inspect", "job", failing[0].id)
            revoked = cli(loadapp, "revoke", failing[1].id)
            [after] = [q for q in await queue_status(loadapp) if q.queue == "default"]
    assert status.retrying == 300
    assert status.unacked == 0  # none holds an ack-pending slot while it waits
    assert shown.returncode == 0, shown.stderr
    job = json.loads(shown.stdout)
    assert job["where"] == "retrying"
    assert job["retries_at"] == pytest.approx(time.time() + 3600, abs=120)
    assert job["attempts"] == 1
    assert revoked.returncode == 0, revoked.stderr
    assert await failing[1].state() is JobState.REVOKED
    assert after.retrying == 299
    assert all(len(lines(tmp_path / f"{h.id}.ran")) == 1 for h in healthy)


async def test_a_pause_holds_while_jobs_arrive_and_a_resume_runs_each_once(
    loadapp: App, tmp_path: Path
) -> None:
    once = task(loadapp, "once")
    marks = str(tmp_path)
    async with loadapp:
        with (
            worker(loadapp, tmp_path, "-c", "4", name="w1"),
            worker(loadapp, tmp_path, "-c", "4", name="w2"),
        ):
            first = await once.delay(marks)  # type: ignore[attr-defined]
            await first.get(timeout=20)  # both workers are up and pulling
            paused = cli(loadapp, "queue", "pause", "default")
            assert paused.returncode == 0, paused.stderr
            sent = [await once.delay(marks) for _ in range(100)]  # type: ignore[attr-defined]
            status = cli(loadapp, "status")
            with worker(loadapp, tmp_path, "-c", "4", name="w3") as late:
                await until(lambda: "ready" in late.output(), 20, "the third worker")
                await asyncio.sleep(1.5)  # nothing may run: no event to wait for
                ran_while_paused = sum(len(lines(tmp_path / f"{h.id}.ran")) for h in sent)
                listed = cli(loadapp, "queue", "list")
                resumed = cli(loadapp, "queue", "resume", "default")
                for handle in sent:
                    await handle.get(timeout=30)
    assert ran_while_paused == 0
    assert "PAUSED" in status.stdout
    assert "default" in listed.stdout
    assert resumed.returncode == 0, resumed.stderr
    assert "queue default resumed" in resumed.stdout
    assert [len(lines(tmp_path / f"{h.id}.ran")) for h in sent] == [1] * 100
    assert [lines(tmp_path / f"{h.id}.ran") for h in sent[:3]] == [["1"]] * 3  # no nak: attempt 1


async def test_a_pause_stops_a_running_backlog_within_a_second(
    loadapp: App, tmp_path: Path
) -> None:
    quick = task(loadapp, "quick")
    started = tmp_path / "started"
    marks = str(tmp_path)
    async with loadapp:
        await quick.starmap([(marks, "b")] * 6000)  # type: ignore[attr-defined]
        with (
            worker(loadapp, tmp_path, "-c", "4", name="w1"),
            worker(loadapp, tmp_path, "-c", "4", name="w2"),
        ):
            await until(lambda: len(lines(started)) >= 200, 30, "the backlog running")
            paused = cli(loadapp, "queue", "pause", "default")
            done = time.time()  # the pause is recorded before the command returns
            assert paused.returncode == 0, paused.stderr
            before = len(lines(started))
            await asyncio.sleep(2.0)  # nothing may start: no event to wait for
            after = [float(line.split()[1]) for line in lines(started)]
            resumed = cli(loadapp, "queue", "resume", "default")
            assert resumed.returncode == 0, resumed.stderr
            await until(lambda: len(lines(started)) == 6000, 60, "the whole backlog, once")
    late = [at for at in after if at > done + 1.0]
    assert before < 6000, "the backlog ran out before the pause"
    assert not late, f"{len(late)} jobs started more than 1 s after the pause"
    assert len(lines(started)) == 6000  # each job once


async def test_a_job_held_on_a_paused_queue_is_handed_back_without_an_attempt(
    loadapp: App, tmp_path: Path
) -> None:
    """A worker holds what it had pulled when the pause came no longer than a while: it puts
    each back at the end of the queue (attempts carried) and acks it."""
    from jsqueue.testing import running_worker

    hold = task(loadapp, "hold")
    held = tmp_path / "held"
    async with loadapp, running_worker(loadapp, queues=["b"], concurrency=1) as running:
        first = await hold.delay(str(tmp_path))  # type: ignore[attr-defined]
        await until(lambda: len(lines(held)) == 1, 10, "the first job holding the slot")
        # the urgent lane's one-job request brings this one in, to wait for the slot
        waiting = await hold.apply_async((str(tmp_path),), priority=3)  # type: ignore[attr-defined]
        lane = running.dispatch.lanes[("b", 3)]
        await until(lambda: len(lane.waiting) == 1, 10, "a delivery waiting for a slot")
        running.dispatch.set_paused("b", True)  # as the watch of the queues bucket does
        assert await running.dispatch.hand_back_held(hold=0) == 1
        broker = await loadapp.broker()
        s = loadapp.settings
        deadline = time.monotonic() + 10
        while True:  # the original goes once the server has processed its ack
            stored = await broker.streams.messages(s.jobs_stream, s.queue_subject("b", 3))
            if len(stored) == 1 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        [copy] = stored
        (tmp_path / "go").touch()
        await first.get(timeout=10)
        running.dispatch.set_paused("b", False)
        await waiting.get(timeout=10)
    assert copy.headers["Jsq-Attempt"] == "0"
    assert lines(held) == [f"{first.id} 1", f"{waiting.id} 1"]  # the wait was no attempt


async def test_a_lost_ack_after_a_retry_moved_does_not_run_the_job_twice(
    loadapp: App, tmp_path: Path
) -> None:
    """The worker recorded the move and sent the schedule, then died before its ack: the old
    message comes back, and is acked without running; the schedule stays one."""
    from jsqueue.testing import burst

    later = task(loadapp, "later")
    async with loadapp:
        job = await later.delay(str(tmp_path))  # type: ignore[attr-defined]
        await burst(loadapp)
        broker = await loadapp.broker()
        s = loadapp.settings
        [scheduled] = await broker.streams.messages(
            s.jobs_stream, s.retry_subject("default", job.id)
        )
        # the old message, as if its ack had been lost: the same bytes, delivered again
        await broker.publish(s.queue_subject("default"), scheduled.data, {"Nats-Msg-Id": "old"})
        await _deliver_and_drop(loadapp)
        stats = await burst(loadapp)
        again = await broker.streams.messages(s.jobs_stream, s.retry_subject("default", job.id))
    assert lines(tmp_path / "later") == [job.id]  # it ran once
    assert stats.skipped == 1
    assert len(again) == 1  # still one schedule


def test_priorities_are_a_small_stated_scale() -> None:
    assert [check_priority(p) for p in range(4)] == [0, 1, 2, 3]
    for bad in (-1, 4, 9, 1.5, "high", True, None):
        with pytest.raises(ConfigError, match="higher runs first; the default is 1"):
            check_priority(bad)


async def _deliver_and_drop(app: App) -> None:
    """Take the next message of the default queue and give it back, as a worker that died
    would have: its next delivery is its second."""
    import nats

    client = await nats.connect(str(app.settings.url))
    try:
        js = client.jetstream()
        sub = await js.pull_subscribe_bind(
            app.settings.consumer_name("default"), app.settings.jobs_stream
        )
        [msg] = await sub.fetch(1, timeout=10)
        await msg.nak()
    finally:
        await client.close()

"""jsqueue beat against a real server: on time, exactly once with two beats, failover, restart."""

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import jsqueue
from jsqueue import App, current_job
from jsqueue.beat import Beat
from jsqueue.testing import Process, destroy, running_worker
from jsqueue.wire.server import NatsServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def beat_app(nats_server: NatsServer, jsq_prefix: str) -> AsyncIterator[App]:
    app = App("beat", url=nats_server.url, prefix=jsq_prefix)
    try:
        yield app
    finally:
        await destroy(app)


async def run_for(beat: Beat, until: asyncio.Event, timeout: float) -> None:
    task = asyncio.create_task(beat.run())
    try:
        await asyncio.wait_for(until.wait(), timeout)
    finally:
        beat.stop()
        await asyncio.wait_for(task, 10)


async def test_interval_and_cron_entries_fire_on_time(beat_app: App) -> None:
    lateness: dict[str, list[float]] = {"every": [], "cron": []}
    enough = asyncio.Event()

    @beat_app.task(ignore_result=True)
    async def record(kind: str) -> None:  # on the loop: it sets an asyncio.Event
        tick = int(current_job().id.rsplit(".", 1)[1])
        lateness[kind].append(time.time() - tick)
        if len(lateness["every"]) >= 6 and len(lateness["cron"]) >= 3:
            enough.set()

    beat_app.add_periodic(record.s("every"), every=1, name="every")
    beat_app.add_periodic(record.s("cron"), cron="*/2 * * * * *", name="cron")
    async with beat_app, running_worker(beat_app):
        await run_for(Beat(beat_app, lease_ttl=2), enough, 20)
    all_late = sorted(lateness["every"] + lateness["cron"])
    assert all_late[0] >= 0  # never early
    assert all_late[-1] < 1.0
    p50, p99 = all_late[len(all_late) // 2], all_late[int(len(all_late) * 0.99) - 1]
    ms = [round(x * 1000, 1) for x in (p50, p99)]
    print(f"beat lateness over {len(all_late)} ticks: p50 {ms[0]} ms, p99 {ms[1]} ms")


async def published_ticks(app: App, entry: str) -> list[int]:
    broker = await app.broker()
    messages = await broker.streams.messages(
        app.settings.jobs_stream, app.settings.queue_subject("default")
    )
    ids = [json.loads(m.data)["id"] for m in messages]
    return [int(i.rsplit(".", 1)[1]) for i in ids if i.startswith(f"beat.{entry}.")]


@pytest.mark.slow
async def test_two_beats_leader_killed_and_server_restarted_every_tick_exactly_once(
    tmp_path: Path, jsq_prefix: str
) -> None:
    server = NatsServer(store_dir=tmp_path / "store").start()
    # Msg-Id dedupe over the server's minimum of 100 ms only; and the beats' own "sent" lines are
    # counted below, which no dedupe can hide
    app = App("beat", url=server.url, prefix=jsq_prefix, duplicate_window=0.1)
    env = {"JSQ_TEST_PREFIX": jsq_prefix, "JSQ_TEST_DUPLICATE_WINDOW": "0.1"}

    def beat_process(name: str) -> Process:
        return Process.jsqueue(
            "beat",
            "-A",
            "tests.apps.beatapp:app",
            "--url",
            server.url,
            "--lease-ttl",
            "2",
            env=env,
            cwd=ROOT,
            log_dir=tmp_path,
            name=name,
        ).start()

    async def wait_for_ticks(count: int, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        async with app:
            while True:
                ticks = await published_ticks(app, "tick")
                if len(ticks) >= count or time.monotonic() > deadline:
                    return ticks
                await asyncio.sleep(0.25)

    beats = [beat_process("beat-a"), beat_process("beat-b")]
    try:
        await wait_for_ticks(8, 30)
        leader = next(b for b in beats if "is the leader" in b.output())
        leader.kill()
        killed_at = time.time()
        await wait_for_ticks(16, 30)
        beats.append(beat_process("beat-c"))  # two beats alive again across the restart
        await wait_for_ticks(20, 30)
        await asyncio.to_thread(server.restart)
        await wait_for_ticks(36, 60)
        for b in beats:
            b.stop()
        async with app:
            ticks = await published_ticks(app, "tick")
    finally:
        for b in beats:
            b.kill()
        await app.close()
        server.cleanup()
    assert len(ticks) >= 36
    assert len(ticks) == len(set(ticks)), "a tick was enqueued twice"
    assert ticks == sorted(ticks)
    assert ticks == list(range(ticks[0], ticks[-1] + 1)), "a tick was lost"
    sent = Counter(
        int(m) for b in beats for m in re.findall(r" sent beat\.tick\.(\d+) ", b.output())
    )
    assert set(sent) >= set(ticks)
    assert max(sent.values()) == 1, "a beat sent a tick another had sent"
    survivor = next(b for b in beats[:2] if b is not leader)
    took_over = re.search(
        r"(\d\d:\d\d:\d\d,\d+) INFO +jsqueue.beat: beat \S+ is the leader", survivor.output()
    )
    assert took_over
    from datetime import datetime

    became = datetime.strptime(took_over.group(1), "%H:%M:%S,%f").time()
    today = datetime.fromtimestamp(killed_at)
    takeover = datetime.combine(today.date(), became).timestamp() - killed_at
    assert 0 < takeover < 2 * 2 + 2  # within twice the 2 s lease, plus the standby's poll
    print(f"{len(ticks)} ticks once each; standby led {takeover:.1f}s after the SIGKILL")


async def test_downtime_catch_up_latest_sends_one_and_skip_none(beat_app: App) -> None:
    sent: list[str] = []

    @beat_app.task(ignore_result=True)
    def job() -> None:
        sent.append(current_job().id)

    beat_app.add_periodic(job.s(), every=10, name="latest", catch_up="latest")
    beat_app.add_periodic(job.s(), every=10, name="skipper", catch_up="skip")
    # A moment 5.5 s after a tick: the last tick is older than the catch-up window (4 s here),
    # so it counts as missed by downtime, and the next tick is 4.5 s away.
    await asyncio.sleep((5.5 - time.time() % 10) % 10)  # a wall-clock moment, not a sync
    now = time.time()
    last_due = int(now // 10 * 10)
    async with beat_app:
        broker = await beat_app.broker()
        state = await broker.kv("beat_state")
        for name in ("latest", "skipper"):  # both last fired a minute ago, then the beat died
            await state.put(name, json.dumps({"last_tick": last_due - 60}).encode())
        beat = Beat(beat_app, lease_ttl=1, catch_up_window=4)
        async with running_worker(beat_app):
            await run_for(beat, beat.became_leader, 10)
            await asyncio.sleep(0.5)  # let the worker run what the takeover sent
    assert sent == [f"beat.latest.{last_due}"]


async def test_a_claim_left_unpublished_is_published_by_the_next_leader(beat_app: App) -> None:
    @beat_app.task(ignore_result=True)
    def job() -> None: ...

    beat_app.add_periodic(job.s(), every=3600, name="hourly")
    async with beat_app:
        broker = await beat_app.broker()
        tick = int(time.time() // 3600 * 3600)
        ticks = await broker.kv("beat_ticks", ttl=3600)
        await ticks.create(
            f"hourly.{tick}", json.dumps({"state": "claimed", "beat": "dead"}).encode()
        )
        state = await broker.kv("beat_state")
        await state.put("hourly", json.dumps({"last_tick": tick - 3600}).encode())
        beat = Beat(beat_app, lease_ttl=1)
        await run_for(beat, beat.became_leader, 10)
        assert await published_ticks(beat_app, "hourly") == [tick]
        claim = await ticks.get(f"hourly.{tick}")
        assert claim is not None
        assert json.loads(claim.value)["state"] == "published"
        # a second beat taking over later does not send it again
        again = Beat(beat_app, lease_ttl=1)
        await run_for(again, again.became_leader, 10)
        assert await published_ticks(beat_app, "hourly") == [tick]


def test_beat_list_prints_entries_and_next_fire_in_their_zone(jsq_prefix: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "jsqueue", "beat", "-A", "tests.apps.beatapp:app", "--list"],
        cwd=ROOT,
        env={**os.environ, "JSQ_TEST_PREFIX": jsq_prefix},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["NAME", "TASK", "SCHEDULE", "NEXT", "CATCH-UP"]
    assert re.search(
        r"^tick +tests\.apps\.beatapp\.tick +every 0:00:01 +\S+ \S+ UTC +latest", out.stdout, re.M
    )
    assert re.search(
        r"^nightly .* cron 0 3 \* \* \* \(Europe/Berlin\) +\S+ 03:00:00 CES?T +skip",
        out.stdout,
        re.M,
    )


def test_beat_without_entries_says_so(nats_server: NatsServer) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "jsqueue",
            "beat",
            "-A",
            "tests.apps.faulty:app",
            "--url",
            nats_server.url,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert "has no periodic entries" in out.stderr


async def test_run_beat_and_run_worker_embedded_in_your_own_process(beat_app: App) -> None:
    seen: list[str] = []
    twice = asyncio.Event()

    @beat_app.task(ignore_result=True)
    async def tick() -> None:  # on the loop: asyncio.Event is not for threads
        seen.append(current_job().id)
        if len(seen) >= 2:
            twice.set()

    beat_app.add_periodic(tick.s(), every=1, name="embedded")
    async with beat_app:
        beat = asyncio.create_task(jsqueue.run_beat(beat_app, lease_ttl=2))
        worker = asyncio.create_task(jsqueue.run_worker(beat_app, concurrency=4))
        try:
            await asyncio.wait_for(twice.wait(), 15)
        finally:
            for running in (beat, worker):
                running.cancel()
            outcomes = await asyncio.wait_for(
                asyncio.gather(beat, worker, return_exceptions=True), 15
            )
    assert all(isinstance(o, asyncio.CancelledError) for o in outcomes), outcomes
    assert all(re.fullmatch(r"beat\.embedded\.\d+", job_id) for job_id in seen), seen
    assert len(set(seen)) == len(seen)

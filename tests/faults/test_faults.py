"""The fault-injection suite: real processes killed, frozen and restarted; the ledger proves
that no acknowledged job was lost. Each scenario has its own nats-server and streams."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from jsqueue import PayloadTooLarge, TaskFailed
from jsqueue.envelope import new_job_id
from jsqueue.services import dlq as dead_letters
from jsqueue.services.producer import build_envelope, send_many
from jsqueue.testing import wait_until

from .conftest import Scenario

pytestmark = pytest.mark.slow


async def enqueue_all(
    scenario: Scenario, task_name: str, args: list[tuple[object, ...]], tag: str
) -> list[str]:
    """Enqueue one job per args through the ledger, 100 publishes in flight at a time."""
    task = scenario.app.tasks[task_name]
    ids = [f"{tag}-{i}" for i in range(len(args))]
    for start in range(0, len(ids), 100):
        await asyncio.gather(
            *(
                scenario.ledger.enqueue(job_id, task.apply_async(args=a, job_id=job_id))
                for job_id, a in zip(
                    ids[start : start + 100], args[start : start + 100], strict=True
                )
            )
        )
    return ids


def report(scenario: Scenario, dead: set[str], label: str) -> str:
    found = scenario.ledger.check(dead)
    line = f"[{label}] {found.summary()}"
    print(line)
    assert found.ok, (
        f"{line}: lost {sorted(found.lost)[:10]} unexpected {sorted(found.unexpected)[:10]}"
    )
    return line


async def test_1_baseline_5000_jobs_two_workers(scenario: Scenario) -> None:
    async with scenario.app:
        ids = await enqueue_all(
            scenario, "tests.apps.ledgered.record", [(i,) for i in range(5000)], "s1"
        )
        with scenario.workers(2, "-c", "32"):
            await scenario.drained()
        dead = await scenario.dead_ids()
    report(scenario, dead, "baseline")
    found = scenario.ledger.check(dead)
    assert found.acked == len(ids) == found.finished == 5000
    assert found.duplicates == {}


async def test_2_sigkill_a_worker_repeatedly(scenario: Scenario) -> None:
    kills: dict[int, float] = {}
    async with scenario.app:
        await enqueue_all(
            scenario, "tests.apps.ledgered.slow", [(i, 0.02) for i in range(2000)], "s2"
        )
        workers = [scenario.worker("-c", "8", name=f"w{i}") for i in range(2)]
        for round_ in range(6):
            victim = workers[round_ % 2]

            def busy(pid: int = victim.pid) -> bool:
                return any(
                    e["e"] == "started" and e["pid"] == pid for e in scenario.ledger.events()
                )

            # the kill must find it in its jobs (on a loaded machine a new worker takes time)
            await wait_until(busy, 60, f"a job started by worker {victim.pid}")
            await asyncio.sleep(0.2)
            victim.kill()
            kills[victim.pid] = time.time()
            workers[round_ % 2] = scenario.worker("-c", "8", name=f"w{round_}")
        await scenario.drained(timeout=120)
        for w in workers:
            w.stop()
        dead = await scenario.dead_ids()
    report(scenario, dead, "sigkill x6")
    ack_wait = scenario.app.settings.ack_wait
    backs = []
    starts: dict[str, list[tuple[float, int]]] = {}
    for event in scenario.ledger.events():
        if event["e"] == "started":
            starts.setdefault(event["id"], []).append((event["t"], event["pid"]))
    for runs in starts.values():
        for (_, pid), (again, _) in itertools.pairwise(runs):
            if pid in kills:
                backs.append(again - kills[pid])
    assert backs, "no job was hit by a kill"
    # ack_wait, then a pull and a free slot: seen up to 3.3 s on 2 loaded cores (a job held by a
    # dead worker with no heartbeat would take far longer: the servers' default ack_wait is 30 s)
    assert max(backs) <= ack_wait + 4, backs
    span = f"{min(backs):.2f}-{max(backs):.2f}s"
    print(f"[sigkill x6] {len(backs)} killed jobs came back after {span} (ack_wait {ack_wait}s)")


async def test_2b_sigkill_workers_and_children_of_the_process_pool(scenario: Scenario) -> None:
    """Under --pool process: a parent killed with its children, and children killed alone (each
    fails only its own job, which is dead-lettered as a ChildDied). Nothing acked is lost."""
    killed_children = 0
    async with scenario.app:
        await enqueue_all(
            scenario, "tests.apps.ledgered.slow_def", [(i, 0.02) for i in range(1000)], "s2b"
        )
        args = ("--pool", "process", "-c", "3")
        workers = [scenario.worker(*args, name=f"w{i}") for i in range(2)]
        for round_ in range(4):
            await asyncio.sleep(0.8)
            victim = workers[round_ % 2]
            if round_ % 2:
                victim.kill()  # the parent: its children follow it
                workers[round_ % 2] = scenario.worker(*args, name=f"w{round_}")
                continue

            def children(pid: int = victim.pid) -> list[psutil.Process]:
                found = psutil.Process(pid).children(recursive=True)
                return [c for c in found if c.ppid() != pid]  # forked by the forkserver

            await wait_until(lambda: len(children()) >= 3, 30, "the pool's children")
            busy = children()
            for child in busy[:2]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
                    killed_children += 1
        await scenario.drained(timeout=120)
        for w in workers:
            w.stop()
        dead = await scenario.dead_ids()
    line = report(scenario, dead, "process pool kills")
    assert killed_children >= 2
    assert 0 < len(dead) <= killed_children, line  # a killed child's job, and only that


async def test_3_sigkill_between_side_effect_and_ack(scenario: Scenario) -> None:
    async with scenario.app:
        task = scenario.app.tasks["tests.apps.ledgered.effect_then_wait"]
        job = await scenario.ledger.enqueue("s3", task.apply_async(args=(30,), job_id="s3"))
        assert job is not None
        first = scenario.worker(name="first")
        await wait_until(lambda: "s3" in scenario.ledger.times("finished"), 20, "s3 to finish")
        first.kill()  # the side effect happened, the ack did not
        with scenario.workers(1):
            assert await job.get(timeout=20) == 2
        info = await job.info()
        dead = await scenario.dead_ids()
    report(scenario, dead, "kill after side effect")
    assert scenario.ledger.check(dead).duplicates == {"s3": 2}  # visible, as promised
    assert (info["state"], info["attempts"]) == ("SUCCESS", 2)


async def test_4_server_restarts_while_producing_and_working(scenario: Scenario) -> None:
    async with scenario.app:
        task = scenario.app.tasks["tests.apps.ledgered.record"]

        async def produce() -> None:
            for i in range(1500):
                await scenario.ledger.enqueue(
                    f"s4-{i}", task.apply_async(args=(i,), job_id=f"s4-{i}")
                )
                if i % 10 == 0:
                    await asyncio.sleep(0.03)  # a steady producer, ~4 s in all

        with scenario.workers(2, "-c", "16") as procs:
            producing = asyncio.create_task(produce())
            await asyncio.sleep(1.0)
            await asyncio.to_thread(scenario.server.restart)  # SIGTERM, then start
            await asyncio.sleep(1.0)
            await asyncio.to_thread(scenario.server.restart, True)  # SIGKILL, then start
            await asyncio.wait_for(producing, 120)
            for i in range(100):  # the same producer, after the restarts, not reconnected by hand
                await scenario.ledger.enqueue(
                    f"s4-after-{i}", task.apply_async(args=(i,), job_id=f"s4-after-{i}")
                )
            await scenario.drained(timeout=120)
            outputs = [p.output() for p in procs]
        dead = await scenario.dead_ids()
    report(scenario, dead, "server restarts")
    # nats-py reconnects by itself, or (its client closed for good) the worker opens a new one
    assert all("reconnected to NATS" in out or "connected again" in out for out in outputs)
    # the producer kept going by itself: what it sent after the restarts was acked and ran
    after = {f"s4-after-{i}" for i in range(100)}
    assert after <= set(scenario.ledger.times("acked"))
    assert after <= set(scenario.ledger.times("finished"))


async def test_4b_results_in_flight_when_the_server_is_killed(scenario: Scenario) -> None:
    """Results are written many at a time ahead of their acks: a server killed meanwhile loses
    no job and leaves no job acked without its result."""
    async with scenario.app:
        ids = await enqueue_all(
            scenario, "tests.apps.ledgered.kept", [(i,) for i in range(3000)], "s4b"
        )
        with scenario.workers(2, "-c", "64"):
            await wait_until(lambda: len(scenario.ledger.times("finished")) > 300, 60, "jobs")
            await asyncio.to_thread(scenario.server.restart, True)  # SIGKILL, then start
            await scenario.drained(timeout=120)
        dead = await scenario.dead_ids()
        backend = await scenario.app.result_backend()
        values = {job_id: await backend.read(job_id) for job_id in ids}
    report(scenario, dead, "results in flight, server killed")
    assert not dead
    missing = [job_id for job_id, found in values.items() if found is None]
    assert missing == []
    assert all(
        found is not None and found.value(None) == int(job_id.rsplit("-", 1)[1])
        for job_id, found in values.items()
    )


async def test_5_poison_payloads_go_to_the_dlq_and_the_worker_serves_on(scenario: Scenario) -> None:
    marker = scenario.tmp / "pwned"
    command = f"touch {marker}".encode()
    pickled = (
        b"\x80\x04\x95"
        + b"\x00" * 8
        + b"\x8c\x02os\x94\x8c\x06system\x94\x93\x94\x8c"
        + bytes([len(command)])
        + command
        + b"\x94\x85\x94R\x94."
    )
    record = "tests.apps.ledgered.record"
    poison = [
        os.urandom(64),
        b'{"v": 1, "id": "truncated", "task": "x"',
        json.dumps({"v": 9, "id": "future", "task": record}).encode(),
        json.dumps({"v": 1, "id": "ghost", "task": "no.such.task", "args": []}).encode(),
        json.dumps({"v": 1, "id": "wrongargs", "task": record, "args": [1, 2]}).encode(),
        json.dumps(
            {"v": 1, "id": "unsigned", "task": record, "pickle": base64.b64encode(pickled).decode()}
        ).encode(),
        json.dumps(
            {
                "v": 1,
                "id": "forged",
                "task": record,
                "pickle": base64.b64encode(pickled).decode(),
                "sig": "00" * 32,
            }
        ).encode(),
    ]
    async with scenario.app:
        broker = await scenario.app.broker()
        for data in poison:
            await broker.publish(scenario.app.settings.queue_subject("default"), data)
        ids = await enqueue_all(scenario, record, [(i,) for i in range(20)], "s5")
        with scenario.workers(1):
            await scenario.drained(timeout=30)
        letters = {letter.job_id: letter for letter in await dead_letters.list_letters(broker)}
    report(scenario, set(), "poison")  # the ledgered jobs: none dead, none lost
    assert set(ids) <= set(scenario.ledger.times("finished"))  # served on, every good job done
    reasons = {job_id: letter.reason for job_id, letter in letters.items()}
    assert reasons["future"] == "undecodable"
    assert reasons["ghost"] == "unknown_task"
    assert reasons["wrongargs"] == "wrong_arguments"
    assert reasons["unsigned"] == reasons["forged"] == "bad_signature"
    # the random bytes and the truncated JSON have no readable id: named by stream sequence
    assert sorted(r for j, r in reasons.items() if j.startswith("seq-")) == ["undecodable"] * 2
    assert all(letter.error_message for letter in letters.values())
    assert not marker.exists()


async def test_6_a_job_that_kills_its_worker_every_time(scenario: Scenario) -> None:
    scenario.set_ack_wait(0.5)
    async with scenario.app:
        task = scenario.app.tasks["tests.apps.ledgered.crash"]
        await scenario.ledger.enqueue("s6", task.apply_async(job_id="s6"))
        exits = []
        deadline = time.monotonic() + 60
        while not await scenario.dead_ids():
            assert time.monotonic() < deadline
            proc = scenario.worker("--burst")
            exits.append(await asyncio.to_thread(proc.wait, 30))
        broker = await scenario.app.broker()
        left = await broker.streams.subject_counts(scenario.app.settings.jobs_stream, ">")
        letters = await dead_letters.list_letters(broker)
        dead = await scenario.dead_ids()
    report(scenario, dead, "crash loop")
    assert [letter.job_id for letter in letters] == ["s6"]  # once, not once per worker
    assert letters[0].reason == "crash_loop"
    assert exits.count(3) == 4  # once among others, then three times alone: blamed
    assert letters[0].error_type == "WorkerLost"
    assert "a worker died each of the 3 times the job ran alone" in letters[0].error_message
    assert left == {}


async def test_7_a_task_that_always_raises_follows_its_policy(scenario: Scenario) -> None:
    async with scenario.app:
        task = scenario.app.tasks["tests.apps.ledgered.always_fails"]
        job = await scenario.ledger.enqueue("s7", task.apply_async(job_id="s7"))
        assert job is not None
        expected = pytest.raises(TaskFailed, match="OSError: the disk is always full")
        with scenario.workers(1), expected:
            await job.get(timeout=20)
        broker = await scenario.app.broker()
        dead = {x.job_id: x for x in await dead_letters.list_letters(broker)}
    report(scenario, set(dead), "always raises")
    starts = scenario.ledger.times("started")["s7"]
    assert len(starts) == 3
    assert all(b - a >= 0.38 for a, b in itertools.pairwise(starts))
    assert (dead["s7"].reason, dead["s7"].attempts) == ("retries_exhausted", 3)


async def test_8_payloads_over_max_payload(tmp_path: Path, scenario: Scenario) -> None:
    scenario.app.configure(max_object_size=2 * 2**20)
    async with scenario.app:
        broker = await scenario.app.broker()
        limit = broker.max_payload
        task = scenario.app.tasks["tests.apps.ledgered.blob"]
        with pytest.raises(PayloadTooLarge, match="max_object_size"):
            await task.delay("y" * (2 * 2**20 + 10))
        assert await broker.streams.subject_counts(scenario.app.settings.jobs_stream, ">") == {}
        big = "z" * (limit + 10)  # over max_payload: its arguments go to the object store
        await scenario.ledger.enqueue("s8", task.apply_async(args=(big,), job_id="s8"))
        with scenario.workers(1):
            await scenario.drained(timeout=30)
        [letter] = await dead_letters.list_letters(broker)
        stored = await (await broker.objects()).get("args.s8")
    report(scenario, {letter.job_id}, "max_payload")
    assert json.loads(letter.payload)["args_object"] == "args.s8"  # the job, whole, by reference
    assert stored is not None
    assert json.loads(stored)["args"] == [big]
    assert letter.error_message.endswith("...[truncated]")


async def test_9_long_job_once_and_a_frozen_worker(scenario: Scenario) -> None:
    scenario.set_ack_wait(0.5)
    async with scenario.app:
        task = scenario.app.tasks["tests.apps.ledgered.long_job"]
        long = await scenario.ledger.enqueue(
            "s9-long", task.apply_async(args=(5.0,), job_id="s9-long")
        )
        assert long is not None
        with scenario.workers(1):
            assert (await long.get(timeout=30)).endswith("attempt 1")  # 10x ack_wait, once
        frozen_job = await scenario.ledger.enqueue(
            "s9-frozen", task.apply_async(args=(2.0,), job_id="s9-frozen")
        )
        assert frozen_job is not None
        frozen = scenario.worker(name="frozen")
        await wait_until(
            lambda: "s9-frozen" in scenario.ledger.times("started"), 20, "s9-frozen to start"
        )
        frozen.signal(signal.SIGSTOP)
        rescuer = scenario.worker(name="rescuer")
        first = await frozen_job.get(timeout=30)
        frozen.signal(signal.SIGCONT)
        await wait_until(
            lambda: len(scenario.ledger.times("finished").get("s9-frozen", [])) >= 2,
            20,
            "the frozen worker to finish too",
        )
        await asyncio.sleep(0.5)  # let its (refused) result write and late ack happen
        final = await frozen_job.get(timeout=5)
        rescuer.stop()
        frozen.stop()
        dead = await scenario.dead_ids()
    report(scenario, dead, "sigstop")
    assert len(scenario.ledger.times("started")["s9-long"]) == 1
    # the rescuer's outcome was recorded first and the frozen worker's late one did not replace it
    # (the frozen worker's open pull request may have swallowed one more delivery meanwhile)
    assert first == final
    assert first.startswith(f"pid {rescuer.pid} attempt ")


async def test_11_backlog_of_50000_leaves_worker_memory_flat(scenario: Scenario) -> None:
    async with scenario.app:
        task = scenario.app.tasks["tests.apps.ledgered.record"]
        broker = await scenario.app.broker()
        with scenario.workers(1, "-c", "32") as [worker]:
            await scenario.ledger.enqueue(
                "s11-warm", task.apply_async(args=(-1,), job_id="s11-warm")
            )
            await scenario.drained()
            await asyncio.sleep(0.5)
            before = psutil.Process(worker.pid).memory_info().rss
            peak = before
            for start in range(0, 50_000, 5_000):
                envs = [
                    build_envelope(
                        scenario.app.settings,
                        task.name,
                        (i,),
                        queue="default",
                        serializer="json",
                        job_id=f"s11-{i}",
                    )
                    for i in range(start, start + 5_000)
                ]
                for env in envs:
                    scenario.ledger.attempted(env.id)
                await send_many(broker, envs)
                for env in envs:
                    scenario.ledger.acked(env.id)
                peak = max(peak, psutil.Process(worker.pid).memory_info().rss)
            info = await broker.streams.consumer("default")
            assert info is not None
            backlog = info.pending  # enqueued faster than one worker runs them
            assert backlog > 1_000
            while True:
                info = await broker.streams.consumer("default")
                peak = max(peak, psutil.Process(worker.pid).memory_info().rss)
                if info is not None and not info.pending and not info.ack_pending:
                    break
                await asyncio.sleep(0.2)
        dead = await scenario.dead_ids()
    report(scenario, dead, "backlog 50k")
    mb = 2**20
    print(
        f"[backlog 50k] {backlog} jobs waited; worker RSS {before / mb:.1f} MB before, peak "
        f"{peak / mb:.1f} MB"
    )
    assert peak - before < 10 * mb


def test_ids_are_unique_across_processes() -> None:
    """Job ids made in forked children do not repeat the parent's random sequence."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(2) as pool:
        ids = pool.map(_ids, range(4))
    flat = [i for chunk in ids for i in chunk]
    assert len(set(flat)) == len(flat)


def _ids(_: int) -> list[str]:
    return [new_job_id() for _ in range(1000)]

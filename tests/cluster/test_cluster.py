"""A 3-node NATS cluster with R3 streams: leader loss, quorum loss, rolling restarts, beat and
chords across leader changes. The ledger proves that no acknowledged job was lost."""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jsqueue import App, ProvisionError, chord, group
from jsqueue.testing import NatsCluster, destroy
from tests.harness import LedgeredSystem

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(180)]


@dataclass(kw_only=True)
class Cluster(LedgeredSystem):
    nats: NatsCluster
    worker_args = ("-c", "16", "--wait-for-server", "30")

    @property
    def url(self) -> str:
        return self.nats.url

    async def drained(self, timeout: float = 90) -> None:
        """Wait until every acked job finished (the ledger says so, not the broker) and the
        queue holds nothing. The broker alone is not enough: a consumer that a worker creates
        on a cluster just back from losing its quorum can report nothing pending at first."""
        broker = await self.app.broker()
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            try:
                info = await broker.streams.consumer("default")
                idle = info is not None and not info.pending and not info.ack_pending
                if idle and set(self.ledger.times("acked")) <= set(self.ledger.times("finished")):
                    return
                last = info and (info.pending, info.ack_pending, info.followers)
            except Exception as exc:  # a leader election in progress
                last = repr(exc)
            if time.monotonic() > deadline:  # say what the consumer looked like, and the workers
                tails = "\n".join(
                    p.output()[-3000:]
                    for p in self.processes
                    if p.log_path.name.startswith("worker")
                )
                raise AssertionError(f"the queue did not drain; last consumer info {last}\n{tails}")
            await asyncio.sleep(0.2)

    async def check(self, label: str) -> None:
        found = self.ledger.check(await self.dead_ids())
        print(f"[{label}] {found.summary()}")
        assert found.ok, (
            f"[{label}] lost {sorted(found.lost)[:10]} unexpected {sorted(found.unexpected)[:10]}"
        )


@pytest.fixture
async def cluster(
    tmp_path: Path, jsq_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Cluster]:
    env = {
        "JSQ_TEST_PREFIX": jsq_prefix,
        "JSQ_LEDGER_DIR": str(tmp_path / "ledger"),
        "JSQ_TEST_ACK_WAIT": "2",
        "JSQ_TEST_REPLICAS": "3",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    import tests.apps.ledgered as module

    module = importlib.reload(module)
    nats = NatsCluster(base_dir=tmp_path / "cluster")
    await asyncio.to_thread(nats.start)
    module.app.configure(url=nats.url, publish_timeout=30)
    found = Cluster(nats=nats, app=module.app, ledger=module.ledger, tmp=tmp_path, env=env)
    try:
        yield found
    finally:
        for proc in found.processes:
            proc.kill()
        await module.app.close()
        module.app.close_sync()
        nats.cleanup()


async def produce(cluster: Cluster, count: int, tag: str, pace: float = 0.01) -> list[float]:
    """Enqueue ``count`` record jobs through the ledger; return when each was acked."""
    task = cluster.app.tasks["tests.apps.ledgered.record"]
    acked_at = []
    for i in range(count):
        if await cluster.ledger.enqueue(
            f"{tag}-{i}", task.apply_async(args=(i,), job_id=f"{tag}-{i}")
        ):
            acked_at.append(time.monotonic())
        await asyncio.sleep(pace)
    return acked_at


def longest_gap(moments: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(moments)), default=0.0)


async def test_replicas_beyond_the_cluster_are_a_clear_error(cluster: Cluster) -> None:
    app = App("five", url=cluster.nats.url, prefix="five", replicas=5)
    with pytest.raises(ProvisionError, match=r"replicas=5: NATS at .* has fewer JetStream servers"):
        await app.connect()
    await app.close()


async def test_provisioning_while_a_node_restarts(cluster: Cluster) -> None:
    """Just after a node restarts, JetStream refuses an R3 placement for a moment ("peer
    offline"): provisioning then waits for the peer instead of failing the worker."""
    await asyncio.to_thread(cluster.nats.stop, 1)
    await asyncio.to_thread(cluster.nats.start_node, 1)
    made = []
    for i in range(8):  # what a worker starting then does: streams, then the results bucket
        app = App(f"restart{i}", url=cluster.nats.url, prefix=f"{cluster.app.settings.prefix}r{i}")
        app.configure(replicas=3)
        try:
            made.append((await app.result_backend()) is not None)
        finally:
            await app.close()
    assert made == [True] * 8


async def test_raising_replicas_reaches_every_stream_and_bucket(cluster: Cluster) -> None:
    """A deployment moving from one replica to three: streams and buckets follow the setting."""
    one = App("one", url=cluster.nats.url, prefix="grow", replicas=1)
    three = App("three", url=cluster.nats.url, prefix="grow", replicas=3)
    try:
        async with one:
            await one.result_backend()
        async with three:
            await three.result_backend()
            broker = await three.broker()
            s = three.settings
            for name in (s.jobs_stream, s.dlq_stream, f"KV_{s.bucket('results')}"):
                info = await broker.streams.state(name)
                assert info.replicas == 3, name
            # the consumer that counts a chord's members survives a node too
            chords = await broker.kv("chords", ttl=60)
            # a bucket just created on three nodes may still elect its leader: ride it out,
            # as the chord service does for every write
            await broker.riding_elections(chords.create, "c.m.0", b"{}")
            assert await chords.count_keys("c.m.*") == 1
            consumers = await broker.streams.consumers(chords.stream)
            [counter] = [c for c in consumers if c.name.startswith("count_")]
            assert counter.followers == 2  # two followers: R3
    finally:
        await destroy(three)
        await one.close()


async def test_1_kill_the_jobs_stream_leader_under_load(cluster: Cluster) -> None:
    async with cluster.app:
        with cluster.workers():
            producing = asyncio.create_task(produce(cluster, 600, "c1"))
            await asyncio.sleep(1.5)
            leader = await cluster.nats.stream_leader(cluster.app.settings.jobs_stream)
            await asyncio.to_thread(cluster.nats.kill, leader)
            acked = await asyncio.wait_for(producing, 120)
            await cluster.drained()
            await asyncio.to_thread(cluster.nats.start_node, leader)
        await cluster.check("leader killed")
    assert len(acked) == 600  # publishes resumed after the election: every one acked
    print(f"[leader killed] longest gap between acked enqueues: {longest_gap(acked):.2f}s")


async def test_2_kill_two_of_three_nodes(cluster: Cluster) -> None:
    cluster.app.configure(publish_timeout=2)
    async with cluster.app:
        with cluster.workers():
            await produce(cluster, 100, "c2a", pace=0)
            leader = await cluster.nats.stream_leader(cluster.app.settings.jobs_stream)
            victims = [leader, (leader + 1) % 3]
            for node in victims:
                await asyncio.to_thread(cluster.nats.kill, node)
            late = cluster.worker(name="worker-late")  # starts on a cluster without quorum
            started = time.monotonic()
            await produce(cluster, 5, "c2b", pace=0)  # no quorum: errors, never a false ack
            refused_for = time.monotonic() - started
            for node in victims:
                await asyncio.to_thread(cluster.nats.start_node, node)
            await cluster.nats.wait_ready(60)
            await cluster.nats.stream_leader(cluster.app.settings.jobs_stream, timeout=60)
            task = cluster.app.tasks["tests.apps.ledgered.record"]
            for i in itertools.count():  # the same producer: retrying until JetStream answers
                probe = task.apply_async(args=(i,), job_id=f"c2probe-{i}")
                if await cluster.ledger.enqueue(f"c2probe-{i}", probe):
                    break
                assert i < 30, "enqueues did not resume after the nodes came back"
            await produce(cluster, 100, "c2c", pace=0)
            await cluster.drained()
            # it waited for JetStream instead of exiting, and stops cleanly now
            assert await asyncio.to_thread(late.stop) == 0, late.output()[-3000:]
        await cluster.check("two of three killed")
    acked = {e["id"] for e in cluster.ledger.events() if e["e"] == "acked"}
    assert not any(job.startswith("c2b-") for job in acked)  # no quorum: no ack, ever
    assert {f"c2c-{i}" for i in range(100)} <= acked  # back to quorum: enqueues work again
    print(f"[two of three killed] 5 enqueues without quorum failed within {refused_for:.1f}s")


async def test_3_rolling_restart_under_load(cluster: Cluster) -> None:
    async with cluster.app:
        with cluster.workers():
            producing = asyncio.create_task(produce(cluster, 800, "c3"))
            for node in range(3):
                await asyncio.sleep(0.5)
                await asyncio.to_thread(cluster.nats.stop, node)
                await asyncio.to_thread(cluster.nats.start_node, node)
                await cluster.nats.wait_ready(60, nodes=[node])
            acked = await asyncio.wait_for(producing, 120)
            await cluster.drained()
        await cluster.check("rolling restart")
    assert len(acked) == 800
    print(f"[rolling restart] longest gap between acked enqueues: {longest_gap(acked):.2f}s")


async def test_4_beat_leader_on_the_killed_node_ticks_once(cluster: Cluster) -> None:
    first = cluster.process("beat", "--lease-ttl", "2", url=cluster.nats.node_url(0), name="beat-a")
    deadline = time.monotonic() + 30
    while "is the leader" not in first.output():
        assert time.monotonic() < deadline, first.output()
        await asyncio.sleep(0.1)
    second = cluster.process(
        "beat", "--lease-ttl", "2", url=cluster.nats.node_url(1), name="beat-b"
    )
    async with cluster.app:
        await asyncio.sleep(5)
        await asyncio.to_thread(cluster.nats.kill, 0)  # beat-a's only connection
        await asyncio.sleep(10)
        await asyncio.to_thread(cluster.nats.start_node, 0)
        await asyncio.sleep(2)
        first.stop()
        second.stop()
        broker = await cluster.app.broker()
        messages = await broker.streams.messages(
            cluster.app.settings.jobs_stream, cluster.app.settings.queue_subject("default")
        )
    ticks = [int(json.loads(m.data)["id"].rsplit(".", 1)[1]) for m in messages]
    assert len(ticks) >= 12
    assert len(ticks) == len(set(ticks)), "a tick was enqueued twice"
    assert sorted(ticks) == list(range(min(ticks), max(ticks) + 1)), "a tick was lost"
    # beat-a either reconnected through another node (the cluster told it of them) and kept
    # the lease, or lost it to beat-b: either way every tick went out exactly once
    assert "disconnected from NATS" in first.output()
    print(f"[beat] {len(ticks)} ticks, each once, across the loss of the leader's node")


async def test_5_chord_and_results_across_a_leader_change(cluster: Cluster) -> None:
    square = cluster.app.tasks["tests.apps.ledgered.square"]
    total = cluster.app.tasks["tests.apps.ledgered.total"]
    async with cluster.app:
        with cluster.workers():
            handle = await chord(group(square.s(i) for i in range(200)), total.s()).delay()
            await asyncio.sleep(0.8)
            leader = await cluster.nats.stream_leader(
                f"KV_{cluster.app.settings.bucket('results')}"
            )
            await asyncio.to_thread(cluster.nats.kill, leader)
            assert await handle.get(timeout=90) == sum(i * i for i in range(200))
            await cluster.drained()
            await asyncio.to_thread(cluster.nats.start_node, leader)
    callbacks = [job for job in cluster.ledger.times("finished") if job.startswith("callback-")]
    assert callbacks == [f"callback-{handle.id}"]
    assert len(cluster.ledger.times("finished")[f"callback-{handle.id}"]) == 1

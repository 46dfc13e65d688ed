"""The measurements, the same procedure for every peer.

Throughput of a drain is measured from the first job's start to the last job's finish as the tasks
recorded them, so process start-up is excluded for every peer alike. Every run checks from the
task records that each job id ran exactly once (the partial 200k drain: at most once).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

from bench.peers.base import Peer
from bench.procs import WorkerGroup
from bench.recording import CheckFailed, Recording

MB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    loop: int = 5_000  # jobs sent one `await` at a time
    drain: int = 20_000  # backlog drained by 1 or 2 worker processes
    latency: int = 500  # jobs sent to an idle worker...
    latency_gap: float = 0.010  # ...this many seconds apart
    backlog: int = 200_000  # backlog under which the worker's RSS is sampled...
    backlog_seconds: float = 5.0  # ...for this long after its first job
    chunk: int = 20_000  # bulk calls fill big backlogs in chunks of this size
    repeats: int = 3


QUICK = Sizes(loop=500, drain=2_000, latency=50, backlog=10_000, backlog_seconds=2.0, repeats=1)


@dataclass
class Samples:
    """Every metric's samples (one per repetition) and the errors met, for one peer."""

    values: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def add(self, metric: str, value: float) -> None:
        self.values.setdefault(metric, []).append(value)


async def wait(peer: Peer, rec: Recording, n: int, timeout: float, workers: WorkerGroup) -> None:
    """Wait for ``n`` records; a timeout says what the broker holds and the workers logged."""
    try:
        await rec.wait(n, timeout, workers.check_alive)
    except TimeoutError as exc:
        state = await peer.describe()
        raise TimeoutError(f"{exc}; {state}; worker log: {workers.output(5)}") from None


def timeout_for(n: int) -> float:
    """Generous: a peer slower than 100 jobs/s has a problem worth reporting as a timeout."""
    return 60.0 + n / 100


async def fill(peer: Peer, ids: range, *, results: bool = False, chunk: int = 0) -> float:
    """Enqueue ``ids`` (bulk API if the peer has one, else the loop); return jobs/s."""
    started = time.perf_counter()
    if peer.bulk is None:
        for i in ids:
            await peer.send(i, results=results)
    else:
        step = chunk or len(ids)
        for lo in range(ids.start, ids.stop, step):
            await peer.send_bulk(range(lo, min(lo + step, ids.stop)), results=results)
    return len(ids) / (time.perf_counter() - started)


async def enqueue_loop(peer: Peer, sizes: Sizes, out: Samples) -> None:
    """(a) `await send(i)` in a loop; the jobs are then drained to check them."""
    await peer.purge()
    ids = range(sizes.loop)
    with Recording() as rec:
        started = time.perf_counter()
        for i in ids:
            await peer.send(i)
        out.add("enqueue_loop", sizes.loop / (time.perf_counter() - started))
        with WorkerGroup(peer.worker_commands(1), rec.env) as workers:
            await wait(peer, rec, sizes.loop, timeout_for(sizes.loop), workers)
        rec.check(ids)


async def drain(peer: Peer, sizes: Sizes, out: Samples, *, procs: int, results: bool) -> None:
    """(b) and (e): drain a pre-filled backlog; (a) bulk rate and (d) peak RSS on the way."""
    await peer.purge()
    ids = range(sizes.drain)
    with Recording() as rec:
        fill_rate = await fill(peer, ids, results=results)
        if procs == 1 and not results and peer.bulk is not None:
            out.add("enqueue_bulk", fill_rate)
        with WorkerGroup(peer.worker_commands(procs, results=results), rec.env) as workers:
            await wait(peer, rec, 1, timeout_for(sizes.drain), workers)
            cpu, first = workers.cpu_seconds(), rec.count()
            await wait(peer, rec, sizes.drain, timeout_for(sizes.drain), workers)
            peak = workers.peak_rss
            cpu = (workers.cpu_seconds() - cpu) / max(1, sizes.drain - first)
        records = rec.check(ids)
    metric = "drain_results" if results else f"drain_{procs}"
    out.add(metric, records.rate())
    # the workers' CPU microseconds a job once they ran their first: steadier than jobs/s on a
    # shared machine (and a ratio of two of them says what a drain would be on an idle one)
    out.add(f"{metric}_cpu_us", cpu * 1e6)
    if procs == 1 and not results:
        out.add("peak_rss", peak / MB)


async def latency(peer: Peer, sizes: Sizes, out: Samples) -> None:
    """(c) enqueue call to task start, jobs sent ``latency_gap`` apart to an idle worker."""
    await peer.purge()
    n, warm = sizes.latency, 10
    sent: list[float] = []
    with Recording() as rec:
        with WorkerGroup(peer.worker_commands(1, latency=True), rec.env) as workers:
            for i in range(n, n + warm):  # the worker is up once these ran
                await peer.send(i)
            await wait(peer, rec, warm, 120, workers)
            await asyncio.sleep(0.5)
            due = time.monotonic()
            for i in range(n):
                sent.append(time.time())
                await peer.send(i)
                due += sizes.latency_gap
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            await wait(peer, rec, n + warm, timeout_for(n), workers)
        records = rec.check(range(n + warm))
    millis = sorted((records.started[i] - sent[i]) * 1000 for i in range(n))
    out.add("latency_p50", percentile(millis, 50))
    out.add("latency_p99", percentile(millis, 99))


async def backlog_rss(peer: Peer, sizes: Sizes, out: Samples) -> None:
    """(f) RSS of one worker process started on a big backlog, a few seconds after its first
    job. The worker is started ``repeats`` times; before each start the backlog is topped back
    up to its size (a fast worker drains much of it in those seconds). Then the rest is purged."""
    await peer.purge()
    sent = 0
    ran: set[int] = set()
    try:
        for _ in range(sizes.repeats):
            top_up = sizes.backlog - (sent - len(ran))
            await fill(peer, range(sent, sent + top_up), chunk=sizes.chunk)
            sent += top_up
            with Recording() as rec:
                with WorkerGroup(peer.worker_commands(1), rec.env) as workers:
                    await wait(peer, rec, 1, 120, workers)
                    await asyncio.sleep(sizes.backlog_seconds)
                    workers.check_alive()
                    out.add("backlog_rss", workers.peak_rss / MB)
                records = rec.check(range(sent), exact=False)
            again = ran & records.started.keys()
            if again:
                raise CheckFailed(f"{len(again)} job(s) ran again in a later worker start")
            ran |= records.started.keys()
    finally:
        await peer.purge()


def percentile(ordered: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]

"""``python -m bench.run --queues``: jsqueue's queues under load, on the bundled nats-server.

- Priority latency: one worker (``-c 4``) busy with a backlog of low-priority jobs of 3 ms that
  is topped up to 10,000 queued before every probe; each probe is one urgent job (priority 3),
  and its latency runs from the enqueue call to the moment it started. p50 and p99 over the
  probes.
- Drain beside long retries: a plain drain of 20,000 no-op jobs, and the same drain while
  20,000 other jobs of the queue wait out a one-hour retry (each ran once and failed; its retry
  waits on a server schedule, so it holds none of the consumer's ``max_ack_pending`` slots).
  Plain and with-retries runs alternate; the ratio is taken within each pair.

Writes ``bench/results/queues.md`` and ``queues.json``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from bench.peers import jsqueue_queues as tasks
from bench.peers.base import python_m
from bench.procs import WorkerGroup
from bench.recording import Recording
from bench.runinfo import run_doc, say
from bench.scenarios import Samples, percentile, timeout_for
from bench.servers import bundled_nats, nats_url
from jsqueue.config import PRIORITY_NORMAL
from jsqueue.envelope import Envelope
from jsqueue.services.producer import build_envelope, send_many
from jsqueue.wire.broker import Broker

app = tasks.app
QUEUE = app.settings.default_queue


@dataclass(frozen=True)
class QueueSizes:
    backlog: int = 10_000  # low-priority jobs queued ahead of every probe
    probes: int = 30  # per run
    priority_runs: int = 3
    probe_gap: float = 0.2  # seconds between one probe's start and the next probe
    drain: int = 20_000  # healthy jobs drained, plain and beside the retries
    retrying: int = 20_000  # jobs waiting out a one-hour retry
    repeats: int = 5
    chunk: int = 10_000


QUICK = QueueSizes(
    backlog=2_000, probes=10, priority_runs=1, drain=2_000, retrying=2_000, repeats=1
)


def worker(concurrency: int) -> list[list[str]]:
    return [
        python_m(
            "jsqueue",
            "worker",
            "-A",
            f"{tasks.__name__}:app",
            "--url",
            nats_url(),
            "-c",
            str(concurrency),
            "--log-level",
            "WARNING",
        )
    ]


async def send(broker: Broker, task: str, ids: range, *, priority: int, chunk: int) -> None:
    """Pipelined, at ``priority`` (``starmap`` sends every job at normal priority)."""
    for lo in range(ids.start, ids.stop, chunk):
        envs: list[Envelope] = [
            build_envelope(
                app.settings, task, (i,), queue=QUEUE, serializer="json", priority=priority
            )
            for i in range(lo, min(lo + chunk, ids.stop))
        ]
        await send_many(broker, envs)


async def purge(broker: Broker) -> None:
    await broker.streams.purge(app.settings.jobs_stream)  # schedules included


async def priority_latency(broker: Broker, sizes: QueueSizes, out: Samples) -> None:
    await purge(broker)
    sent_low = sizes.backlog
    await send(broker, tasks.low.name, range(sent_low), priority=0, chunk=sizes.chunk)
    millis: list[float] = []
    ahead: list[float] = []
    with Recording() as rec, Recording() as probes:
        env = {**rec.env, tasks.PROBE_DIR_ENV: str(probes.path)}
        with WorkerGroup(worker(4), env) as workers:
            await rec.wait(300, 120, workers.check_alive)  # busy with the backlog
            for k in range(sizes.probes):
                queued = sent_low - rec.count()
                if queued < sizes.backlog:
                    top_up = range(sent_low, sent_low + sizes.backlog - queued)
                    await send(broker, tasks.low.name, top_up, priority=0, chunk=sizes.chunk)
                    sent_low = top_up.stop
                ahead.append(sent_low - rec.count())
                sent = time.time()
                await tasks.urgent.apply_async((k,), priority=3)
                await probes.wait(k + 1, 30, workers.check_alive, poll=0.001)
                started = probes.check(range(k + 1)).started[k]
                millis.append((started - sent) * 1000)
                await asyncio.sleep(sizes.probe_gap)
            low_rate = rec.count() / max(
                1e-9, time.time() - rec.check(range(sent_low), exact=False).first_start
            )
    ordered = sorted(millis)
    out.add("priority p50", percentile(ordered, 50))
    out.add("priority p99", percentile(ordered, 99))
    out.add("priority max", ordered[-1])
    out.add("queued ahead, min", min(ahead))
    out.add("backlog jobs/s", low_rate)
    await purge(broker)


async def drain(broker: Broker, sizes: QueueSizes, ids: range) -> tuple[float, float]:
    """Fill ``ids`` of the healthy task, start a worker; return jobs/s from the records and the
    worker's CPU microseconds per job from its first job on."""
    await send(broker, tasks.healthy.name, ids, priority=PRIORITY_NORMAL, chunk=sizes.chunk)
    with Recording() as rec:
        with WorkerGroup(worker(64), rec.env) as workers:
            await rec.wait(1, 120, workers.check_alive)
            cpu_before, done_before = workers.cpu_seconds(), rec.count()
            await rec.wait(len(ids), timeout_for(len(ids)), workers.check_alive)
            cpu = (workers.cpu_seconds() - cpu_before) / max(1, len(ids) - done_before)
        return rec.check(ids).rate(), cpu * 1e6


async def park_retries(broker: Broker, sizes: QueueSizes, ids: range) -> int:
    """Run ``ids`` of the flaky task once each; return once every one waits on a schedule."""
    await send(broker, tasks.flaky.name, ids, priority=PRIORITY_NORMAL, chunk=sizes.chunk)
    with Recording() as rec:
        with WorkerGroup(worker(64), rec.env) as workers:
            await rec.wait(len(ids), timeout_for(len(ids)), workers.check_alive)
            deadline = time.monotonic() + 120
            while True:  # every first attempt acked once its retry schedule was stored
                state = await broker.streams.consumer(QUEUE)
                if state is not None and state.ack_pending == 0 and state.pending == 0:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"retries not parked after 120 s: {state}")
                await asyncio.sleep(0.1)
        rec.check(ids)
    stream = await broker.streams.state(app.settings.jobs_stream)
    return stream.messages


async def retry_drain(broker: Broker, sizes: QueueSizes, out: Samples) -> None:
    for rep in range(sizes.repeats):
        tag = f"{rep + 1}/{sizes.repeats}"
        pair: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for mode in ("plain", "retrying") if rep % 2 == 0 else ("retrying", "plain"):
            await purge(broker)
            if mode == "retrying":
                held = await park_retries(broker, sizes, range(10**6, 10**6 + sizes.retrying))
                out.add("schedules in the stream", held)
            pair[mode], cpu[mode] = await drain(broker, sizes, range(sizes.drain))
            out.add(f"drain {mode}", pair[mode])
            out.add(f"cpu {mode}", cpu[mode])
            say(f"drain {tag} {mode}: {pair[mode]:,.0f} jobs/s, {cpu[mode]:.0f} µs CPU a job")
        out.add("drain retrying/plain", pair["retrying"] / pair["plain"])
        out.add("cpu retrying/plain", cpu["retrying"] / cpu["plain"])
    await purge(broker)


def stat(values: list[float], digits: int) -> str:
    if not values:
        return "n/a"
    f = f"{{:,.{digits}f}}"
    return (
        f"{f.format(statistics.median(values))} ({f.format(min(values))}-{f.format(max(values))})"
    )


def write(out_dir: Path, sizes: QueueSizes, out: Samples, *, quick: bool, seconds: float) -> None:
    doc = run_doc(sizes, out, quick=quick, seconds=seconds)
    v = out.values
    p50, p99 = v.get("priority p50", []), v.get("priority p99", [])
    share = v.get("drain retrying/plain", [])
    share_ok = share and statistics.median(share) >= 0.9
    rows = [
        ("urgent job's start latency p50 (ms)", stat(p50, 1), "", ""),
        (
            "urgent job's start latency p99 (ms)",
            stat(p99, 1),
            "under 1 s",
            "met" if p99 and max(p99) < 1000 else "missed",
        ),
        (
            "low-priority jobs queued ahead of each probe, fewest",
            stat(v.get("queued ahead, min", []), 0),
            "",
            "",
        ),
        ("backlog jobs run meanwhile (jobs/s)", stat(v.get("backlog jobs/s", []), 0), "", ""),
        ("plain drain (jobs/s)", stat(v.get("drain plain", []), 0), "", ""),
        (
            f"drain beside {sizes.retrying:,} one-hour retries (jobs/s)",
            stat(v.get("drain retrying", []), 0),
            "",
            "",
        ),
        (
            "drain beside retries / plain drain",
            stat(share, 2),
            ">= 0.90",
            "met" if share_ok else "missed",
        ),
        ("worker CPU per job, plain drain (µs)", stat(v.get("cpu plain", []), 0), "", ""),
        ("worker CPU per job, beside the retries (µs)", stat(v.get("cpu retrying", []), 0), "", ""),
        ("CPU per job: beside retries / plain", stat(v.get("cpu retrying/plain", []), 2), "", ""),
        (
            "retry schedules in the stream meanwhile",
            stat(v.get("schedules in the stream", []), 0),
            "",
            "",
        ),
    ]
    lines = [
        "# Queues under load: priority latency and a drain beside long retries",
        "",
        "`python -m bench.run --queues" + (" --quick" if quick else "") + "`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {round(seconds)} s, on the "
        "bundled nats-server. Each cell: median (min-max); the priority rows over "
        f"{sizes.priority_runs} runs of {sizes.probes} probes, the drain rows over "
        f"{sizes.repeats} alternating pairs.",
        "",
        "| measurement | median (min-max) | target | |",
        "| --- | ---: | --- | --- |",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
        "## Procedure",
        "",
        f"- Priority: `jsqueue worker -c 4`, a backlog of `priority=0` jobs of "
        f"{tasks.BACKLOG_JOB * 1000:.0f} ms (`asyncio.sleep`), topped up to {sizes.backlog:,} "
        f"queued before each of {sizes.probes} probes sent {sizes.probe_gap * 1000:.0f} ms after "
        "the previous one started. A probe is `urgent.apply_async(priority=3)`; its latency runs "
        "from the call to the task's start as it recorded it.",
        f"- Retries: {sizes.retrying:,} jobs that raise `Retry(delay=3600)` run once each under a "
        "`-c 64` worker, which moves each retry onto a server schedule (the delay is past "
        "`schedule_retries_after`, 30 s) and acks it; the harness waits until the consumer has "
        f"nothing pending or unacked, stops that worker, fills {sizes.drain:,} no-op jobs, starts "
        "a fresh `-c 64` worker and times from the first job's start to the last job's finish. "
        "The plain drain is the same without the retrying jobs; the two alternate. The worker's "
        "CPU time per job (user + system, from its first job on) is a cost that other tenants "
        "of the shared machine inflate much less than the wall-clock rate.",
        "",
        "## Machine and versions",
        "",
        *(f"- {k}: {val}" for k, val in {**doc["machine"], **doc["versions"]}.items()),
    ]
    if out.errors:
        lines += ["", "## Errors", ""] + [f"- {k}: {e}" for k, e in out.errors.items()]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "queues.md").write_text("\n".join(lines) + "\n")
    (out_dir / "queues.json").write_text(json.dumps(doc, indent=1) + "\n")
    say(f"wrote {out_dir / 'queues.md'} and queues.json")


async def run(sizes: QueueSizes) -> Samples:
    out = Samples()
    with bundled_nats() as server:
        say(f"bundled nats-server at {server.url}")
        app.configure(url=nats_url())
        await app.connect()
        broker = await app.broker()
        try:
            for rep in range(sizes.priority_runs):
                await priority_latency(broker, sizes, out)
                say(
                    f"priority {rep + 1}: p50 {out.values['priority p50'][-1]:.1f} ms, "
                    f"p99 {out.values['priority p99'][-1]:.1f} ms"
                )
            await retry_drain(broker, sizes, out)
        finally:
            await broker.destroy_prefix()
            await app.close()
    return out


def main(out_dir: Path, *, quick: bool) -> None:
    sizes = QUICK if quick else QueueSizes()
    started = time.monotonic()
    out = asyncio.run(run(sizes))
    write(out_dir, sizes, out, quick=quick, seconds=time.monotonic() - started)

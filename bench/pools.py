"""``python -m bench.run --pools``: jsqueue's process pool beside its thread pool and Celery's
prefork pool, two slots each, in one run.

- CPU drain: jobs of about 20 ms of pure Python (:mod:`bench.work`, sized once per run), drained
  by each system in turn; the order rotates every repetition, so a busy moment on a shared
  machine does not always hit the same system.
- No-op drain: ``def`` tasks that only record themselves, through the process pool beside
  Celery prefork; then the worker's memory, idle after that drain: RSS and PSS of the parent
  and every child (the forkserver included for jsqueue).
- Idle latency: enqueue to task start, jobs sent 10 ms apart, process pool beside thread pool.

Ratios are taken within each repetition and their median (min-max) reported. Writes
``bench/results/pools.md`` and ``pools.json``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import scenarios
from bench.peers.pool_variants import CeleryPrefork, JsqueueProcess, JsqueueThread, PoolPeer
from bench.procs import WorkerGroup
from bench.recording import Recording
from bench.runinfo import run_doc, say
from bench.scenarios import MB, Samples, fill, wait
from bench.servers import bundled_nats
from bench.work import calibrate


@dataclass(frozen=True)
class PoolSizes:
    cpu_jobs: int = 300  # jobs of ~20 ms each system drains per repetition
    cpu_seconds: float = 0.020  # the size of one CPU job on an idle core
    noop_jobs: int = 10_000
    latency: int = 300  # jobs sent ``latency_gap`` apart to an idle worker
    latency_gap: float = 0.010
    repeats: int = 9  # odd, for a true median; a shared machine needs many


QUICK = PoolSizes(cpu_jobs=40, noop_jobs=1_000, latency=50, repeats=1)


async def drain(peer: PoolPeer, jobs: int, *, costs: Samples | None = None) -> float:
    """Fill ``jobs`` of ``peer.work``, start the worker, return jobs/s (first start to last
    finish, from the tasks' own records); with ``costs``, add the worker's CPU time per job
    (all its processes, from its first job on) and the idle worker's RSS and PSS."""
    await peer.purge()
    ids = range(jobs)
    with Recording() as rec:
        await fill(peer, ids, chunk=20_000)
        with WorkerGroup(peer.worker_commands(1), rec.env) as workers:
            await wait(peer, rec, 1, 120, workers)
            (own0, kids0), done_before = workers.cpu_split(), rec.count()
            await wait(peer, rec, jobs, scenarios.timeout_for(jobs * 10), workers)
            own1, kids1 = workers.cpu_split()
            ran = max(1, jobs - done_before)
            total = (own1 + kids1 - own0 - kids0) / ran * 1e6
            if costs is not None:
                costs.add(f"{peer.work} {peer.key} cpu_us", total)
                costs.add(f"{peer.work} {peer.key} parent cpu_us", (own1 - own0) / ran * 1e6)
                await asyncio.sleep(1.0)  # let the last acks settle: idle, warm
                rss, pss = workers.memory()
                costs.add(f"{peer.key} rss", rss / MB)
                costs.add(f"{peer.key} pss", pss / MB)
        records = rec.check(ids)
    return records.rate()


def rotated(items: Sequence[PoolPeer], rep: int) -> list[PoolPeer]:
    shift = rep % len(items)
    return [*items[shift:], *items[:shift]]


async def measure(sizes: PoolSizes, out: Samples) -> None:
    process, thread, celery = JsqueueProcess(), JsqueueThread(), CeleryPrefork()
    spin = calibrate(sizes.cpu_seconds)
    out.add("spin rounds", spin)
    say(f"one CPU job: spin({spin:,}), about {sizes.cpu_seconds * 1000:.0f} ms here")
    reason = celery.unavailable()
    peers: list[PoolPeer] = [process, thread] + ([celery] if reason is None else [])
    if reason is not None:
        out.errors["celery-prefork"] = reason
        say(f"celery prefork skipped: {reason}")
    for peer in peers:
        peer.spin = spin
    await process.open()
    if reason is None:
        await celery.open()
    try:
        for rep in range(sizes.repeats):
            tag = f"{rep + 1}/{sizes.repeats}"
            rates: dict[str, float] = {}
            for peer in rotated(peers, rep):
                peer.work = "cpu"
                rates[peer.key] = await drain(peer, sizes.cpu_jobs)
                out.add(f"cpu {peer.key}", rates[peer.key])
                say(f"cpu drain {tag} {peer.key}: {rates[peer.key]:.1f} jobs/s")
            ratio(out, "cpu process/thread", rates, process, thread)
            ratio(out, "cpu process/celery", rates, process, celery)

            noop_peers = [p for p in peers if p is not thread]
            for peer in rotated(noop_peers, rep):
                peer.work = "noop"
                rates[peer.key] = await drain(peer, sizes.noop_jobs, costs=out)
                out.add(f"noop {peer.key}", rates[peer.key])
                say(f"noop drain {tag} {peer.key}: {rates[peer.key]:,.0f} jobs/s")
            ratio(out, "noop process/celery", rates, process, celery)
            for kind in ("rss", "pss"):
                mine, theirs = out.values.get(f"{process.key} {kind}"), None
                theirs = out.values.get(f"{celery.key} {kind}")
                if mine and theirs:
                    out.add(f"{kind} process/celery", mine[-1] / theirs[-1])

            for peer in rotated([process, thread], rep):
                peer.work = "noop"
                lat = Samples()
                idle = scenarios.Sizes(latency=sizes.latency, latency_gap=sizes.latency_gap)
                await scenarios.latency(peer, idle, lat)
                for metric, values in lat.values.items():
                    out.add(f"{peer.key} {metric}", values[-1])
                say(
                    f"latency {tag} {peer.key}: p50 {lat.values['latency_p50'][-1]:.2f} ms, "
                    f"p99 {lat.values['latency_p99'][-1]:.2f} ms"
                )
    finally:
        await process.close()
        if reason is None:
            await celery.close()


def ratio(out: Samples, name: str, rates: dict[str, float], a: PoolPeer, b: PoolPeer) -> None:
    if a.key in rates and b.key in rates:
        out.add(name, rates[a.key] / rates[b.key])


def stat(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):,.2f} ({min(values):,.2f}-{max(values):,.2f})"


#: (metric, what it is, target or None)
ROWS: list[tuple[str, str, str | None]] = [
    ("cpu jsqueue-process", "CPU drain, process pool (jobs/s)", None),
    ("cpu jsqueue-thread", "CPU drain, thread pool (jobs/s)", None),
    ("cpu celery-prefork", "CPU drain, Celery prefork (jobs/s)", None),
    ("cpu process/thread", "CPU drain: process / thread", ">= 1.6"),
    ("cpu process/celery", "CPU drain: process / Celery prefork", ">= 1.0 (match or beat)"),
    ("noop jsqueue-process", "no-op drain, process pool (jobs/s)", None),
    ("noop celery-prefork", "no-op drain, Celery prefork (jobs/s)", None),
    ("noop process/celery", "no-op drain: process / Celery prefork", ">= 2"),
    ("noop jsqueue-process cpu_us", "no-op job, worker CPU per job, process pool (µs)", None),
    ("noop celery-prefork cpu_us", "no-op job, worker CPU per job, Celery prefork (µs)", None),
    ("noop jsqueue-process parent cpu_us", "... of which the parent process, jsqueue (µs)", None),
    ("noop celery-prefork parent cpu_us", "... of which the parent process, Celery (µs)", None),
    ("jsqueue-process latency_p50", "idle latency p50, process pool (ms)", None),
    ("jsqueue-thread latency_p50", "idle latency p50, thread pool (ms)", None),
    ("jsqueue-process latency_p99", "idle latency p99, process pool (ms)", None),
    ("jsqueue-thread latency_p99", "idle latency p99, thread pool (ms)", None),
    ("jsqueue-process rss", "worker RSS, parent + children, jsqueue (MB)", None),
    ("celery-prefork rss", "worker RSS, parent + children, Celery (MB)", None),
    ("rss process/celery", "RSS: jsqueue / Celery", None),
    ("jsqueue-process pss", "worker PSS, parent + children, jsqueue (MB)", None),
    ("celery-prefork pss", "worker PSS, parent + children, Celery (MB)", None),
    ("pss process/celery", "PSS: jsqueue / Celery", None),
]


def met(values: list[float], target: str | None) -> str:
    if target is None or not values:
        return ""
    bound = float(target.split()[1])
    return "met" if statistics.median(values) >= bound else "missed"


def write(out_dir: Path, sizes: PoolSizes, out: Samples, *, quick: bool, seconds: float) -> None:
    doc = run_doc(sizes, out, quick=quick, seconds=seconds)
    lines = [
        "# Pools: jsqueue's process and thread pools beside Celery prefork, 2 slots each",
        "",
        "`python -m bench.run --pools" + (" --quick" if quick else "") + "`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {round(seconds)} s. "
        f"Each cell: median (min-max) of {sizes.repeats} repetitions; ratios are taken within "
        "each repetition. The machine is shared, so absolute numbers move; ratios less.",
        "",
        "| measurement | median (min-max) | target | |",
        "| --- | ---: | --- | --- |",
    ]
    for metric, what, target in ROWS:
        values = out.values.get(metric, [])
        lines.append(f"| {what} | {stat(values)} | {target or ''} | {met(values, target)} |")
    spin = out.values.get("spin rounds", [0])[0]
    lines += [
        "",
        "## Procedure",
        "",
        f"- CPU job: `spin({spin:,.0f})` (bench/work.py), calibrated to about "
        f"{sizes.cpu_seconds * 1000:.0f} ms on one idle core at the start of the run; "
        f"{sizes.cpu_jobs} jobs per drain. No-op drain: {sizes.noop_jobs:,} jobs of a `def` task "
        "that only records itself.",
        "- Every drain: fill the queue, start the worker, time from the first job's start to "
        "the last job's finish as the tasks recorded them (start-up excluded), check that every "
        "job ran exactly once. The order of the systems rotates every repetition.",
        "- jsqueue: `jsqueue worker --pool process -c 2` (two forkserver children) or "
        "`--pool thread -c 2`, on the bundled nats-server, acks after the task. Celery: "
        "`celery worker --pool prefork -c 2` on RabbitMQ, prefetch multiplier 4, acks before "
        "the task (its defaults); jobs sent one `delay()` at a time (it has no bulk call).",
        "- Worker CPU per no-op job: user + system time of the worker and all its descendants "
        "from its first job to its last, divided by the jobs run meanwhile (brokers not "
        "included). Other tenants of the machine inflate it much less than wall-clock rates.",
        "- Memory: one second after the no-op drain, the worker and all its descendants "
        "(jsqueue: parent, forkserver, 2 children; Celery: parent, 2 children), summed: RSS, and "
        "PSS (shared pages divided among the processes sharing them).",
        f"- Latency: {sizes.latency} no-op jobs sent {sizes.latency_gap * 1000:.0f} ms apart to an "
        "idle worker, enqueue call to task start.",
        "",
        "## Machine and versions",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in {**doc["machine"], **doc["versions"]}.items()]
    if out.errors:
        lines += ["", "## Errors", ""] + [f"- {k}: {v}" for k, v in out.errors.items()]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "pools.md").write_text("\n".join(lines) + "\n")
    (out_dir / "pools.json").write_text(json.dumps(doc, indent=1) + "\n")
    say(f"wrote {out_dir / 'pools.md'} and pools.json")


async def run(sizes: PoolSizes) -> Samples:
    out = Samples()
    with bundled_nats() as server:
        say(f"bundled nats-server at {server.url}")
        await measure(sizes, out)
    return out


def main(out_dir: Path, *, quick: bool, repeats: int = 0) -> None:
    sizes = QUICK if quick else PoolSizes()
    if repeats > 0:
        sizes = dataclasses.replace(sizes, repeats=repeats)
    started = time.monotonic()
    out = asyncio.run(run(sizes))
    write(out_dir, sizes, out, quick=quick, seconds=time.monotonic() - started)

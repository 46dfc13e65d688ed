"""A/B of the process pool's no-op drain (``--pool process -c 2``) between two checkouts.

    git archive <commit> | tar -x -C /tmp/a     # one tree per side (this one may be B)
    python -m bench.ab_pool /tmp/a . --pairs 5

Each pair drains the same number of no-op jobs with a worker run from tree A and one run from
tree B (cwd and PYTHONPATH point at that tree), in alternating order; it prints each drain's
rate, the worker's CPU per job (all its processes) and the parent's share, then medians and the
B/A ratios. The producer and the harness are this checkout's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from pathlib import Path

from bench import pools, procs
from bench.peers.pool_variants import JsqueueProcess
from bench.scenarios import Samples
from bench.servers import bundled_nats

METRICS = ("rate", "cpu_us", "parent_us")


async def pairs(trees: dict[str, Path], count: int, jobs: int) -> dict[str, dict[str, list[float]]]:
    peer = JsqueueProcess()
    peer.work = "noop"
    seen: dict[str, dict[str, list[float]]] = {s: {m: [] for m in METRICS} for s in trees}
    await peer.open()
    try:
        for n in range(count):
            for side in ("A", "B") if n % 2 == 0 else ("B", "A"):
                procs.ROOT = trees[side]  # where WorkerGroup starts the worker
                costs = Samples()
                rate = await pools.drain(peer, jobs, costs=costs)
                row = seen[side]
                row["rate"].append(rate)
                row["cpu_us"].append(costs.values[f"noop {peer.key} cpu_us"][-1])
                row["parent_us"].append(costs.values[f"noop {peer.key} parent cpu_us"][-1])
                pools.say(
                    f"pair {n + 1} {side}: {rate:,.0f} jobs/s, {row['cpu_us'][-1]:.0f} µs CPU "
                    f"a job, parent {row['parent_us'][-1]:.0f} µs"
                )
    finally:
        await peer.close()
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=10_000)
    opts = parser.parse_args()
    trees = {"A": opts.a.resolve(), "B": opts.b.resolve()}
    with bundled_nats():
        seen = asyncio.run(pairs(trees, opts.pairs, opts.jobs))
    for metric in METRICS:
        a, b = seen["A"][metric], seen["B"][metric]
        ratios = [y / x for x, y in zip(a, b, strict=True)]
        print(
            f"{metric}: A {pools.stat(a)}  B {pools.stat(b)}  B/A of medians "
            f"{statistics.median(b) / statistics.median(a):.2f}  pair by pair {pools.stat(ratios)}"
        )
    print("load average:", os.getloadavg())


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

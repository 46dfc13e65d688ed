"""Run the benchmarks: ``python -m bench.run [--quick] [--only jsqueue,raw]`` from the repo root.

Writes ``bench/results/latest.md``, ``latest.png`` and ``latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from pathlib import Path

from bench import report, scenarios
from bench.peers import PEERS, load
from bench.peers.base import Peer
from bench.scenarios import QUICK, Samples, Sizes
from bench.servers import bundled_nats

RESULTS = Path(__file__).resolve().parent / "results"

Step = Callable[[Peer, Sizes, Samples], Awaitable[None]]


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


#: short names for ``--steps``
STEP_NAMES = {
    "loop": "enqueue loop",
    "drain1": "drain, 1 process",
    "drain2": "drain, 2 processes",
    "results": "drain with results",
    "latency": "latency",
    "rss": "200k backlog RSS",
}


def steps(peer: Peer, only: set[str] | None = None) -> list[tuple[str, Step]]:
    """One repetition's measurements, in order (those named in ``only``, if given)."""

    async def drain_1(p: Peer, s: Sizes, o: Samples) -> None:
        await scenarios.drain(p, s, o, procs=1, results=False)

    async def drain_2(p: Peer, s: Sizes, o: Samples) -> None:
        await scenarios.drain(p, s, o, procs=2, results=False)

    async def drain_results(p: Peer, s: Sizes, o: Samples) -> None:
        await scenarios.drain(p, s, o, procs=1, results=True)

    chosen: list[tuple[str, Step]] = [
        ("enqueue loop", scenarios.enqueue_loop),
        ("drain, 1 process", drain_1),
        ("drain, 2 processes", drain_2),
    ]
    if peer.results is not None:
        chosen.append(("drain with results", drain_results))
    chosen.append(("latency", scenarios.latency))
    return [(name, step) for name, step in chosen if only is None or name in only]


async def measure(peer: Peer, sizes: Sizes, only: set[str] | None = None) -> Samples:
    out = Samples()
    await peer.open()
    try:
        for rep in range(1, sizes.repeats + 1):
            for name, step in steps(peer, only):
                await attempt(peer, name, step, sizes, out, f"{rep}/{sizes.repeats}")
        if only is None or STEP_NAMES["rss"] in only:
            await attempt(peer, "200k backlog RSS", scenarios.backlog_rss, sizes, out, "")
    finally:
        await peer.close()
    return out


async def attempt(peer: Peer, name: str, step: Step, sizes: Sizes, out: Samples, rep: str) -> None:
    """Run one measurement; a failure is noted (once) and the run goes on."""
    if name in out.errors:
        return
    before = {k: len(v) for k, v in out.values.items()}
    started = time.monotonic()
    try:
        await step(peer, sizes, out)
    except Exception as exc:
        out.errors[name] = f"{type(exc).__name__}: {exc}"
        say(f"{peer.key}: {name} {rep} FAILED: {out.errors[name]}")
        traceback.print_exc(file=sys.stderr)
        return
    new = {k: v[-1] for k, v in out.values.items() if len(v) > before.get(k, 0)}
    shown = ", ".join(f"{k} {v:,.1f}" for k, v in new.items())
    say(f"{peer.key}: {name} {rep}: {shown} ({time.monotonic() - started:.0f}s)")


async def run(
    keys: list[str], sizes: Sizes, only: set[str] | None = None
) -> list[report.PeerResult]:
    results: list[report.PeerResult] = []
    with bundled_nats() as server:
        say(f"bundled nats-server at {server.url}")
        for key in keys:
            title = PEERS[key][0]
            try:
                peer = load(key)
            except ImportError as exc:
                note = f"not installed ({exc.name}): pip install -e '.[bench]'"
                results.append(report.PeerResult.skipped_peer(key, title, note))
                say(f"{key}: skipped, {note}")
                continue
            reason = peer.unavailable()
            if reason is not None:
                results.append(report.PeerResult.skipped_peer(key, title, reason))
                say(f"{key}: skipped, {reason}")
                continue
            say(f"{key}: {title}")
            started = time.monotonic()
            try:
                samples = await measure(peer, sizes, only)
            except Exception as exc:  # open/close failed: report it, go on with the others
                traceback.print_exc(file=sys.stderr)
                samples = Samples(errors={"setup": f"{type(exc).__name__}: {exc}"})
            results.append(report.PeerResult.measured(peer, samples))
            say(f"{key}: done in {time.monotonic() - started:.0f}s")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    parser.add_argument(
        "--only", default="", help=f"comma-separated peers, of: {','.join(PEERS)} (default: all)"
    )
    parser.add_argument(
        "--steps",
        default="",
        help=f"comma-separated measurements, of: {','.join(STEP_NAMES)} (default: all)",
    )
    parser.add_argument(
        "--repeats", type=int, default=0, help="repetitions of each measurement (default 3)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="output directory")
    parser.add_argument(
        "--pools",
        action="store_true",
        help="instead: jsqueue's process and thread pools beside Celery prefork (pools.md)",
    )
    parser.add_argument(
        "--queues",
        action="store_true",
        help="instead: jsqueue's priority latency and a drain beside long retries (queues.md)",
    )
    args = parser.parse_args(argv)
    if args.queues:
        from bench import queues

        queues.main(args.out, quick=args.quick)
        return
    if args.pools:
        from bench import pools

        pools.main(args.out, quick=args.quick, repeats=args.repeats)
        return
    keys = [k.strip() for k in args.only.split(",") if k.strip()] or list(PEERS)
    unknown = [k for k in keys if k not in PEERS]
    if unknown:
        parser.error(f"unknown peer(s) {', '.join(unknown)}; choose from {', '.join(PEERS)}")
    sizes = QUICK if args.quick else Sizes()
    if args.repeats > 0:
        sizes = replace(sizes, repeats=args.repeats)
    names = [k.strip() for k in args.steps.split(",") if k.strip()]
    wrong = [k for k in names if k not in STEP_NAMES]
    if wrong:
        parser.error(f"unknown step(s) {', '.join(wrong)}; choose from {', '.join(STEP_NAMES)}")
    only = {STEP_NAMES[k] for k in names} or None
    say(f"sizes: {asdict(sizes)}")
    started = time.monotonic()
    results = asyncio.run(run(keys, sizes, only))
    command = "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:])
    paths = report.write(
        args.out,
        results,
        sizes,
        quick=args.quick,
        command=command.strip(),
        seconds=time.monotonic() - started,
    )
    for path in paths:
        say(f"wrote {path}")


if __name__ == "__main__":
    main()

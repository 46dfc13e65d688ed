"""What every benchmark mode prints and records about its run: the commit, the load, a line."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import report
from bench.scenarios import Samples


def commit() -> str:
    """The commit of the checkout measured (with "+changes" if its tree differs)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "jsqueue"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "?"
    return f"{head}{' +changes' if dirty else ''}" or "?"


def load() -> str:
    """The machine's load average: on 2 shared cores, what the other tenants took."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_doc(sizes: Any, out: Samples, *, quick: bool, seconds: float) -> dict[str, Any]:
    """The JSON a bench mode writes: its sizes, the machine, the load, the commit, the samples."""
    return {
        "sizes": asdict(sizes),
        "quick": quick,
        "seconds": round(seconds),
        "machine": {
            **report.machine(),
            "load average at the end (1, 5, 15 min)": load(),
            "jsqueue commit": commit(),
        },
        "versions": report.versions(),
        "samples": out.values,
        "errors": out.errors,
    }

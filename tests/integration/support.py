"""Helpers shared by the integration tests that drive the CLI and worker processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from jsqueue.testing import Process

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jsqueue(prefix: str, url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``jsqueue ARGS -A tests.apps.faulty:app --url URL`` with the test's prefix."""
    return subprocess.run(
        [sys.executable, "-m", "jsqueue", *args, "-A", "tests.apps.faulty:app", "--url", url],
        cwd=ROOT,
        env={**os.environ, "JSQ_TEST_PREFIX": prefix},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def worker_process(url: str, prefix: str, tmp: Path, *args: str, **env: str) -> Process:
    """A ``jsqueue worker`` process for the faulty app (not started yet: use ``with``)."""
    return Process.jsqueue(
        "worker",
        "-A",
        "tests.apps.faulty:app",
        "--url",
        url,
        *args,
        env={"JSQ_TEST_PREFIX": prefix, **env},
        cwd=ROOT,
        log_dir=tmp,
        name="worker",
    )

"""The dashboard stays an optional extra: ``import jsqueue`` (and its CLI) load no web package,
and without the extra ``jsqueue dashboard`` says how to install it, in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WEB = ("starlette", "uvicorn", "jinja2", "playwright", "httpx")


def test_importing_jsqueue_and_its_cli_loads_no_web_package() -> None:
    code = (
        "import sys, jsqueue, jsqueue.cli\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {WEB!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_without_the_extra_the_command_names_the_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['starlette'] = None  # as if the extra were not installed\n"
        "from jsqueue.cli import main\n"
        "sys.argv = ['jsqueue', 'dashboard', '--url', 'nats://127.0.0.1:1']\n"
        "main()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        'Error: the dashboard needs its extra: pip install "jsqueue[dashboard]"'
    ]

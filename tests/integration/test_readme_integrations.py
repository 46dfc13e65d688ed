"""The README's Integrations section, run for real: middleware, tracing turned on, and the
Sentry recipe (against a stand-in sentry_sdk that prints what it was given); its Django and
FastAPI snippets are the example files' own lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from jsqueue.wire.server import NatsServer

from .support import ROOT

README = (ROOT / "README.md").read_text()
SECTION = README.split("## Integrations\n", 1)[1].split("\n## ", 1)[0]
pytestmark = pytest.mark.slow

STAND_IN = '''
"""A stand-in for sentry_sdk: prints what the recipe hands it."""
import contextlib


class Scope:
    def __init__(self):
        self.tags, self.contexts = {}, {}

    def set_tag(self, key, value):
        self.tags[key] = value

    def set_context(self, key, value):
        self.contexts[key] = value


_scopes = []


def init(dsn=None, **options):
    print("sentry: init", dsn)


@contextlib.contextmanager
def isolation_scope():
    _scopes.append(Scope())
    try:
        yield _scopes[-1]
    finally:
        _scopes.pop()


def capture_exception(exc):
    scope = _scopes[-1]
    attempt = scope.contexts["jsqueue"]["attempt"]
    print("sentry:", type(exc).__name__, sorted(scope.tags.items()), attempt)
'''


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A server of its own: the README's app uses the default prefix."""
    with NatsServer(store_dir=tmp_path / "store") as server:
        yield server


def test_readme_integrations_blocks_run(own_server: NatsServer, tmp_path: Path) -> None:
    blocks = re.findall(r"<!-- readme:integrations -->\n```python\n(.*?)```", SECTION, re.S)
    assert len(blocks) == 3
    (tmp_path / "sentry_sdk.py").write_text(textwrap.dedent(STAND_IN))
    out = subprocess.run(
        [sys.executable, "-c", "\n".join(blocks)],
        env={
            **os.environ,
            "JSQUEUE_URL": own_server.url,
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
            "SENTRY_DSN": "https://key@sentry.invalid/1",
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "job whose ran for acme",
        "sentry: init https://key@sentry.invalid/1",
        "sentry: ZeroDivisionError [('jsqueue.queue', 'default'), "
        "('jsqueue.task', '__main__.divide')] 1",
        "FAILURE",
    ]


def test_readme_django_and_fastapi_snippets_are_the_examples_lines() -> None:
    sources = "\n".join(
        p.read_text()
        for p in [*(ROOT / "examples" / "django").rglob("*.py"), ROOT / "examples" / "web.py"]
    )
    django = re.findall(r"<!-- readme:django -->\n```python\n(.*?)```", SECTION, re.S)
    fastapi = re.findall(r"### FastAPI\n.*?```python\n(.*?)```", SECTION, re.S)
    assert len(django) == 2
    assert len(fastapi) == 1
    for block in [*django, *fastapi]:
        for line in block.splitlines():
            assert line in sources.splitlines(), f"README line not in the examples: {line!r}"

"""The same checks CI and developers run: ruff, ruff format, mypy --strict, and typed tasks."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["jsqueue", "tests", "worker", "examples", "bench"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_check() -> None:
    out = run("ruff", "check", *SOURCES)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format() -> None:
    out = run("ruff", "format", "--check", *SOURCES)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_strict_on_the_package() -> None:
    out = run("mypy", "--strict", "jsqueue")
    assert out.returncode == 0, out.stdout + out.stderr


SNIPPET = """
from jsqueue import App, AsyncResult

app = App("typed")


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task(queue="q")
def shout(word: str) -> str:
    return word.upper()


async def ok() -> None:
    job: AsyncResult[int] = await add.delay(1, 2)
    total: int = await job.get()
    text: str = await (await shout.delay("a")).get()
    print(total, text)


async def wrong() -> None:
    await add.delay("x", 1)
    await shout.delay(word=3)
    name: str = await (await add.delay(1, 2)).get()
"""


@pytest.mark.slow
def test_task_calls_are_type_checked(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    out = run("mypy", "--strict", "--no-incremental", str(snippet))
    errors = [line for line in out.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 3, out.stdout
    assert (
        'Argument 1 to "delay" of "Task" has incompatible type "str"; expected "int"' in errors[0]
    )
    assert '"word"' in errors[1]
    assert 'Incompatible types in assignment (expression has type "int"' in errors[2]

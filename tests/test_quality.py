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


PACKAGE = ROOT / "jsqueue"


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package is its __init__)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(path: Path) -> set[str]:
    """Every module an import statement names, at any depth (inside functions and
    ``if TYPE_CHECKING:`` blocks too); ``from a import b`` names ``a.b`` when that is a module."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_the_wire_package_imports_nats() -> None:
    offenders = {
        name
        for name, path in _modules().items()
        if not name.startswith("jsqueue.wire")
        and any(i == "nats" or i.startswith("nats.") for i in _imports(path))
    }
    assert offenders == set()


def test_the_import_graph_of_the_package_has_no_cycle() -> None:
    modules = _modules()
    graph = {
        name: {i for i in _imports(path) if i in modules and i != name}
        for name, path in modules.items()
    }
    # importing a package's submodule runs the package first: an edge, but not a cycle of ours
    for name in graph:
        graph[name] = {i for i in graph[name] if not name.startswith(i + ".")}
    seen: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        seen[name] = 1
        for nxt in sorted(graph[name]):
            if seen.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in seen:
                visit(nxt, [*path, nxt])
        seen[name] = 2

    for name in sorted(graph):
        if name not in seen:
            visit(name, [name])
    assert cycles == [], " | ".join(" -> ".join(c) for c in cycles[:5])


def test_no_module_is_over_400_lines() -> None:
    long = {
        name: n for name, p in _modules().items() if (n := len(p.read_text().splitlines())) > 400
    }
    assert long == {}

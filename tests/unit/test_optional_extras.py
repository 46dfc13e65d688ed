"""Optional extras stay optional: importing jsqueue (and its CLI) loads no tracing or web
package, and the contrib modules name the extra to install when theirs is missing."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

OPTIONAL = ("opentelemetry", "django", "fastapi", "starlette", "httpx", "sentry_sdk")


def loaded_after(statement: str) -> list[str]:
    code = (
        f"import sys\n{statement}\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({OPTIONAL!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return list(eval(out.stdout))


def test_importing_jsqueue_loads_no_optional_package() -> None:
    assert loaded_after("import jsqueue, jsqueue.cli, jsqueue.worker, jsqueue.contrib") == []


def test_contrib_modules_load_only_their_own_extra() -> None:
    assert loaded_after("import jsqueue.contrib.otel") == ["opentelemetry"]
    assert loaded_after("import jsqueue.contrib.django") == ["django"]


def test_a_plain_install_pulls_no_optional_package() -> None:
    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]
    names = {dep.split("[")[0].split(">")[0].split("=")[0].strip().lower().replace("-", "_")
             for dep in project["dependencies"]}  # fmt: skip
    assert not {n for n in names if n.startswith(OPTIONAL)}
    extras = project["optional-dependencies"]
    assert extras["otel"] == ["opentelemetry-api>=1.25"]
    assert extras["django"] == ["django>=4.2"]

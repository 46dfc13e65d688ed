"""Bad Django configuration gets a clear error (each case in a fresh process: Django is set up
once per process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("django")


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_settings_module_names_the_variable_to_set() -> None:
    out = run("from jsqueue.contrib.django import django_app\ndjango_app()")
    assert out.returncode == 1
    assert "ConfigError" in out.stderr
    assert "DJANGO_SETTINGS_MODULE is not set" in out.stderr


def test_an_unknown_jsqueue_setting_is_named() -> None:
    code = """
    import django
    from django.conf import settings
    settings.configure(INSTALLED_APPS=[], JSQUEUE={"name": "x", "concurrencyy": 3})
    from jsqueue.contrib.django import django_app
    try:
        django_app()
    except Exception as exc:
        print(type(exc).__name__, exc)
    """
    out = run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ConfigError")
    assert "concurrencyy" in out.stdout


def test_settings_become_the_apps_and_the_middleware_is_added() -> None:
    code = """
    from django.conf import settings
    settings.configure(INSTALLED_APPS=[], JSQUEUE={"name": "shop", "prefix": "p1", "ack_wait": 7})
    from jsqueue.contrib.django import DjangoMiddleware, discover_tasks, django_app
    app = django_app()
    print(app.name, app.settings.prefix, app.settings.ack_wait, discover_tasks(app))
    print([type(m).__name__ for m in app.middleware])
    """
    out = run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["shop p1 7 []", "['DjangoMiddleware']"]

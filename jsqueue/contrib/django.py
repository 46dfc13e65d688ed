"""Django (``pip install jsqueue[django]``): an app configured from ``settings.JSQUEUE``, task
discovery in installed apps, jobs sent once the transaction commits, and database connections
closed around each job where it runs.

In ``proj/jsq.py``, the module ``jsqueue worker -A proj.jsq:app`` names::

    import os
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
    from jsqueue.contrib.django import discover_tasks, django_app
    app = django_app()            # django.setup(), then App(**settings.JSQUEUE)
    discover_tasks(app)           # imports <each installed app>.tasks

An ``async def`` task runs on the worker's event loop, where Django's ORM refuses to run: wrap
ORM calls in ``asgiref.sync.sync_to_async`` or make the task a plain ``def`` (it then runs in a
pool thread or child, with its connections closed after each job as a request's are).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import django
from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections, transaction

from jsqueue.app import App
from jsqueue.context import JobContext
from jsqueue.envelope import new_job_id
from jsqueue.errors import ConfigError
from jsqueue.middleware import Middleware
from jsqueue.services.handles import AsyncResult
from jsqueue.task import Task

__all__ = [
    "DjangoMiddleware",
    "apply_async_on_commit",
    "delay_on_commit",
    "discover_tasks",
    "django_app",
    "setup",
]

log = logging.getLogger("jsqueue.contrib.django")
R = TypeVar("R")


def setup() -> None:
    """``django.setup()`` unless Django is set up (or setting up) already."""
    if apps.ready or apps.loading:
        return
    try:
        django.setup()
    except ImproperlyConfigured as exc:
        where = os.environ.get("DJANGO_SETTINGS_MODULE")
        hint = f"DJANGO_SETTINGS_MODULE={where}" if where else "DJANGO_SETTINGS_MODULE is not set"
        raise ConfigError(
            f"Django is not configured ({hint}): set DJANGO_SETTINGS_MODULE to your settings "
            f"module (e.g. proj.settings) before the app is made: {exc}"
        ) from None


class DjangoMiddleware(Middleware):
    """Sets Django up in process-pool children and closes the database connections a ``def``
    task's thread or child used, before and after each job (as Django does per request)."""

    def around_job_sync(self, job: JobContext, call_next: Callable[[], Any]) -> Any:
        close_old_connections()
        try:
            return call_next()
        finally:
            close_old_connections()

    def on_child_start(self) -> None:
        setup()


def django_app(name: str | None = None, **overrides: Any) -> App:
    """Set Django up and make the App that ``settings.JSQUEUE`` (a dict of :class:`App`
    arguments: ``name``, ``url``, ``prefix`` and any setting) describes, with ``overrides``
    on top, and :class:`DjangoMiddleware` added."""
    setup()
    options = dict(getattr(settings, "JSQUEUE", None) or {})
    if not all(isinstance(key, str) for key in options):
        raise ConfigError("settings.JSQUEUE must be a dict of App arguments with str keys")
    options.update(overrides)
    app_name = name or str(options.pop("name", "django"))
    options.pop("name", None)
    try:
        app = App(app_name, **options)
    except TypeError as exc:
        raise ConfigError(f"settings.JSQUEUE: {exc}") from None
    app.add_middleware(DjangoMiddleware())
    return app


def discover_tasks(app: App, module: str = "tasks") -> list[str]:
    """Import ``<app>.<module>`` of every installed Django app that has one; return the names
    imported. Call it after ``app`` is assigned, since those modules import it."""
    setup()
    found = []
    for config in apps.get_app_configs():
        name = f"{config.name}.{module}"
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
            found.append(name)
    log.debug("app %s: tasks from %s", app.name, ", ".join(found) or "no module")
    return found


def delay_on_commit(task: Task[Any, R], *args: Any, **kwargs: Any) -> AsyncResult[R]:
    """Send ``task(*args, **kwargs)`` once the current transaction commits (at once outside
    one); nothing is sent if it rolls back. Returns the handle of the job to come."""
    return apply_async_on_commit(task, args, kwargs)


def apply_async_on_commit(
    task: Task[Any, R],
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    using: str | None = None,
    **options: Any,
) -> AsyncResult[R]:
    """:meth:`Task.apply_async` once the transaction of database ``using`` commits; its id is
    fixed now, so the handle can be stored or returned before the job is sent. Wrong
    arguments fail here, in the caller."""
    args, kwargs = tuple(args), dict(kwargs or {})
    task.check_arguments(args, kwargs)
    job_id = options.pop("job_id", None) or new_job_id()

    def send() -> None:
        task.apply_async_sync(args, kwargs, job_id=job_id, **options)

    transaction.on_commit(send, using=using, robust=True)
    handle: AsyncResult[R] = AsyncResult(task.app, job_id, task.name)
    return handle

"""What every ``jsqueue`` command shares: the click group, app loading, errors, tables."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any, TypeVar

import click

from jsqueue.app import App, load_app
from jsqueue.errors import JsqueueError

T = TypeVar("T")
log = logging.getLogger("jsqueue.cli")

LOG_LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; a jsqueue error becomes one line and exit code 1."""
    try:
        return asyncio.run(coro)
    except JsqueueError as exc:
        raise click.ClickException(str(exc)) from None


def app_from(spec: str | None, url: str | None, *, need_tasks: bool = False) -> App:
    """The app named by ``-A``; for commands that run no tasks, ``--url`` alone will do (an app
    with the default prefix)."""
    if not spec:
        if need_tasks or not url:
            needs = "" if need_tasks else " or --url nats://host:4222"
            raise click.UsageError(f"which app? pass -A module:app (or set JSQUEUE_APP){needs}")
        try:
            return App("jsqueue", url=url)
        except JsqueueError as exc:
            raise click.ClickException(str(exc)) from None
    try:
        app = load_app(spec)
        if url:
            app.configure(url=url)
    except JsqueueError as exc:
        raise click.ClickException(str(exc)) from None
    return app


def app_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """-A/--app, --url and --log-level, shared by every command that talks to an app."""
    func = click.option(
        "--log-level", type=LOG_LEVELS, default="INFO", show_default=True, help="Log level."
    )(func)
    func = click.option(
        "--url",
        envvar="JSQUEUE_URL",
        help="NATS URL(s), comma-separated; overrides the app's. [env: JSQUEUE_URL]",
    )(func)
    func = click.option(
        "-A",
        "--app",
        "app_spec",
        envvar="JSQUEUE_APP",
        metavar="MODULE:APP",
        help="The app to use, e.g. -A tasks:app (imported from the current dir). Commands that "
        "run no tasks also work with --url alone, for an app with the default prefix (jsq). "
        "[env: JSQUEUE_APP]",
    )(func)
    return func


def wait_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """--wait-for-server, for the long-running processes a Procfile may start before NATS."""
    return click.option(
        "--wait-for-server",
        type=click.FloatRange(min=0),
        default=0.0,
        show_default=True,
        help=(
            "Seconds to wait for an unreachable NATS server at start. A worker that reaches "
            "one whose JetStream does not answer yet (a cluster electing) waits up to 60 s "
            "for it, or this long if longer."
        ),
    )(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="jsqueue")
def cli() -> None:
    """jsqueue: a Celery-style task queue on NATS JetStream.

    Run `jsqueue server` for a local JetStream server, `jsqueue worker -A tasks:app` to run jobs,
    and `jsqueue beat -A tasks:app` for periodic jobs.
    """


def with_broker(app_spec: str | None, url: str | None, action: Callable[[Any], Awaitable[T]]) -> T:
    app = app_from(app_spec, url)

    async def main() -> T:
        async with app:
            return await action(await app.broker())

    return run(main())


def progress_file() -> Any:
    """Progress bars on a terminal only: piped output stays quiet."""
    return sys.stderr if sys.stderr.isatty() else open(os.devnull, "w")


def when(timestamp: float) -> str:
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())

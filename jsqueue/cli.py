"""The ``jsqueue`` command: a thin click group over the public coroutines.

Every command takes ``-A module:app`` (or ``$JSQUEUE_APP``) and ``--url`` (or ``$JSQUEUE_URL``).
Errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any, TypeVar

import click

from jsqueue import dlq as dead_letters
from jsqueue.app import App, load_app
from jsqueue.errors import JsqueueError

T = TypeVar("T")
log = logging.getLogger("jsqueue.cli")

LOG_LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; a jsqueue error becomes one line and exit code 1."""
    try:
        return asyncio.run(coro)
    except JsqueueError as exc:
        raise click.ClickException(str(exc)) from None


def _app_from(spec: str | None, url: str | None) -> App:
    if not spec:
        raise click.UsageError("which app? pass -A module:app (or set JSQUEUE_APP)")
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
        help="The app to use, e.g. -A tasks:app (imported from the current dir). "
        "[env: JSQUEUE_APP]",
    )(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="jsqueue")
def cli() -> None:
    """jsqueue: a Celery-style task queue on NATS JetStream.

    Run `jsqueue server` for a local JetStream server, `jsqueue worker -A tasks:app` to run jobs,
    and `jsqueue beat -A tasks:app` for periodic jobs.
    """


# -- worker -------------------------------------------------------------------------------------


@cli.command()
@app_options
@click.option(
    "-Q",
    "--queues",
    default=None,
    metavar="Q1,Q2",
    help="Comma-separated queues to consume. [default: the app's default queue]",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Jobs run at once (coroutines on the loop, functions in threads).",
)
@click.option("--burst", is_flag=True, help="Exit once the queues are empty and nothing runs.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds running jobs get to finish after SIGTERM before they are given back.",
)
@click.option(
    "--wait-for-server",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds to wait for an unreachable NATS server at start.",
)
@click.option("--id", "worker_id", default=None, help="Worker id. [default: host-pid]")
def worker(
    app_spec: str | None,
    url: str | None,
    log_level: str,
    queues: str | None,
    concurrency: int,
    burst: bool,
    grace: float,
    wait_for_server: float,
    worker_id: str | None,
) -> None:
    """Run jobs: pull, run, then ack, retry (nak with a delay) or dead-letter.

    The first SIGTERM/SIGINT stops pulling and lets running jobs finish within --grace; the
    rest are given back and run again elsewhere. A second signal exits at once.
    """
    from jsqueue.worker import Worker

    _setup_logging(log_level)
    app = _app_from(app_spec, url)
    queue_list = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    try:
        runner = Worker(
            app,
            queues=queue_list,
            concurrency=concurrency,
            burst=burst,
            grace=grace,
            worker_id=worker_id,
        )
    except (JsqueueError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None

    async def main() -> None:
        _install_stop_signals(runner.stop, "worker")
        await runner.run(wait_for_server=wait_for_server)
        await app.close()

    _run(main())
    _exit_despite_threads()


def _install_stop_signals(stop: Callable[[], None], what: str) -> None:
    """First SIGTERM/SIGINT: graceful stop. Second: exit at once."""
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        if len(received) == 1:
            log.warning("%s received %s: stopping gracefully (again to exit now)", what, sig.name)
            stop()
        else:
            log.warning("%s received %s again: exiting now", what, sig.name)
            logging.shutdown()
            os._exit(128 + sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)


def _exit_despite_threads() -> None:
    """Thread tasks cannot be cancelled; their jobs were given back, so do not wait for them."""
    import threading

    stuck = [t for t in threading.enumerate() if t.name.startswith("jsqueue-task") and t.is_alive()]
    if stuck:
        log.warning(
            "exiting with %d thread task(s) still running (their jobs were given back)", len(stuck)
        )
        logging.shutdown()
        os._exit(0)


# -- beat ---------------------------------------------------------------------------------------


@cli.command()
@app_options
@click.option(
    "--list", "list_only", is_flag=True, help="Print the entries and their next fire time."
)
@click.option(
    "--lease-ttl",
    type=click.FloatRange(min=1),
    default=10.0,
    show_default=True,
    help="Seconds a dead leader holds the lease before a standby beat takes over.",
)
@click.option(
    "--wait-for-server",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds to wait for an unreachable NATS server at start.",
)
def beat(
    app_spec: str | None,
    url: str | None,
    log_level: str,
    list_only: bool,
    lease_ttl: float,
    wait_for_server: float,
) -> None:
    """Send periodic jobs. Safe to run several: one leads, the others stand by, and every tick
    is sent exactly once."""
    from jsqueue.beat import Beat

    _setup_logging(log_level)
    app = _app_from(app_spec, url)
    if list_only:
        _list_periodic(app)
        return
    runner = Beat(app, lease_ttl=lease_ttl)

    async def main() -> None:
        _install_stop_signals(runner.stop, "beat")
        await runner.run(wait_for_server=wait_for_server)
        await app.close()

    _run(main())


def _list_periodic(app: App) -> None:
    now = time.time()
    rows = []
    for entry in app.periodic.values():
        nxt = datetime.fromtimestamp(entry.schedule.next_after(now), entry.schedule.zone)
        rows.append(
            (
                entry.name,
                entry.signature.task,
                entry.schedule.describe(),
                nxt.strftime("%Y-%m-%d %H:%M:%S %Z"),
                entry.catch_up,
            )
        )
    if not rows:
        click.echo(f"app {app.name} has no periodic entries")
        return
    _table(("NAME", "TASK", "SCHEDULE", "NEXT", "CATCH-UP"), rows)


# -- server -------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--url",
    envvar="JSQUEUE_URL",
    default="nats://127.0.0.1:4222",
    show_default=True,
    help="Where the server should answer; its port is used. [env: JSQUEUE_URL]",
)
@click.option("--port", type=int, default=None, help="Port to listen on (overrides the URL's).")
@click.option(
    "--store-dir",
    type=click.Path(file_okay=False),
    default=".jsqueue/nats",
    envvar="JSQUEUE_STORE_DIR",
    show_default=True,
    help="JetStream storage directory. [env: JSQUEUE_STORE_DIR]",
)
@click.option("--log-level", type=LOG_LEVELS, default="INFO", show_default=True)
def server(url: str, port: int | None, store_dir: str, log_level: str) -> None:
    """Run the bundled nats-server with JetStream on 127.0.0.1.

    If a suitable JetStream server already answers at the URL, say so and stay up quietly (so
    a Procfile keeps running); an unsuitable one is an error. SIGTERM stops the server cleanly.
    """
    from jsqueue.serve import serve

    _setup_logging(log_level)
    _run(serve(url, port, store_dir))


# -- status -------------------------------------------------------------------------------------


@cli.command()
@app_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(app_spec: str | None, url: str | None, log_level: str, as_json: bool) -> None:
    """Per queue: jobs ready, unacked (running or waiting to retry), scheduled, dead-lettered."""
    from jsqueue.status import queue_status

    _setup_logging(log_level)
    app = _app_from(app_spec, url)

    async def main() -> list[Any]:
        async with app:
            return await queue_status(app)

    queues = _run(main())
    if as_json:
        click.echo(json.dumps({"queues": [q.to_dict() for q in queues]}, indent=2))
        return
    rows = [
        (
            q.queue,
            str(q.ready),
            str(q.unacked),
            str(q.scheduled),
            str(q.dead),
            "-" if q.oldest_ready_age is None else f"{q.oldest_ready_age:.1f}s",
        )
        for q in queues
    ]
    _table(("QUEUE", "READY", "UNACKED", "SCHEDULED", "DEAD", "OLDEST READY"), rows)


# -- dead letters -------------------------------------------------------------------------------


@cli.group()
def dlq() -> None:
    """Dead letters: jobs that can never succeed, kept with why."""


def _with_broker(app_spec: str | None, url: str | None, action: Callable[[Any], Awaitable[T]]) -> T:
    app = _app_from(app_spec, url)

    async def main() -> T:
        async with app:
            return await action(await app.broker())

    return _run(main())


@dlq.command("list")
@app_options
@click.option("-Q", "--queue", default=None, help="Only this queue.")
@click.option("--task", default=None, help="Only this task.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def dlq_list(
    app_spec: str | None,
    url: str | None,
    log_level: str,
    queue: str | None,
    task: str | None,
    as_json: bool,
) -> None:
    """List dead letters: job id, task, queue, reason and error, attempts, time."""
    _setup_logging(log_level)
    letters = _with_broker(
        app_spec, url, functools.partial(dead_letters.list_letters, queue=queue, task=task)
    )
    if as_json:
        click.echo(json.dumps([letter.to_dict(with_payload=False) for letter in letters], indent=2))
        return
    if not letters:
        click.echo("no dead letters")
        return
    rows = [
        (
            letter.job_id,
            letter.task,
            letter.queue,
            f"{letter.reason}: {letter.error_type}: {letter.error_message}"[:80],
            str(letter.attempts),
            _when(letter.time),
        )
        for letter in letters
    ]
    _table(("JOB ID", "TASK", "QUEUE", "REASON", "ATTEMPTS", "TIME"), rows)
    click.echo(f"{len(letters)} dead letter(s)")


@dlq.command("show")
@app_options
@click.argument("job_id")
def dlq_show(app_spec: str | None, url: str | None, log_level: str, job_id: str) -> None:
    """Show one dead letter in full: the job, the error and its traceback."""
    _setup_logging(log_level)
    letter = _with_broker(app_spec, url, lambda broker: dead_letters.find(broker, job_id))
    if letter is None:
        raise click.ClickException(f"no dead letter for job {job_id}")
    click.echo(json.dumps(letter.to_dict(), indent=2))


@dlq.command("replay")
@app_options
@click.argument("job_id", required=False)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@click.option("--task", default=None, help="Replay the dead letters of this task.")
def dlq_replay(
    app_spec: str | None,
    url: str | None,
    log_level: str,
    job_id: str | None,
    replay_all: bool,
    task: str | None,
) -> None:
    """Send dead-lettered jobs again, each under a new id that records the original's."""
    _setup_logging(log_level)
    if sum(bool(x) for x in (job_id, replay_all, task)) != 1:
        raise click.UsageError("give one of: JOB_ID, --all, --task NAME")

    async def replay(broker: Any) -> list[str]:
        if job_id:
            letter = await dead_letters.find(broker, job_id)
            if letter is None:
                raise JsqueueError(f"no dead letter for job {job_id}")
            letters = [letter]
        else:
            letters = await dead_letters.list_letters(broker, task=task)
        new_ids = []
        with click.progressbar(letters, label="replaying", file=_progress_file()) as bar:
            for letter in bar:
                new_ids.append(await dead_letters.replay(broker, letter))
        return new_ids

    new_ids = _with_broker(app_spec, url, replay)
    for new_id in new_ids if job_id else []:
        click.echo(f"replayed {job_id} as {new_id}")
    click.echo(f"replayed {len(new_ids)} job(s)")


@dlq.command("purge")
@app_options
@click.option("-Q", "--queue", default=None, help="Only this queue's dead letters.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(
    app_spec: str | None, url: str | None, log_level: str, queue: str | None, yes: bool
) -> None:
    """Remove dead letters for good."""
    _setup_logging(log_level)
    what = f"the dead letters of queue {queue}" if queue else "every dead letter"
    if not yes and not click.confirm(f"Remove {what}?", default=False):
        raise click.ClickException("nothing removed")
    removed = _with_broker(app_spec, url, lambda broker: dead_letters.purge(broker, queue))
    click.echo(f"removed {removed} dead letter(s)")


# -- helpers ------------------------------------------------------------------------------------


def _progress_file() -> Any:
    """Progress bars on a terminal only: piped output stays quiet."""
    return sys.stderr if sys.stderr.isatty() else open(os.devnull, "w")


def _when(timestamp: float) -> str:
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def main() -> None:
    """Entry point of the ``jsqueue`` console script."""
    cli(prog_name="jsqueue")

"""``jsqueue worker``, ``jsqueue beat`` and ``jsqueue server``: the long-running processes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

import click

from jsqueue.app import App
from jsqueue.cli.common import (
    LOG_LEVELS,
    app_from,
    app_options,
    cli,
    run,
    setup_logging,
    table,
    wait_option,
)
from jsqueue.errors import JsqueueError

log = logging.getLogger("jsqueue.cli")


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
    default=None,
    help="Jobs run at once. Thread pool: coroutines on the loop and functions in threads "
    "[default: 32]. Process pool: the number of children, whose slots coroutines share "
    "[default: the CPU count].",
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=0),
    default=None,
    metavar="N",
    help="Jobs held beyond -c, waiting for a free slot, so that the next job needs no round "
    "trip to the server; 0 for long jobs, so that each waits for whichever worker is free "
    "first. [default: as many as -c with --pool process, 0 with --pool thread]",
)
@click.option(
    "--pool",
    type=click.Choice(["thread", "process"]),
    default="thread",
    show_default=True,
    help="Where def tasks run: threads of the worker, or supervised child processes (CPU-bound "
    "work, hard time limits, terminate, memory recycling, crash isolation).",
)
@click.option(
    "--time-limit",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds a job may run, for tasks that set no time_limit: a coroutine is cancelled, a "
    "child killed; a thread cannot be stopped, so it is reported as stuck.",
)
@click.option(
    "--soft-time-limit",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds after which SoftTimeLimitExceeded is raised inside a job (coroutines and "
    "process-pool children), for tasks that set no soft_time_limit.",
)
@click.option(
    "--max-tasks-per-child",
    type=click.IntRange(min=1),
    default=None,
    help="Process pool: replace a child after this many jobs.",
)
@click.option(
    "--max-memory-per-child",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="MB",
    help="Process pool: replace a child whose resident memory after a job is above this.",
)
@click.option("--burst", is_flag=True, help="Exit once the queues are empty and nothing runs.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds running jobs get to finish after SIGTERM before they are given back.",
)
@wait_option
@click.option("--id", "worker_id", default=None, help="Worker id. [default: host-pid]")
@click.option("--events", is_flag=True, help="Publish job events (see `jsqueue events`).")
@click.option(
    "--metrics-port",
    type=click.IntRange(min=1, max=65535),
    default=None,
    help="Serve Prometheus metrics on this port (needs the metrics extra).",
)
def worker(
    app_spec: str | None,
    url: str | None,
    log_level: str,
    queues: str | None,
    concurrency: int | None,
    prefetch: int | None,
    pool: str,
    time_limit: float | None,
    soft_time_limit: float | None,
    max_tasks_per_child: int | None,
    max_memory_per_child: float | None,
    burst: bool,
    grace: float,
    wait_for_server: float,
    worker_id: str | None,
    events: bool,
    metrics_port: int | None,
) -> None:
    """Run jobs: pull, run, then ack, retry (nak with a delay) or dead-letter.

    The first SIGTERM/SIGINT stops pulling and lets running jobs finish within --grace; the
    rest are given back and run again elsewhere. A second signal kills the pool's children,
    gives back every job in flight and exits.
    """
    from jsqueue.worker import Worker

    setup_logging(log_level)
    app = app_from(app_spec, url, need_tasks=True)
    if events:
        app.configure(events=True)
    if metrics_port is not None:
        from jsqueue.services.metrics import PrometheusMetrics

        try:
            metrics = PrometheusMetrics()
            metrics.serve(metrics_port)
        except (JsqueueError, OSError) as exc:
            raise click.ClickException(f"metrics on port {metrics_port}: {exc}") from None
        app.add_hook(metrics)
    queue_list = None
    if queues is not None:
        queue_list = [q.strip() for q in queues.split(",") if q.strip()]
        if not queue_list:
            raise click.BadParameter(
                f"{queues!r} names no queue; give e.g. -Q default,emails", param_hint="-Q"
            )
    try:
        runner = Worker(
            app,
            queues=queue_list,
            concurrency=concurrency,
            prefetch=prefetch,
            burst=burst,
            grace=grace,
            worker_id=worker_id,
            pool=pool,
            app_spec=app_spec,
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            max_tasks_per_child=max_tasks_per_child,
            max_memory_per_child=max_memory_per_child,
        )
    except (JsqueueError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None

    async def main() -> None:
        _install_stop_signals(runner.stop, "worker", runner.abort)
        await runner.run(wait_for_server=wait_for_server)
        await app.close()

    run(main())
    _exit_despite_threads()


def _install_stop_signals(
    stop: Callable[[], None],
    what: str,
    abort: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """First SIGTERM/SIGINT: graceful stop. Second: ``abort()`` (for at most 5 s), then exit."""
    loop = asyncio.get_running_loop()
    received: list[int] = []
    aborting: list[asyncio.Task[None]] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        if len(received) == 1:
            log.warning("%s received %s: stopping gracefully (again to exit now)", what, sig.name)
            stop()
            return
        log.warning("%s received %s again: exiting now", what, sig.name)
        if abort is None or aborting:
            _exit_now(sig)
        else:
            aborting.append(loop.create_task(_abort_then_exit(abort, sig)))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)


async def _abort_then_exit(abort: Callable[[], Coroutine[Any, Any, None]], sig: int) -> None:
    try:
        await asyncio.wait_for(abort(), 5)
    except Exception as exc:
        log.error("giving back the jobs in flight failed (%s); they come back after ack_wait", exc)
    _exit_now(sig)


def _exit_now(sig: int) -> None:
    logging.shutdown()
    os._exit(128 + sig)


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
@wait_option
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

    setup_logging(log_level)
    app = app_from(app_spec, url, need_tasks=True)
    if list_only:
        _list_periodic(app)
        return
    runner = Beat(app, lease_ttl=lease_ttl)

    async def main() -> None:
        _install_stop_signals(runner.stop, "beat")
        await runner.run(wait_for_server=wait_for_server)
        await app.close()

    run(main())


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
    table(("NAME", "TASK", "SCHEDULE", "NEXT", "CATCH-UP"), rows)


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

    setup_logging(log_level)
    run(serve(url, port, store_dir))

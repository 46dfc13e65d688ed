"""``jsqueue status``, ``inspect``, ``purge`` and ``events``: looking at a running system."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import click

from jsqueue.cli.common import app_from, app_options, cli, run, setup_logging, table, when
from jsqueue.services.events import describe, subject_filter
from jsqueue.services.status import (
    QueueStatus,
    ServerStatus,
    locate_job,
    purge_queue,
    queue_status,
    revoke_job,
    server_status,
    workers,
)


@cli.command()
@app_options
@click.option(
    "--monitor-url",
    envvar="JSQUEUE_MONITOR_URL",
    default=None,
    help="The server's monitoring URL (e.g. http://127.0.0.1:8222), for cluster size and "
    "fsync policy. [env: JSQUEUE_MONITOR_URL]",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def status(
    app_spec: str | None, url: str | None, log_level: str, monitor_url: str | None, as_json: bool
) -> None:
    """Per queue: jobs ready, running, retrying (a short wait unacked, a long one on a server
    schedule), scheduled and dead-lettered, the workers, the oldest ready job's age and whether
    it is PAUSED; then the server: version, cluster size, replicas, fsync."""
    setup_logging(log_level)
    app = app_from(app_spec, url)

    async def main() -> tuple[list[QueueStatus], ServerStatus]:
        async with app:
            return await queue_status(app), await server_status(app, monitor_url)

    queues, server = run(main())
    if as_json:
        doc = {"queues": [q.to_dict() for q in queues], "server": server.to_dict()}
        click.echo(json.dumps(doc, indent=2))
        return
    rows = [
        (
            q.queue,
            str(q.ready),
            str(q.running),
            str(q.retrying),
            str(q.scheduled),
            str(q.dead),
            str(q.workers),
            "-" if q.oldest_ready_age is None else f"{q.oldest_ready_age:.1f}s",
            "PAUSED" if q.paused else "active",
        )
        for q in queues
    ]
    header = (
        "QUEUE",
        "READY",
        "RUNNING",
        "RETRYING",
        "SCHEDULED",
        "DEAD",
        "WORKERS",
        "OLDEST",
        "STATE",
    )
    table(header, rows)
    size = "unknown" if server.cluster_size is None else str(server.cluster_size)
    click.echo(
        f"\nNATS {server.version} at {server.url}: cluster size {size}, stream replicas "
        f"{server.replicas}, fsync {server.sync}"
        + ("" if monitor_url else " (pass --monitor-url to read them)")
    )
    if server.warning:
        click.secho(f"warning: {server.warning}", fg="yellow", err=True)


@cli.group()
def inspect() -> None:
    """Look at workers and at one job."""


@inspect.command("workers")
@app_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect_workers(app_spec: str | None, url: str | None, log_level: str, as_json: bool) -> None:
    """Live workers: id, host, pid, queues, pool, concurrency, running jobs, counts, uptime;
    then each process-pool child (pid, job, resident memory) and each running job."""
    setup_logging(log_level)
    app = app_from(app_spec, url)

    async def main() -> list[dict[str, Any]]:
        async with app:
            return await workers(app)

    records = run(main())
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    if not records:
        click.echo("no live workers")
        return
    now = time.time()
    rows = [
        (
            str(r["id"]),
            f"{r['hostname']}:{r['pid']}",
            ",".join(r["queues"]),
            str(r.get("pool", "thread")),
            f"{len(r['running'])}/{r['concurrency']}",
            str(r["processed"]),
            str(r["failed"]),
            str(r["retried"]),
            f"{now - r['started']:.0f}s",
            f"jsqueue {r['versions'].get('jsqueue')}",
        )
        for r in records
    ]
    header = (
        *("WORKER", "HOST:PID", "QUEUES", "POOL", "RUNNING"),
        *("DONE", "FAILED", "RETRIED", "UP", ""),
    )
    table(header, rows)
    for r in records:
        for child in r.get("children", []):
            rss = "?" if child.get("rss_mb") is None else f"{child['rss_mb']:.0f} MB"
            job = child.get("job") or "idle"
            click.echo(f"  {r['id']} child {child['pid']}: {job}, {rss}, {child['jobs']} jobs")
        for job in r["running"]:
            stuck = " (stuck past its time limit)" if job.get("stuck") else ""
            where = f" in a {job['where']}" if job.get("where") in ("thread", "process") else ""
            since = when(job["started"])
            click.echo(f"  {r['id']} runs {job['task']}[{job['id']}]{where} since {since}{stuck}")


@inspect.command("job")
@app_options
@click.argument("job_id")
def inspect_job(app_spec: str | None, url: str | None, log_level: str, job_id: str) -> None:
    """Where a job is and what is known of it: ready, running (on which worker), delayed
    until, dead-lettered (with its error), or done (with its result)."""
    setup_logging(log_level)
    app = app_from(app_spec, url)

    async def main() -> dict[str, Any]:
        async with app:
            return await locate_job(app, job_id)

    click.echo(json.dumps(run(main()), indent=2, default=str))


@cli.command()
@app_options
@click.argument("job_id")
@click.option(
    "--terminate",
    is_flag=True,
    help="Also stop the job if it runs now: its process-pool child is killed, or its coroutine "
    "cancelled (a def task in the thread pool cannot be stopped).",
)
def revoke(
    app_spec: str | None, url: str | None, log_level: str, job_id: str, terminate: bool
) -> None:
    """Make sure JOB_ID never runs (or, with --terminate, stops running); its state becomes
    REVOKED. An unknown or finished job is an error and changes nothing."""
    setup_logging(log_level)
    app = app_from(app_spec, url)

    async def main() -> str:
        async with app:
            return await revoke_job(app, job_id, terminate=terminate)

    click.echo(run(main()))


@cli.command()
@app_options
@click.argument("queue")
@click.option("--scheduled", is_flag=True, help="Also remove the queue's delayed jobs.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(
    app_spec: str | None, url: str | None, log_level: str, queue: str, scheduled: bool, yes: bool
) -> None:
    """Remove every job waiting in QUEUE (they will never run)."""
    setup_logging(log_level)
    app = app_from(app_spec, url)
    what = f"every job waiting in queue {queue}" + (" and its delayed jobs" if scheduled else "")
    if not yes and not click.confirm(f"Remove {what}?", default=False):
        raise click.ClickException("nothing removed")

    async def main() -> int:
        async with app:
            return await purge_queue(app, queue, scheduled)

    click.echo(f"removed {run(main())} job(s) from queue {queue}")


@cli.command()
@app_options
@click.option("-Q", "--queue", default=None, help="Only this queue's events.")
@click.option("--task", default=None, help="Only this task's events.")
@click.option("--json", "as_json", is_flag=True, help="Print each event as a JSON line.")
def events(
    app_spec: str | None,
    url: str | None,
    log_level: str,
    queue: str | None,
    task: str | None,
    as_json: bool,
) -> None:
    """Tail job events (enqueued, started, retried, succeeded, failed, dead-lettered, ...) as
    they happen. Workers publish them when run with --events (or the app has events=True)."""
    setup_logging(log_level)
    app = app_from(app_spec, url)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with app:
            broker = await app.broker()

            async def show(subject: str, data: bytes) -> None:
                doc = json.loads(data)
                if task is None or doc.get("task") == task:
                    click.echo(json.dumps(doc) if as_json else describe(doc))

            unsubscribe = await broker.subscribe_core(
                subject_filter(app.settings.events_subject, queue), show
            )
            await broker.flush()
            click.echo(f"listening for events on {broker.url} (Ctrl-C stops)", err=True)
            await stop.wait()
            await unsubscribe()

    run(main())

"""``jsqueue queue``: pause, resume and list paused queues."""

from __future__ import annotations

import json
from typing import Any

import click

from jsqueue.cli.common import app_from, app_options, cli, run, setup_logging, table, when
from jsqueue.services.queues import pause_queue, paused_queues, resume_queue


@cli.group()
def queue() -> None:
    """Pause and resume queues: workers stop starting a paused queue's jobs, which keep
    arriving and wait, and start them again on resume."""


@queue.command("pause")
@app_options
@click.argument("name")
def pause(app_spec: str | None, url: str | None, log_level: str, name: str) -> None:
    """Pause queue NAME: within a second no worker starts another of its jobs (those running
    finish). Jobs sent meanwhile wait in the queue; nothing is lost. Workers started later
    stay paused until `jsqueue queue resume`."""
    setup_logging(log_level)
    app = app_from(app_spec, url)

    async def main() -> dict[str, Any]:
        async with app:
            return await pause_queue(app, name)

    note = run(main())
    click.echo(f"queue {name} paused (since {when(float(note.get('at', 0)))})")


@queue.command("resume")
@app_options
@click.argument("name")
def resume(app_spec: str | None, url: str | None, log_level: str, name: str) -> None:
    """Resume queue NAME: workers start its jobs again, those that waited first."""
    setup_logging(log_level)
    app = app_from(app_spec, url)

    async def main() -> bool:
        async with app:
            return await resume_queue(app, name)

    was = run(main())
    click.echo(f"queue {name} resumed" if was else f"queue {name} was not paused")


@queue.command("list")
@app_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_paused(app_spec: str | None, url: str | None, log_level: str, as_json: bool) -> None:
    """The paused queues, since when and paused by whom (`jsqueue status` shows every queue)."""
    setup_logging(log_level)
    app = app_from(app_spec, url)

    async def main() -> dict[str, dict[str, Any]]:
        async with app:
            return await paused_queues(app)

    paused = run(main())
    if as_json:
        click.echo(json.dumps(paused, indent=2))
        return
    if not paused:
        click.echo("no queue is paused")
        return
    rows = [
        (name, when(float(n.get("at", 0))), str(n.get("by", "?"))) for name, n in paused.items()
    ]
    table(("QUEUE", "PAUSED SINCE", "BY"), sorted(rows))

"""``jsqueue dlq``: list, show, replay and purge dead letters."""

from __future__ import annotations

import functools
import json
from typing import Any

import click

from jsqueue.cli.common import (
    app_options,
    cli,
    progress_file,
    setup_logging,
    table,
    when,
    with_broker,
)
from jsqueue.errors import JsqueueError
from jsqueue.services import dlq as dead_letters


@cli.group()
def dlq() -> None:
    """Dead letters: jobs that can never succeed, kept with why."""


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
    setup_logging(log_level)
    letters = with_broker(
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
            when(letter.time),
        )
        for letter in letters
    ]
    table(("JOB ID", "TASK", "QUEUE", "REASON", "ATTEMPTS", "TIME"), rows)
    click.echo(f"{len(letters)} dead letter(s)")


@dlq.command("show")
@app_options
@click.argument("job_id")
def dlq_show(app_spec: str | None, url: str | None, log_level: str, job_id: str) -> None:
    """Show one dead letter in full: the job, the error and its traceback."""
    setup_logging(log_level)
    letter = with_broker(app_spec, url, lambda broker: dead_letters.find(broker, job_id))
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
    setup_logging(log_level)
    if sum(bool(x) for x in (job_id, replay_all, task)) != 1:
        raise click.UsageError("give one of: JOB_ID, --all, --task NAME")

    async def replay(broker: Any) -> tuple[list[str], list[str]]:
        if job_id:
            letter = await dead_letters.find(broker, job_id)
            if letter is None:
                raise JsqueueError(f"no dead letter for job {job_id}")
            letters = [letter]
        else:
            letters = await dead_letters.list_letters(broker, task=task)
        new_ids, problems = [], []
        with click.progressbar(letters, label="replaying", file=progress_file()) as bar:
            for letter in bar:
                try:
                    new_ids.append(await dead_letters.replay(broker, letter))
                except JsqueueError as exc:
                    if job_id:
                        raise
                    problems.append(str(exc))  # one bad letter does not stop the rest
        return new_ids, problems

    new_ids, problems = with_broker(app_spec, url, replay)
    for new_id in new_ids if job_id else []:
        click.echo(f"replayed {job_id} as {new_id}")
    click.echo(f"replayed {len(new_ids)} job(s)")
    if problems:
        for problem in problems:
            click.echo(problem, err=True)
        raise click.ClickException(f"{len(problems)} dead letter(s) not replayed (kept)")


@dlq.command("purge")
@app_options
@click.option("-Q", "--queue", default=None, help="Only this queue's dead letters.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(
    app_spec: str | None, url: str | None, log_level: str, queue: str | None, yes: bool
) -> None:
    """Remove dead letters for good."""
    setup_logging(log_level)
    what = f"the dead letters of queue {queue}" if queue else "every dead letter"
    if not yes and not click.confirm(f"Remove {what}?", default=False):
        raise click.ClickException("nothing removed")
    removed = with_broker(app_spec, url, lambda broker: dead_letters.purge(broker, queue))
    click.echo(f"removed {removed} dead letter(s)")

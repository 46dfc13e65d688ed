"""``jsqueue dashboard``: the web page (the ``dashboard`` extra, imported only when run)."""

from __future__ import annotations

import click

from jsqueue.cli.common import app_from, app_options, cli, run, setup_logging
from jsqueue.errors import JsqueueError

MISSING = 'the dashboard needs its extra: pip install "jsqueue[dashboard]"'


@cli.command()
@app_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on.")
@click.option("--port", type=click.IntRange(0, 65535), default=5555, show_default=True)
@click.option(
    "--auth",
    envvar="JSQUEUE_DASHBOARD_AUTH",
    metavar="USER:PASSWORD",
    help="Ask for this user and password (basic auth). [env: JSQUEUE_DASHBOARD_AUTH]",
)
@click.option(
    "--token",
    envvar="JSQUEUE_DASHBOARD_TOKEN",
    help="Ask for this token: API clients send `Authorization: Bearer TOKEN`, browsers log in "
    "once (a cookie keeps them in). [env: JSQUEUE_DASHBOARD_TOKEN]",
)
@click.option("--read-only", is_flag=True, help="Show everything, change nothing: no actions.")
@click.option(
    "--monitor-url",
    envvar="JSQUEUE_MONITOR_URL",
    default=None,
    help="The server's monitoring URL, for cluster size and fsync policy (as `status`).",
)
def dashboard(
    app_spec: str | None,
    url: str | None,
    log_level: str,
    host: str,
    port: int,
    auth: str | None,
    token: str | None,
    read_only: bool,
    monitor_url: str | None,
) -> None:
    """Serve a web dashboard: queues (pause, resume, purge), workers, jobs (revoke), dead letters
    (replay, purge), live charts, and a JSON API under /api. Binds 127.0.0.1 unless told;
    another address needs --auth or --token."""
    setup_logging(log_level)
    try:
        from jsqueue.dashboard import Policy, serve
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] in ("starlette", "uvicorn", "jinja2"):
            raise click.ClickException(MISSING) from None
        raise
    try:
        policy = Policy(auth=auth, token=token, read_only=read_only, host=host)
        policy.check_bind()
    except JsqueueError as exc:
        raise click.ClickException(str(exc)) from None
    app = app_from(app_spec, url)
    run(serve(app, policy, port=port, monitor_url=monitor_url, log_level=log_level))

"""The dashboard's Starlette app and the uvicorn server that runs it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware

from jsqueue.app import App
from jsqueue.dashboard import api, pages
from jsqueue.dashboard.monitor import Monitor
from jsqueue.dashboard.security import Guard, Policy


def create_app(
    app: App,
    policy: Policy | None = None,
    *,
    monitor_url: str | None = None,
    every: float = 1.0,
) -> Starlette:
    """The dashboard of ``app`` as an ASGI app; it connects on startup and samples the system
    every ``every`` seconds while it runs."""
    rules = policy or Policy()
    watcher = Monitor(app, monitor_url=monitor_url, every=every)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with app:
            await watcher.start()
            try:
                yield
            finally:
                await watcher.stop()

    web = Starlette(
        routes=[*api.routes(), *pages.routes()],
        middleware=[Middleware(Guard, policy=rules)],
        lifespan=lifespan,
    )
    web.state.monitor = watcher
    web.state.policy = rules
    return web


def serve(
    app: App,
    policy: Policy,
    *,
    port: int = 5555,
    monitor_url: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve the dashboard until interrupted; refuses a non-loopback bind without auth."""
    import uvicorn

    policy.check_bind()
    web = create_app(app, policy, monitor_url=monitor_url)
    config = uvicorn.Config(
        web,
        host=policy.host,
        port=port,
        log_level=log_level.lower(),
        timeout_graceful_shutdown=2,
        access_log=False,
    )
    uvicorn.Server(config).run()

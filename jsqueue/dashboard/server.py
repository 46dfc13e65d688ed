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
    connect: bool = True,
) -> Starlette:
    """The dashboard of ``app`` as an ASGI app; it samples the system every ``every`` seconds
    while it runs, connecting on startup (unless ``connect`` is False: the caller has)."""
    rules = policy or Policy()
    watcher = Monitor(app, monitor_url=monitor_url, every=every)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if connect:
                await stack.enter_async_context(app)
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


async def serve(
    app: App,
    policy: Policy,
    *,
    port: int = 5555,
    monitor_url: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve the dashboard until interrupted. Refuses a non-loopback bind without auth, and
    connects before it listens, so an unreachable server is one :class:`JsqueueError`."""
    import uvicorn

    policy.check_bind()
    async with app:
        await app.broker()
        web = create_app(app, policy, monitor_url=monitor_url, connect=False)
        config = uvicorn.Config(
            web,
            host=policy.host,
            port=port,
            log_level=log_level.lower(),
            timeout_graceful_shutdown=2,
            access_log=False,
        )
        await uvicorn.Server(config).serve()

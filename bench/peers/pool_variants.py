"""The systems of ``--pools``: jsqueue with ``--pool process`` or ``--pool thread``, and Celery's
prefork pool, each with two slots. They follow :class:`Peer`, so the shared scenarios (fill,
latency) drive them; :attr:`work` says which task ``send`` enqueues: ``"cpu"`` (about 20 ms of
pure Python, sized by :attr:`spin`) or ``"noop"``."""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

from bench.peers.base import Peer, python_m
from bench.servers import AMQP_URL, nats_url, unreachable

SLOTS = 2


class PoolPeer(Peer):
    """A peer whose task (``work``) and job size (``spin``) the harness sets per measurement."""

    work: str = "noop"
    spin: int = 1

    def args(self, i: int) -> tuple[int, ...]:
        return (i, self.spin) if self.work == "cpu" else (i,)


class JsqueuePool(PoolPeer):
    """``jsqueue worker --pool {process,thread} -c 2`` on the bundled nats-server."""

    pool: ClassVar[str]
    bulk = "`task.starmap(...)`"

    def __init__(self) -> None:
        from bench.peers import jsqueue_pools

        self.tasks = jsqueue_pools

    async def open(self) -> None:
        app = self.tasks.app
        app.configure(url=nats_url())
        await app.connect()

    async def close(self) -> None:
        broker = await self.tasks.app.broker()
        await broker.destroy_prefix()
        await self.tasks.app.close()

    def _task(self) -> Any:
        return self.tasks.cpu if self.work == "cpu" else self.tasks.noop

    async def send(self, i: int, *, results: bool = False) -> None:
        await self._task().delay(*self.args(i))

    async def send_bulk(self, ids: range, *, results: bool = False) -> None:
        await self._task().starmap([self.args(i) for i in ids])

    async def purge(self) -> None:
        app = self.tasks.app
        broker = await app.broker()
        await broker.streams.purge(app.settings.jobs_stream)

    def worker_commands(
        self, procs: int, *, results: bool = False, latency: bool = False
    ) -> list[list[str]]:
        spec = "bench.peers.jsqueue_pools:app"
        return [
            python_m(
                "jsqueue",
                "worker",
                "-A",
                spec,
                "--url",
                nats_url(),
                "--pool",
                self.pool,
                "-c",
                str(SLOTS),
                "--log-level",
                "WARNING",
            )
        ]


class JsqueueProcess(JsqueuePool):
    pool = "process"
    key = "jsqueue-process"
    title = f"jsqueue `--pool process -c {SLOTS}`"
    settings = f"`jsqueue worker --pool process -c {SLOTS}`: 2 children; acks after the task"


class JsqueueThread(JsqueuePool):
    pool = "thread"
    key = "jsqueue-thread"
    title = f"jsqueue `--pool thread -c {SLOTS}`"
    settings = f"`jsqueue worker --pool thread -c {SLOTS}`: 2 threads; acks after the task"


class CeleryPrefork(PoolPeer):
    """``celery worker --pool prefork -c 2`` on RabbitMQ, Celery's defaults otherwise."""

    key = "celery-prefork"
    title = f"Celery prefork `-c {SLOTS}` + RabbitMQ"
    settings = (
        f"`celery worker --pool prefork -c {SLOTS}`; prefetch multiplier 4, acks before the task "
        "runs (Celery defaults)"
    )

    def __init__(self) -> None:
        from bench.peers import celery_pools

        self.tasks = celery_pools

    def unavailable(self) -> str | None:
        return unreachable(AMQP_URL)

    def _task(self) -> Any:
        return self.tasks.cpu if self.work == "cpu" else self.tasks.noop

    async def send(self, i: int, *, results: bool = False) -> None:
        self._task().delay(*self.args(i))

    async def purge(self) -> None:
        with self.tasks.app.connection_for_write() as conn, contextlib.suppress(Exception):
            conn.default_channel.queue_purge(self.tasks.QUEUE)

    async def close(self) -> None:
        await self.purge()
        with self.tasks.app.connection_for_write() as conn:
            channel = conn.default_channel
            with contextlib.suppress(Exception):
                channel.queue_delete(self.tasks.QUEUE)
            with contextlib.suppress(Exception):
                channel.exchange_delete(self.tasks.QUEUE)
        self.tasks.app.close()

    def worker_commands(
        self, procs: int, *, results: bool = False, latency: bool = False
    ) -> list[list[str]]:
        return [
            python_m(
                "celery",
                "-A",
                self.tasks.__name__,
                "worker",
                "--pool",
                "prefork",
                "-c",
                str(SLOTS),
                "-Q",
                self.tasks.QUEUE,
                "--loglevel",
                "WARNING",
                "-n",
                "benchpools@%h",
            )
        ]

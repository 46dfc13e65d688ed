"""Celery 5 apps for the benchmark, on Redis or RabbitMQ; results always go to Redis.

Workers: ``celery -A bench.peers.celery_redis worker --pool solo`` (1 process) or
``--pool prefork -c 2`` (2 processes), with Celery's defaults otherwise (prefetch multiplier 4,
tasks acked when received, i.e. before they run).
"""

from __future__ import annotations

import contextlib
from typing import Any

from celery import Celery

from bench.peers.base import Peer, python_m
from bench.record import record
from bench.servers import clear_redis_db, redis_url, unreachable

QUEUE = "bench_celery"
RESULTS_QUEUE = "bench_celery_results"


def make_app(name: str, broker: str) -> tuple[Celery, Any, Any]:
    """A Celery app with a no-result task on ``QUEUE`` and a result task on ``RESULTS_QUEUE``."""
    app = Celery(name, broker=broker, backend=redis_url("celery"))
    app.conf.update(
        task_default_queue=QUEUE,
        task_routes={f"{name}.noop_result": {"queue": RESULTS_QUEUE}},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )

    @app.task(name=f"{name}.noop", ignore_result=True)  # type: ignore[untyped-decorator]
    def noop(i: int) -> None:
        record(i)

    @app.task(name=f"{name}.noop_result")  # type: ignore[untyped-decorator]
    def noop_result(i: int) -> int:
        record(i)
        return i

    return app, noop, noop_result


class CeleryPeer(Peer):
    """Shared by the Redis and RabbitMQ variants; ``module`` holds ``app``."""

    module: str
    app: Celery
    noop: Any
    noop_result: Any
    broker_url: str
    settings = (
        "solo pool for 1 process, prefork `-c 2` for 2; prefetch multiplier 4, acks before the "
        "task runs, no publisher confirms on RabbitMQ (Celery defaults)"
    )
    results = "Redis result backend"

    def unavailable(self) -> str | None:
        return unreachable(self.broker_url, redis_url("celery"))

    async def send(self, i: int, *, results: bool = False) -> None:
        (self.noop_result if results else self.noop).delay(i)

    async def purge(self) -> None:
        with self.app.connection_for_write() as conn:
            channel = conn.default_channel
            for queue in (QUEUE, RESULTS_QUEUE):
                with contextlib.suppress(Exception):
                    channel.queue_purge(queue)

    async def close(self) -> None:
        await self.purge()
        with self.app.connection_for_write() as conn:
            channel = conn.default_channel
            for queue in (QUEUE, RESULTS_QUEUE):
                with contextlib.suppress(Exception):
                    channel.queue_delete(queue)
                with contextlib.suppress(Exception):
                    channel.exchange_delete(queue)  # Celery names each queue's exchange alike
        self.app.close()
        clear_redis_db("celery")

    def worker_commands(
        self, procs: int, *, results: bool = False, latency: bool = False
    ) -> list[list[str]]:
        pool = ["--pool", "solo"] if procs == 1 else ["--pool", "prefork", "-c", str(procs)]
        return [
            python_m(
                "celery",
                "-A",
                self.module,
                "worker",
                *pool,
                "-Q",
                RESULTS_QUEUE if results else QUEUE,
                "--loglevel",
                "WARNING",
                "-n",
                f"bench{procs}@%h",
            )
        ]

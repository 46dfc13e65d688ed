"""Celery's prefork pool on RabbitMQ (its fastest broker here), for ``--pools``: the same two
``def`` tasks as :mod:`bench.peers.jsqueue_pools`. Workers: ``-A bench.peers.celery_pools``."""

from __future__ import annotations

import time

from celery import Celery

from bench.record import record
from bench.servers import AMQP_URL
from bench.work import spin

QUEUE = "bench_celery_pools"

app = Celery("bench_celery_pools", broker=AMQP_URL)
app.conf.update(
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench_celery_pools.cpu", ignore_result=True)  # type: ignore[untyped-decorator]
def cpu(i: int, n: int) -> None:
    started = time.time()
    spin(n)
    record(i, started)


@app.task(name="bench_celery_pools.noop", ignore_result=True)  # type: ignore[untyped-decorator]
def noop(i: int) -> None:
    record(i)

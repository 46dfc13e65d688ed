"""Celery + RabbitMQ (results in Redis). Workers: ``-A bench.peers.celery_rabbitmq``."""

from __future__ import annotations

from bench.peers.celery_common import CeleryPeer, make_app
from bench.servers import AMQP_URL

app, noop, noop_result = make_app("bench_celery_rabbitmq", AMQP_URL)


class CeleryRabbitPeer(CeleryPeer):
    key = "celery-rabbitmq"
    title = "Celery + RabbitMQ"
    module = __name__
    broker_url = AMQP_URL

    def __init__(self) -> None:
        self.app, self.noop, self.noop_result = app, noop, noop_result

"""Celery + Redis (db 12 for broker and results). Workers: ``-A bench.peers.celery_redis``."""

from __future__ import annotations

from bench.peers.celery_common import CeleryPeer, make_app
from bench.servers import redis_url

BROKER = redis_url("celery")

app, noop, noop_result = make_app("bench_celery_redis", BROKER)


class CeleryRedisPeer(CeleryPeer):
    key = "celery-redis"
    title = "Celery + Redis"
    module = __name__
    broker_url = BROKER

    def __init__(self) -> None:
        self.app, self.noop, self.noop_result = app, noop, noop_result

"""Dramatiq + RabbitMQ, results in Redis db 14. Workers: ``dramatiq bench.peers.dramatiq_rabbitmq``.

``-p 1 -t 8`` for 1 process, ``-p 2 -t 8`` for 2: Dramatiq's own defaults otherwise (publisher
confirms off, acks after the actor ran).
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from bench.peers.base import Peer, python_m
from bench.record import record
from bench.servers import PIKA_URL, clear_redis_db, redis_url, unreachable

QUEUE = "bench_dramatiq"
RESULTS_QUEUE = "bench_dramatiq_results"
THREADS = 8

broker = RabbitmqBroker(url=PIKA_URL)
broker.add_middleware(Results(backend=RedisBackend(url=redis_url("dramatiq"))))  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE)
def noop(i: int) -> None:
    record(i)


@dramatiq.actor(queue_name=RESULTS_QUEUE, store_results=True)
def noop_result(i: int) -> int:
    record(i)
    return i


class DramatiqPeer(Peer):
    key = "dramatiq"
    title = "Dramatiq + RabbitMQ"
    settings = (
        f"`-p 1 -t {THREADS}` and `-p 2 -t {THREADS}` (sync actors in threads); publisher "
        "confirms off and acks after the actor (Dramatiq defaults)"
    )
    results = "Redis results backend (`Results` middleware)"

    def unavailable(self) -> str | None:
        return unreachable(PIKA_URL, redis_url("dramatiq"))

    async def open(self) -> None:
        for queue in (QUEUE, RESULTS_QUEUE):
            broker.declare_queue(queue)

    async def close(self) -> None:
        await self.purge()
        channel = broker.channel
        for queue in (QUEUE, RESULTS_QUEUE):
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                channel.queue_delete(name)
        broker.close()
        clear_redis_db("dramatiq")  # results: hashed keys, in the benchmark's own db

    async def send(self, i: int, *, results: bool = False) -> None:
        (noop_result if results else noop).send(i)

    async def purge(self) -> None:
        for queue in (QUEUE, RESULTS_QUEUE):
            broker.flush(queue)

    def worker_commands(
        self, procs: int, *, results: bool = False, latency: bool = False
    ) -> list[list[str]]:
        queue = RESULTS_QUEUE if results else QUEUE
        return [
            python_m(
                "dramatiq",
                __name__,
                "-p",
                str(procs),
                "-t",
                str(THREADS),
                "-Q",
                queue,
                "--skip-logging",
            )
        ]

"""taskiq + taskiq-nats on the bundled nats-server (JetStream, pull consumer).

Workers: ``taskiq worker bench.peers.taskiq_nats:broker`` (``:broker_results`` for the run with
stored results; taskiq sets the result backend per broker). The brokers read the server URL from
``$BENCH_NATS_URL`` at import, which the harness sets before it imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from nats.js.errors import NotFoundError
from taskiq_nats import NATSObjectStoreResultBackend, PullBasedJetStreamBroker

from bench.peers.base import Peer, python_m
from bench.record import record
from bench.servers import NATS_ENV

MAX_ASYNC_TASKS = 64
BULK_WINDOW = 1000  # concurrent kiq() calls in the bulk fill
URL = os.environ.get(NATS_ENV, "")

# A fetch without a timeout blocks until a job comes, and the worker cannot shut down meanwhile.
FETCH_TIMEOUT = 1.0

broker = PullBasedJetStreamBroker(
    URL,
    subject="bench.taskiq",
    stream_name="bench_taskiq",
    durable="bench_taskiq",
    pull_consume_timeout=FETCH_TIMEOUT,
)
broker_results = PullBasedJetStreamBroker(
    URL,
    subject="bench.taskiq_r",
    stream_name="bench_taskiq_r",
    durable="bench_taskiq_r",
    pull_consume_timeout=FETCH_TIMEOUT,
).with_result_backend(NATSObjectStoreResultBackend(URL, bucket_name="bench_taskiq_results"))


@broker.task
async def noop(i: int) -> None:
    record(i)


@broker_results.task
async def noop_result(i: int) -> int:
    record(i)
    return i


class TaskiqPeer(Peer):
    key = "taskiq"
    title = "taskiq + taskiq-nats (JetStream)"
    settings = (
        f"`PullBasedJetStreamBroker`: taskiq-nats defaults (fetch batch 1, limits-retention "
        f"stream) but a {FETCH_TIMEOUT:.0f} s fetch timeout (with none, a worker that got jobs "
        f"often hangs on SIGTERM); `taskiq worker --workers N --max-async-tasks "
        f"{MAX_ASYNC_TASKS}`; ack when the result is saved (taskiq default)"
    )
    bulk = f"`asyncio.gather` of `kiq` calls, {BULK_WINDOW} at a time (taskiq has no bulk API)"
    results = "NATS object store (`NATSObjectStoreResultBackend`)"

    def unavailable(self) -> str | None:
        if not URL:
            return f"${NATS_ENV} was not set when the module was imported"
        return None

    async def open(self) -> None:
        await broker.startup()
        await broker_results.startup()

    async def close(self) -> None:
        for b in (broker, broker_results):
            with contextlib.suppress(NotFoundError):
                await b.js.delete_stream(b.stream_name)
        with contextlib.suppress(NotFoundError):
            await broker.js.delete_object_store("bench_taskiq_results")
        await broker.shutdown()
        await broker_results.shutdown()

    async def send(self, i: int, *, results: bool = False) -> None:
        await (noop_result if results else noop).kiq(i)

    async def send_bulk(self, ids: range, *, results: bool = False) -> None:
        task = noop_result if results else noop
        for lo in range(ids.start, ids.stop, BULK_WINDOW):
            window = range(lo, min(lo + BULK_WINDOW, ids.stop))
            await asyncio.gather(*(task.kiq(i) for i in window))

    async def purge(self) -> None:
        for b in (broker, broker_results):
            await b.js.purge_stream(b.stream_name)

    def worker_commands(
        self, procs: int, *, results: bool = False, latency: bool = False
    ) -> list[list[str]]:
        target = f"{__name__}:{'broker_results' if results else 'broker'}"
        return [
            python_m(
                "taskiq",
                "worker",
                target,
                "--workers",
                str(procs),
                "--max-async-tasks",
                str(MAX_ASYNC_TASKS),
                "--log-level",
                "WARNING",
            )
        ]

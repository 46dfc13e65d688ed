"""jsqueue on the bundled nats-server. Workers: ``jsqueue worker -A bench.peers.jsqueue_nats:app``.

The prefix is fixed here; the URL comes from ``--url`` (workers) and ``app.configure`` (harness).
"""

from __future__ import annotations

from bench.peers.base import Peer, python_m
from bench.record import record
from bench.servers import nats_url
from jsqueue import App
from jsqueue.wire.broker import Broker

CONCURRENCY = 64

app = App("bench", prefix="bench")


@app.task(ignore_result=True)
async def noop(i: int) -> None:
    record(i)


@app.task
async def noop_result(i: int) -> int:
    record(i)
    return i


class JsqueuePeer(Peer):
    key = "jsqueue"
    title = "jsqueue + NATS JetStream"
    settings = (
        f"`jsqueue worker -c {CONCURRENCY}` per process (async tasks); 2 procs = 2 workers; "
        "acks after the task; JSON"
    )
    bulk = "`task.starmap(...)` (pipelined publishes, one call)"
    results = "KV bucket on the same server"

    async def open(self) -> None:
        app.configure(url=nats_url())
        await app.connect()

    async def _broker(self) -> Broker:
        return await app.broker()

    async def close(self) -> None:
        broker = await self._broker()
        await broker.destroy_prefix()
        await app.close()

    async def send(self, i: int, *, results: bool = False) -> None:
        await (noop_result if results else noop).delay(i)

    async def send_bulk(self, ids: range, *, results: bool = False) -> None:
        await (noop_result if results else noop).starmap([(i,) for i in ids])

    async def describe(self) -> str:
        broker = await self._broker()
        stream = await broker.streams.state(app.settings.jobs_stream)
        info = await broker.streams.consumer(app.settings.default_queue)
        if info is None:
            return f"stream: {stream.messages} messages; no consumer"
        return (
            f"stream: {stream.messages} messages; consumer: {info.pending} pending, "
            f"{info.ack_pending} unacked, {info.waiting} waiting pulls, "
            f"{info.redelivered} redelivered"
        )

    async def purge(self) -> None:
        broker = await self._broker()
        await broker.streams.purge(app.settings.jobs_stream)

    def worker_commands(
        self, procs: int, *, results: bool = False, latency: bool = False
    ) -> list[list[str]]:
        command = python_m(
            "jsqueue",
            "worker",
            "-A",
            f"{__name__}:app",
            "--url",
            nats_url(),
            "-c",
            str(CONCURRENCY),
            "--log-level",
            "WARNING",
        )
        return [command] * procs

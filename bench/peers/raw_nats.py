"""The ceiling: nats-py JetStream with no task queue on top, on the bundled nats-server.

Jobs are the id as ASCII in a work-queue stream; the worker (:mod:`bench.peers.raw_worker`)
fetches, records and acks serially.
"""

from __future__ import annotations

import asyncio
import contextlib

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, RetentionPolicy, StreamConfig
from nats.js.errors import NotFoundError

from bench.peers.base import Peer, python_m
from bench.peers.raw_worker import DURABLE, STREAM, SUBJECT
from bench.servers import nats_url

DRAIN_BATCH = 256


class RawNatsPeer(Peer):
    key = "raw"
    title = "raw nats-py JetStream (ceiling)"
    settings = (
        f"serial `fetch({DRAIN_BATCH})` + `ack()` loop per process for drains, `fetch(1)` for "
        "latency (a larger batch waits for the batch to fill); work-queue stream; no results"
    )
    bulk = "`js.publish_async` for each job, then await every ack"

    def __init__(self) -> None:
        self.nc: Client | None = None
        self._js: JetStreamContext | None = None

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "not open"
        return self._js

    async def open(self) -> None:
        self.nc = await nats.connect(nats_url())
        self._js = self.nc.jetstream()
        await self.js.add_stream(
            StreamConfig(name=STREAM, subjects=[SUBJECT], retention=RetentionPolicy.WORK_QUEUE)
        )
        await self.js.add_consumer(STREAM, ConsumerConfig(durable_name=DURABLE, ack_wait=30))

    async def close(self) -> None:
        if self.nc is None:
            return
        with contextlib.suppress(NotFoundError):
            await self.js.delete_stream(STREAM)
        await self.nc.close()

    async def send(self, i: int, *, results: bool = False) -> None:
        await self.js.publish(SUBJECT, str(i).encode())

    async def send_bulk(self, ids: range, *, results: bool = False) -> None:
        futures = [await self.js.publish_async(SUBJECT, str(i).encode()) for i in ids]
        await asyncio.gather(*futures)

    async def purge(self) -> None:
        await self.js.purge_stream(STREAM)

    def worker_commands(
        self, procs: int, *, results: bool = False, latency: bool = False
    ) -> list[list[str]]:
        # An idle fetch(256) holds a lone job until its batch fills or its timeout passes.
        batch = 1 if latency else DRAIN_BATCH
        command = python_m("bench.peers.raw_worker", "--url", nats_url(), "--batch", str(batch))
        return [command] * procs

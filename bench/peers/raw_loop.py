"""The ceiling for a worker: a hand-made pull loop on raw nats-py (see
:mod:`bench.peers.raw_loop_worker`), beside the ``fetch()`` loop of :mod:`bench.peers.raw_nats`.

Jobs are small JSON envelopes (``{"id", "task", "args"}``); the producer sends each with a
``Nats-Msg-Id`` header, as jsqueue does, so that its serial ``js.publish`` loop is the like of
``delay()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, RetentionPolicy, StreamConfig
from nats.js.errors import NotFoundError

from bench.peers.base import Peer, python_m
from bench.peers.raw_loop_worker import DURABLE, STREAM, SUBJECT
from bench.servers import nats_url

WINDOW = 256


class RawLoopPeer(Peer):
    key = "raw-loop"
    title = "raw nats-py, hand-made pull loop (ceiling)"
    settings = (
        f"callback subscription, `CONSUMER.MSG.NEXT` requests keeping {WINDOW} messages "
        "requested (topped up at half), JSON decoded and a no-op dispatched inline, `+ACK` "
        "published to the reply subject; serial `js.publish` with a `Nats-Msg-Id` header; "
        "work-queue stream; no results"
    )
    bulk = "`js.publish_async` (with `Nats-Msg-Id`) for each job, then await every ack"

    def __init__(self) -> None:
        self.nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._ids = itertools.count()
        self._nonce = os.urandom(6).hex()

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

    def _job(self, i: int) -> tuple[bytes, dict[str, str]]:
        job_id = f"{self._nonce}-{next(self._ids)}"
        body = json.dumps({"id": job_id, "task": "noop", "args": [i]}).encode()
        return body, {"Nats-Msg-Id": job_id}

    async def send(self, i: int, *, results: bool = False) -> None:
        body, headers = self._job(i)
        await self.js.publish(SUBJECT, body, headers=headers)

    async def send_bulk(self, ids: range, *, results: bool = False) -> None:
        futures = []
        for i in ids:
            body, headers = self._job(i)
            futures.append(await self.js.publish_async(SUBJECT, body, headers=headers))
        await asyncio.gather(*futures)

    async def purge(self) -> None:
        await self.js.purge_stream(STREAM)

    def worker_commands(
        self, procs: int, *, results: bool = False, latency: bool = False
    ) -> list[list[str]]:
        command = python_m(
            "bench.peers.raw_loop_worker", "--url", nats_url(), "--window", str(WINDOW)
        )
        return [command] * procs

"""Scenario 12: a producer and a worker with only what the README says each role needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from jsqueue import App, AsyncResult, JobState, JsqueueError, PublishError
from jsqueue.config import BUCKETS
from jsqueue.services import dlq
from jsqueue.testing import burst
from jsqueue.wire.server import NatsServer

pytestmark = pytest.mark.slow


def producer_permissions(
    prefix: str, results: bool, objects: bool = False, unique: bool = False
) -> str:
    """The producer role as the README gives it (enqueue; optionally read results, send and
    read values over max_payload, send unique jobs)."""
    publish = [f"{prefix}.q.>", f"{prefix}.sched.>", "$JS.API.INFO"]
    if objects:
        store = f"OBJ_{prefix}_objects"
        publish += [
            f"$O.{prefix}_objects.>",
            "$JS.API.STREAM.NAMES",
            f"$JS.API.STREAM.INFO.{store}",
            f"$JS.API.STREAM.MSG.GET.{store}",
            f"$JS.API.DIRECT.GET.{store}.>",
            f"$JS.API.STREAM.PURGE.{store}",
            f"$JS.API.CONSUMER.CREATE.{store}",
            f"$JS.API.CONSUMER.CREATE.{store}.>",
            f"$JS.API.CONSUMER.DELETE.{store}.>",
        ]
    if unique:
        bucket = f"KV_{prefix}_limits"
        publish += [
            f"$KV.{prefix}_limits.>",
            f"$JS.API.STREAM.INFO.{bucket}",
            f"$JS.API.DIRECT.GET.{bucket}.>",
            f"$JS.API.STREAM.MSG.GET.{bucket}",
        ]
    if results:
        bucket = f"KV_{prefix}_results"
        publish += [
            f"$JS.API.STREAM.INFO.{bucket}",
            f"$JS.API.CONSUMER.CREATE.{bucket}",
            f"$JS.API.CONSUMER.CREATE.{bucket}.>",
            f"$JS.API.CONSUMER.INFO.{bucket}.>",
            f"$JS.API.CONSUMER.DELETE.{bucket}.>",
            f"$JS.API.DIRECT.GET.{bucket}.>",
            f"$JS.API.STREAM.MSG.GET.{bucket}",
            "$JS.FC.>",
        ]
    allow = ", ".join(f'"{s}"' for s in publish)
    subscribe = '"_INBOX.>"' + (f', "{prefix}.notify.>"' if results else "")
    return (
        f"permissions: {{ publish: {{ allow: [{allow}] }}, subscribe: {{ allow: [{subscribe}] }} }}"
    )


def worker_permissions(prefix: str) -> str:
    """The worker / beat / CLI role as the README gives it."""
    publish = [
        f"{prefix}.>",
        *(f"$KV.{prefix}_{bucket}.>" for bucket in BUCKETS),
        f"$O.{prefix}_objects.>",
        "$JS.API.>",
        f"$JS.ACK.{prefix.upper()}_JOBS.>",
        "$JS.FC.>",
    ]
    allow = ", ".join(f'"{s}"' for s in publish)
    subscribe = f'"_INBOX.>", "{prefix}.events.>"'
    return (
        f"permissions: {{ publish: {{ allow: [{allow}] }}, subscribe: {{ allow: [{subscribe}] }} }}"
    )


async def test_12_a_producer_with_minimal_permissions(tmp_path: Path, jsq_prefix: str) -> None:
    config = tmp_path / "nats.conf"
    # may enqueue to the default queue only
    narrow = (
        f'permissions: {{ publish: {{ allow: ["{jsq_prefix}.q.default", "$JS.API.INFO"] }}, '
        'subscribe: { allow: ["_INBOX.>"] } }'
    )
    config.write_text(
        f"""
        authorization {{
          users = [
            {{ user: admin, password: admin }}
            {{ user: producer, password: producer, {producer_permissions(jsq_prefix, False)} }}
            {{ user: reader, password: reader, {producer_permissions(jsq_prefix, True)} }}
            {{ user: worker, password: worker, {worker_permissions(jsq_prefix)} }}
            {{ user: narrow, password: narrow, {narrow} }}
            {{ user: big, password: big, {producer_permissions(jsq_prefix, True, objects=True)} }}
            {{ user: uniq, password: uniq, {producer_permissions(jsq_prefix, True, unique=True)} }}
          ]
        }}
        """
    )
    with NatsServer(store_dir=tmp_path / "store", config_file=config) as server:
        host = f"127.0.0.1:{server.port}"
        admin = App("admin", url=f"nats://admin:admin@{host}", prefix=jsq_prefix)
        # the worker provisions streams and buckets itself, runs jobs, stores results and
        # dead-letters, all within the README's worker row
        worker = App("w", url=f"nats://worker:worker@{host}", prefix=jsq_prefix, request_timeout=2)
        producer = App(
            "p",
            url=f"nats://producer:producer@{host}",
            prefix=jsq_prefix,
            provision=False,
            request_timeout=1,
        )
        reader = App("r", url=f"nats://reader:reader@{host}", prefix=jsq_prefix, provision=False)
        limited = App("n", url=f"nats://narrow:narrow@{host}", prefix=jsq_prefix, provision=False)
        big = App("b", url=f"nats://big:big@{host}", prefix=jsq_prefix, provision=False)
        uniq = App("u", url=f"nats://uniq:uniq@{host}", prefix=jsq_prefix, provision=False)
        apps = (admin, producer, reader, worker, limited, big, uniq)
        for app in apps:

            @app.task(name="add")
            async def add(x: int, y: int) -> int:
                return x + y

            @app.task(name="boom")
            async def boom() -> None:
                raise ValueError("no retries: dead-lettered")

            @app.task(name="double")
            async def double(blob: str) -> str:
                return blob * 2

            @app.task(name="once", unique_for=60)
            async def once(n: int) -> int:
                return n

        try:
            async with worker:
                await worker.result_backend()  # provisioned once, by the worker role
                await (await worker.broker()).objects()
                await (await worker.broker()).kv("limits")
            async with producer:
                sent = await producer.tasks["add"].delay(2, 3)
                later = await producer.tasks["add"].apply_async(args=(1, 1), countdown=3600)
                assert later.id
                with pytest.raises(
                    JsqueueError,
                    match=r"refused opening the results bucket.*[Pp]ermissions [Vv]iolation",
                ):
                    await sent.get(timeout=5)
            async with producer:
                poison = await producer.tasks["boom"].delay()
            async with worker:
                stats = await burst(worker)
                assert (stats.succeeded, stats.failed) == (1, 1), stats.summary()
                letter = await dlq.find(await worker.broker(), poison.id)
                assert letter is not None
                assert letter.error_type == "ValueError", letter
                assert await AsyncResult(worker, poison.id).state() == JobState.FAILURE
            async with limited:
                add = limited.tasks["add"]
                assert await add.delay(1, 2) is not None
                # refused by the server: said at once, naming the subject, not a time-out
                refused = rf"refused publishing to {jsq_prefix}\.q\.other.*lacks the permission"
                with pytest.raises(PublishError, match=refused):
                    await add.apply_async(args=(1, 2), queue="other")
                with pytest.raises(PublishError, match=refused):
                    await add.starmap([(1, 2)], queue="other")
            async with reader:
                assert await reader.tasks["add"].delay(4, 4) is not None
                assert await reader.tasks["add"].delay(5, 5) is not None
                assert await AsyncResult(reader, sent.id).get(timeout=5) == 5
            async with big:  # arguments and a result over max_payload: the object store
                blob = "z" * (2 * 2**20)
                doubled = await big.tasks["double"].delay(blob)
            async with uniq:
                first = await uniq.tasks["once"].delay(7)
                assert (await uniq.tasks["once"].delay(7)).id == first.id
            async with worker:
                await burst(worker)
            async with big:
                assert await AsyncResult(big, doubled.id).get(timeout=10) == blob * 2
            async with uniq:
                assert await AsyncResult(uniq, first.id).get(timeout=5) == 7
        finally:
            for app in apps:
                await app.close()
                app.close_sync()

"""Scenario 12: a producer with only what the README says a producer needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from jsqueue import App, JsqueueError
from jsqueue.server import NatsServer
from jsqueue.testing import burst

pytestmark = pytest.mark.slow


def producer_permissions(prefix: str, results: bool) -> str:
    """The producer role as the README gives it (enqueue; optionally read results)."""
    publish = [f"{prefix}.q.>", f"{prefix}.sched.>", "$JS.API.INFO"]
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
    return (
        f'permissions: {{ publish: {{ allow: [{allow}] }}, subscribe: {{ allow: ["_INBOX.>"] }} }}'
    )


async def test_12_a_producer_with_minimal_permissions(tmp_path: Path, jsq_prefix: str) -> None:
    config = tmp_path / "nats.conf"
    config.write_text(
        f"""
        authorization {{
          users = [
            {{ user: admin, password: admin }}
            {{ user: producer, password: producer, {producer_permissions(jsq_prefix, False)} }}
            {{ user: reader, password: reader, {producer_permissions(jsq_prefix, True)} }}
          ]
        }}
        """
    )
    with NatsServer(store_dir=tmp_path / "store", config_file=config) as server:
        host = f"127.0.0.1:{server.port}"
        admin = App("admin", url=f"nats://admin:admin@{host}", prefix=jsq_prefix)
        producer = App(
            "p",
            url=f"nats://producer:producer@{host}",
            prefix=jsq_prefix,
            provision=False,
            request_timeout=1,
        )
        reader = App("r", url=f"nats://reader:reader@{host}", prefix=jsq_prefix, provision=False)
        for app in (admin, producer, reader):

            @app.task(name="add")
            async def add(x: int, y: int) -> int:
                return x + y

        try:
            async with admin:
                await admin.result_backend()  # an operator (or a worker) provisioned once
            async with producer:
                sent = await producer.tasks["add"].delay(2, 3)
                later = await producer.tasks["add"].apply_async(args=(1, 1), countdown=3600)
                assert later.id
                with pytest.raises(
                    JsqueueError,
                    match=r"refused opening the results bucket.*[Pp]ermissions [Vv]iolation",
                ):
                    await sent.get(timeout=5)
            async with admin:
                await burst(admin)
            async with reader:
                assert await reader.tasks["add"].delay(4, 4) is not None
                assert await reader.tasks["add"].delay(5, 5) is not None
                from jsqueue import AsyncResult

                assert await AsyncResult(reader, sent.id).get(timeout=5) == 5
        finally:
            for app in (admin, producer, reader):
                await app.close()
                app.close_sync()

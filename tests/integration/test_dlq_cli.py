"""`jsqueue dlq list|show|replay|purge` against a real server, through the CLI."""

import json
import time

from jsqueue import App
from jsqueue.testing import burst
from jsqueue.wire.server import NatsServer

from .support import jsqueue


async def make_dead_letters(app: App) -> list[str]:
    """Two jobs that fail for good (wrong arguments at the worker) and one undecodable."""
    broker = await app.broker()
    subject = app.settings.queue_subject("default")
    for job_id in ("bad-1", "bad-2"):
        doc = {"v": 1, "id": job_id, "task": "tests.apps.faulty.quick", "args": ["not", "ok"]}
        await broker.publish(subject, json.dumps(doc).encode())
    await broker.publish(subject, b"\x00garbage")
    await burst(app)
    return ["bad-1", "bad-2"]


async def test_list_show_replay_purge(
    faulty: App, nats_server: NatsServer, jsq_prefix: str
) -> None:
    async with faulty:
        await make_dead_letters(faulty)
    url = nats_server.url

    listed = jsqueue(jsq_prefix, url, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert "bad-1" in listed.stdout
    assert "wrong_arguments: ArgumentsError" in listed.stdout
    assert "3 dead letter(s)" in listed.stdout

    as_json = json.loads(jsqueue(jsq_prefix, url, "dlq", "list", "--json").stdout)
    assert sorted(d["reason"] for d in as_json) == [
        "undecodable",
        "wrong_arguments",
        "wrong_arguments",
    ]
    assert {d["attempts"] for d in as_json} == {1}

    shown = jsqueue(jsq_prefix, url, "dlq", "show", "bad-1")
    assert shown.returncode == 0
    detail = json.loads(shown.stdout)
    assert detail["job_id"] == "bad-1"
    assert detail["error_type"] == "ArgumentsError"
    assert "Traceback" in detail["traceback"]
    assert detail["worker"]
    assert abs(detail["time"] - time.time()) < 60
    assert json.loads(detail["payload"])["args"] == ["not", "ok"]

    missing = jsqueue(jsq_prefix, url, "dlq", "show", "nope")
    assert missing.returncode == 1
    assert "no dead letter for job nope" in missing.stderr

    replayed = jsqueue(jsq_prefix, url, "dlq", "replay", "bad-1")
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed bad-1 as bad-1.r" in replayed.stdout
    async with faulty:
        broker = await faulty.broker()
        [msg] = await broker.streams.messages(
            faulty.settings.jobs_stream, faulty.settings.queue_subject("default")
        )
        doc = json.loads(msg.data)
        assert doc["replay_of"] == "bad-1"
        assert doc["id"].startswith("bad-1.r")

    every = jsqueue(jsq_prefix, url, "dlq", "replay", "--all")
    assert every.returncode == 1  # the undecodable letter cannot be replayed ...
    assert "cannot be replayed: its payload is not a job" in every.stderr
    assert "1 dead letter(s) not replayed (kept)" in every.stderr
    assert "replayed 1 job(s)" in every.stdout  # ... and does not stop bad-2's replay
    left = json.loads(jsqueue(jsq_prefix, url, "dlq", "list", "--json").stdout)
    assert [d["reason"] for d in left] == ["undecodable"]

    refused = jsqueue(jsq_prefix, url, "dlq", "purge", stdin="n\n")
    assert refused.returncode == 1
    assert "nothing removed" in refused.stderr
    purged = jsqueue(jsq_prefix, url, "dlq", "purge", "--yes")
    assert purged.returncode == 0
    assert "removed" in purged.stdout
    assert "no dead letters" in jsqueue(jsq_prefix, url, "dlq", "list").stdout


async def test_replay_by_task_replays_only_that_task(
    faulty: App, nats_server: NatsServer, jsq_prefix: str
) -> None:
    async with faulty:
        await make_dead_letters(faulty)
    out = jsqueue(jsq_prefix, nats_server.url, "dlq", "replay", "--task", "tests.apps.faulty.quick")
    assert out.returncode == 0, out.stderr
    assert "replayed 2 job(s)" in out.stdout
    assert "replaying" not in out.stderr  # no progress bar when piped
    remaining = json.loads(jsqueue(jsq_prefix, nats_server.url, "dlq", "list", "--json").stdout)
    assert [d["reason"] for d in remaining] == ["undecodable"]


def test_dlq_commands_need_an_app_and_one_target(nats_server: NatsServer, jsq_prefix: str) -> None:
    out = jsqueue(jsq_prefix, nats_server.url, "dlq", "replay")
    assert out.returncode == 2
    assert "give one of: JOB_ID, --all, --task NAME" in out.stderr

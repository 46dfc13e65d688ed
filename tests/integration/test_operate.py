"""status, inspect, purge, events and metrics against a real server, through the CLI."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from jsqueue import App, JobState
from jsqueue.services.producer import build_envelope, send
from jsqueue.services.registry import REGISTRY_TTL
from jsqueue.services.status import workers
from jsqueue.testing import Process, burst, destroy, running_worker, wait_state, wait_until
from jsqueue.wire.server import NatsServer

from .support import ROOT, free_port, jsqueue, worker_process


async def test_status_counts_every_kind_of_job(
    faulty: App, nats_server: NatsServer, jsq_prefix: str, tmp_path: Path
) -> None:
    slow, quick = faulty.tasks["tests.apps.faulty.slow"], faulty.tasks["tests.apps.faulty.quick"]
    async with faulty:
        running = await slow.delay(30, str(tmp_path))
        await quick.starmap([(i,) for i in range(3)])
        await quick.apply_async(args=(9,), countdown=3600)
        await quick.apply_async(args=(8,), queue="other")
        broker = await faulty.broker()
        await broker.publish(faulty.settings.queue_subject("other"), b"poison")
        await burst(faulty, queues=["other"])
        waiting = await faulty.tasks["tests.apps.faulty.stubborn"].delay()
        async with running_worker(faulty, queues=["stubborn"]):
            await wait_state(waiting, JobState.RETRY)  # an hour's wait: on a server schedule
        with worker_process(nats_server.url, jsq_prefix, tmp_path, "-c", "1") as worker:
            deadline = time.monotonic() + 20
            while not (tmp_path / f"{running.id}.start").exists():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            while True:  # the registry beats every 2 s: wait for the one that shows the job
                out = jsqueue(jsq_prefix, nats_server.url, "status", "--json")
                assert out.returncode == 0, out.stderr
                queues = {q["queue"]: q for q in json.loads(out.stdout)["queues"]}
                if queues["default"]["running"] == 1 or time.monotonic() > deadline:
                    break
            table = jsqueue(jsq_prefix, nats_server.url, "status")
            worker.kill()
    default = queues["default"]
    assert (default["ready"], default["running"], default["scheduled"], default["workers"]) == (
        3,
        1,
        1,
        1,
    )
    assert (default["held"], default["retrying"]) == (0, 0)  # the thread pool holds none
    assert 0 <= default["oldest_ready_age"] < 60
    assert queues["other"]["dead"] == 1
    assert (queues["stubborn"]["retrying"], queues["stubborn"]["running"]) == (1, 0)
    assert table.stdout.splitlines()[0].split() == [
        "QUEUE",
        "READY",
        "RUNNING",
        "RETRYING",
        "SCHEDULED",
        "DEAD",
        "WORKERS",
        "OLDEST",
        "STATE",
    ]
    assert "NATS 2.15.1" in table.stdout
    assert "fsync unknown (pass --monitor-url to read them)" in table.stdout


async def test_status_with_a_monitoring_url_reads_cluster_and_fsync(
    tmp_path: Path, jsq_prefix: str
) -> None:
    port = free_port()
    with NatsServer(store_dir=tmp_path / "s", extra_args=["-m", str(port)]) as server:
        out = jsqueue(
            jsq_prefix, server.url, "status", "--json", "--monitor-url", f"http://127.0.0.1:{port}"
        )
        bad = jsqueue(
            jsq_prefix, server.url, "status", "--monitor-url", f"http://127.0.0.1:{free_port()}"
        )
        app = App("x", url=server.url, prefix=jsq_prefix)
        await destroy(app)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)["server"]
    assert (doc["cluster_size"], doc["sync"], doc["replicas"], doc["warning"]) == (
        1,
        "every 120s",
        1,
        None,
    )
    assert bad.returncode == 1
    assert "cannot read the NATS monitoring endpoint" in bad.stderr


def test_unreachable_server_and_wrong_credentials_are_one_line(
    tmp_path: Path, jsq_prefix: str
) -> None:
    nowhere = f"nats://127.0.0.1:{free_port()}"
    for command in (
        ["status"],
        ["inspect", "workers"],
        ["inspect", "job", "some-id"],
        ["purge", "default", "--yes"],
        ["events"],
        ["dlq", "list"],
    ):
        out = jsqueue(jsq_prefix, nowhere, *command)
        assert out.returncode == 1, (command, out.stderr)
        assert len(out.stderr.strip().splitlines()) == 1, (command, out.stderr)
        assert "cannot reach NATS" in out.stderr
    with NatsServer(store_dir=tmp_path, extra_args=["--user", "a", "--pass", "b"]) as server:
        wrong = jsqueue(jsq_prefix, f"nats://a:nope@127.0.0.1:{server.port}", "inspect", "workers")
    assert wrong.returncode == 1
    assert len(wrong.stderr.strip().splitlines()) == 1
    assert "refused the credentials" in wrong.stderr
    assert "nope" not in wrong.stderr


async def test_commands_without_an_app_take_the_url_alone(tmp_path: Path) -> None:
    with NatsServer(store_dir=tmp_path) as server:
        app = App("producer", url=server.url)  # the default prefix, as --url alone assumes

        @app.task(name="notify")
        async def notify(who: str) -> None: ...

        async with app:
            await notify.apply_async(args=("a",), queue="mail")
            await notify.apply_async(args=("b",), queue="mail")

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "jsqueue", *args, "--url", server.url],
                capture_output=True,
                text=True,
                timeout=60,
                env={k: v for k, v in os.environ.items() if k != "JSQUEUE_APP"},
            )

        status = run("status", "--json")
        assert status.returncode == 0, status.stderr
        mail = next(q for q in json.loads(status.stdout)["queues"] if q["queue"] == "mail")
        assert mail["ready"] == 2
        purged = run("purge", "mail", "--yes")
        assert "removed 2" in purged.stdout
        worker = run("worker")
        assert worker.returncode == 2
        assert "pass -A module:app" in worker.stderr


async def test_registry_lists_a_worker_and_forgets_it(
    faulty: App, nats_server: NatsServer, jsq_prefix: str, tmp_path: Path
) -> None:
    async with faulty:
        async with running_worker(
            faulty, queues=["default", "other"], concurrency=4, worker_id="w-in-process"
        ):
            [record] = await workers(faulty)
            table = jsqueue(jsq_prefix, nats_server.url, "inspect", "workers")
        assert await workers(faulty) == []  # a clean stop removes the record
    assert record["id"] == "w-in-process"
    assert record["queues"] == ["default", "other"]
    assert record["concurrency"] == 4
    assert record["pid"] == os.getpid()
    assert set(record) >= {
        "hostname",
        "running",
        "processed",
        "failed",
        "retried",
        "started",
        "versions",
    }
    assert record["versions"]["jsqueue"]
    assert "w-in-process" in table.stdout
    assert "default,other" in table.stdout


@pytest.mark.slow
async def test_a_dead_worker_disappears_within_the_ttl(
    faulty: App, nats_server: NatsServer, jsq_prefix: str, tmp_path: Path
) -> None:
    async with faulty:
        with worker_process(nats_server.url, jsq_prefix, tmp_path, "--id", "doomed") as worker:
            deadline = time.monotonic() + 20
            while not await workers(faulty):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            worker.kill()
            killed = time.monotonic()
        while await workers(faulty):
            assert time.monotonic() - killed < REGISTRY_TTL + 3
            await asyncio.sleep(0.25)


async def test_inspect_job_says_where_it_is(
    faulty: App, nats_server: NatsServer, jsq_prefix: str, tmp_path: Path
) -> None:
    slow, quick = faulty.tasks["tests.apps.faulty.slow"], faulty.tasks["tests.apps.faulty.quick"]
    async with faulty:
        ready = await quick.delay(1)
        delayed = await quick.apply_async(args=(2,), countdown=3600)
        broker = await faulty.broker()
        bad = {"v": 1, "id": "bad-args", "task": quick.name, "args": [1, 2, 3]}
        await broker.publish(faulty.settings.queue_subject("other"), json.dumps(bad).encode())
        done = await slow.apply_async(args=(0, str(tmp_path)), queue="other")
        await burst(faulty, queues=["other"])

        def where(job_id: str) -> dict[str, object]:
            out = jsqueue(jsq_prefix, nats_server.url, "inspect", "job", job_id)
            assert out.returncode == 0, out.stderr
            return dict(json.loads(out.stdout))

        assert where(ready.id)["where"] == "ready"
        assert where(delayed.id)["where"] == "delayed"
        assert where(delayed.id)["delayed_until"] > time.time() + 3000
        dead = where("bad-args")
        assert dead["where"] == "dead-lettered"
        assert "too many positional arguments" in dead["dead_letter"]["error_message"]
        finished = where(done.id)
        assert (finished["where"], finished["state"], finished["result"]) == (
            "done",
            "SUCCESS",
            done.id,
        )
        running = await slow.delay(30, str(tmp_path))
        with worker_process(nats_server.url, jsq_prefix, tmp_path, "--id", "busy"):
            deadline = time.monotonic() + 20
            while not (tmp_path / f"{running.id}.start").exists():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            while (now_running := where(running.id))["where"] != "running":
                assert time.monotonic() < deadline  # the registry beats every 2 s
        unknown = jsqueue(jsq_prefix, nats_server.url, "inspect", "job", "no-such-job")
    assert (now_running["where"], now_running["running_on"]) == ("running", "busy")
    assert unknown.returncode == 1
    assert "job no-such-job not found" in unknown.stderr


async def test_purge_asks_counts_and_refuses_unknown_queues(
    faulty: App, nats_server: NatsServer, jsq_prefix: str
) -> None:
    quick = faulty.tasks["tests.apps.faulty.quick"]
    async with faulty:
        await quick.starmap([(i,) for i in range(5)])
        await quick.apply_async(args=(1,), countdown=3600)
    declined = jsqueue(jsq_prefix, nats_server.url, "purge", "default", stdin="n\n")
    assert declined.returncode == 1
    assert "nothing removed" in declined.stderr
    purged = jsqueue(jsq_prefix, nats_server.url, "purge", "default", "--yes")
    assert purged.returncode == 0, purged.stderr
    assert "removed 5 job(s) from queue default" in purged.stdout
    with_delayed = jsqueue(jsq_prefix, nats_server.url, "purge", "default", "--yes", "--scheduled")
    assert "removed 1 job(s)" in with_delayed.stdout
    unknown = jsqueue(jsq_prefix, nats_server.url, "purge", "nope", "--yes")
    assert unknown.returncode == 1
    assert "no queue named 'nope'" in unknown.stderr


async def test_events_tail_every_lifecycle_step(
    faulty: App, nats_server: NatsServer, jsq_prefix: str, tmp_path: Path
) -> None:
    def tail(*options: str) -> Process:
        return Process.jsqueue(
            "events",
            "-A",
            "tests.apps.faulty:app",
            "--url",
            nats_server.url,
            *options,
            env={"JSQ_TEST_PREFIX": jsq_prefix, "PYTHONUNBUFFERED": "1"},
            cwd=ROOT,
            log_dir=tmp_path,
            name="events" + "".join(options).replace(".", "_"),
        )

    tasks = faulty.tasks
    quick, flaky = tasks["tests.apps.faulty.quick"], tasks["tests.apps.faulty.flaky"]
    faulty.configure(url=nats_server.url, events=True)
    with tail("-Q", "default") as default, tail("--task", flaky.name, "--json") as flaky_only:
        for proc in (default, flaky_only):
            await wait_for_text(proc, "listening for events")
        async with faulty:
            await quick.starmap([(1,), (2,)])  # the bulk path publishes events too
            await quick.apply_async(args=(3,), queue="other")  # not for the -Q default tail
            await flaky.delay(1)  # fails, is retried once, then fails for good
            # wrong arguments, past the producer's check: dead-lettered without starting
            wrong = build_envelope(
                faulty.settings, quick.name, ("a", "b"), queue="default", serializer="json"
            )
            await send(await faulty.broker(), wrong)
            await burst(faulty)
        await wait_for_text(default, " dead_lettered ")
        await wait_for_text(default, " failed ")
        await wait_for_text(flaky_only, '"failed"')
        for proc in (default, flaky_only):
            proc.signal(signal.SIGINT)
            proc.wait(10)
    lines = [line for line in default.output().splitlines() if "[" in line]
    kinds = [line.split()[1] for line in lines]
    assert sorted(kinds) == sorted(
        ["enqueued"] * 4
        + ["started"] * 4
        + ["succeeded"] * 2
        + ["retried", "failed", "dead_lettered"]
    ), lines
    assert not any("queue=other" in line for line in lines)
    succeeded = next(line for line in lines if " succeeded " in line)
    assert "tests.apps.faulty.quick[" in succeeded
    assert "took=" in succeeded
    retried = next(line for line in lines if " retried " in line)
    assert "retry_in=0.2s" in retried
    assert "ValueError: flaky 1 failed" in retried
    dead = next(line for line in lines if " dead_lettered " in line)
    assert f"[{wrong.id}]" in dead
    assert "ArgumentsError" in dead
    docs = [json.loads(line) for line in flaky_only.output().splitlines() if line.startswith("{")]
    assert [d["kind"] for d in docs] == ["enqueued", "started", "retried", "started", "failed"]
    assert {d["task"] for d in docs} == {flaky.name}
    assert docs[2]["delay"] == 0.2
    assert docs[3]["attempt"] == 2


async def wait_for_text(proc: Process, text: str, timeout: float = 20) -> None:
    try:
        await wait_until(lambda: text in proc.output(), timeout, repr(text))
    except TimeoutError:
        raise AssertionError(f"{text!r} not in {proc.output()[-2000:]}") from None


async def test_events_off_publish_nothing(faulty: App) -> None:
    seen: list[str] = []
    quick = faulty.tasks["tests.apps.faulty.quick"]
    async with faulty:
        broker = await faulty.broker()

        async def record(subject: str, data: bytes) -> None:
            seen.append(subject)

        unsubscribe = await broker.subscribe_core(f"{faulty.settings.events_subject}.>", record)
        await quick.delay(1)
        await burst(faulty)
        await broker.flush()
        await unsubscribe()
    assert seen == []


@pytest.mark.slow
async def test_metrics_endpoint_after_jobs(
    faulty: App, nats_server: NatsServer, jsq_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    quick, slow = faulty.tasks["tests.apps.faulty.quick"], faulty.tasks["tests.apps.faulty.slow"]
    async with faulty:
        await quick.starmap([(i,) for i in range(5)])
        await slow.delay("bad", str(tmp_path))
        # wrong arguments, past the producer's check: dead-lettered without ever starting
        wrong = build_envelope(
            faulty.settings, quick.name, ("a", "b"), queue="default", serializer="json"
        )
        await send(await faulty.broker(), wrong)
        with worker_process(
            nats_server.url, jsq_prefix, tmp_path, "--metrics-port", str(port)
        ) as worker:
            deadline = time.monotonic() + 20
            text = ""
            quick_label = '{queue="default",task="tests.apps.faulty.quick"}'
            done = (
                f"jsqueue_jobs_succeeded_total{quick_label} 5.0",
                f"jsqueue_jobs_dead_lettered_total{quick_label} 1.0",
                'jsqueue_jobs_failed_total{queue="default",task="tests.apps.faulty.slow"} 1.0',
            )
            while not all(line in text for line in done):
                assert time.monotonic() < deadline, text[-2000:]
                await asyncio.sleep(0.2)
                try:
                    text = await asyncio.to_thread(
                        lambda: (
                            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
                            .read()
                            .decode()
                        )
                    )
                except OSError:
                    continue
            worker.stop()
    assert 'jsqueue_jobs_started_total{queue="default",task="tests.apps.faulty.quick"} 5.0' in text
    assert 'jsqueue_jobs_failed_total{queue="default",task="tests.apps.faulty.slow"} 1.0' in text
    assert 'jsqueue_job_duration_seconds_count{task="tests.apps.faulty.quick"} 5.0' in text
    assert 'jsqueue_jobs_running{queue="default"} 0.0' in text  # never below 0
    assert "jsqueue_queue_ready" in text


def test_metrics_port_in_use_is_one_line(nats_server: NatsServer, jsq_prefix: str) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "jsqueue",
                "worker",
                "-A",
                "tests.apps.faulty:app",
                "--url",
                nats_server.url,
                "--metrics-port",
                str(port),
            ],
            cwd=ROOT,
            env={**os.environ, "JSQ_TEST_PREFIX": jsq_prefix},
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode == 1
    assert f"metrics on port {port}" in out.stderr

"""The README's commands and tour, the examples and the Procfile system, run for real."""

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jsqueue.testing import Process
from jsqueue.wire.server import NatsServer

from .support import ROOT, free_port

README = (ROOT / "README.md").read_text()
pytestmark = pytest.mark.slow


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A server of its own: the reference app uses the default prefix."""
    with NatsServer(store_dir=tmp_path / "store") as server:
        yield server


def env_for(server: NatsServer) -> dict[str, str]:
    return {**os.environ, "JSQUEUE_URL": server.url, "PYTHONPATH": str(ROOT)}


def run_python(server: NatsServer, *args: str) -> subprocess.CompletedProcess[str]:
    """``python <args>`` against ``server``, from the repository; it must exit 0."""
    out = subprocess.run(
        [sys.executable, *args],
        env=env_for(server),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out


def wait_for_output(proc: Process, pattern: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = proc.output()
        if re.search(pattern, text):
            return text
        if proc.proc is not None and proc.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in output:\n{proc.output()[-3000:]}")


def test_readme_commands_are_what_ci_runs() -> None:
    run = re.search(r"<!-- readme:run -->\n```bash\n(.+)\n```", README)
    test = re.search(r"<!-- readme:test -->\n```bash\n(.+)\n```", README)
    assert run
    assert "honcho start" in run.group(1)
    assert '.[server]"' in run.group(1)
    assert test
    assert "pytest" in test.group(1)
    ci = subprocess.run(
        ["awk", "/<!-- readme:test -->/ { getline; getline; print; exit }", "README.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert ci.stdout.strip() == test.group(1)


def test_readme_benchmark_table_is_the_latest_run() -> None:
    latest = (ROOT / "bench" / "results" / "latest.md").read_text()
    lines = latest.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = list(itertools.takewhile(lambda line: line.startswith("|"), lines[first:]))
    shown = README.split("<!-- bench:table -->\n", 1)[1].splitlines()[: len(table)]
    assert len(table) > 3  # heading, rule and at least jsqueue and one peer
    assert shown == table, "README's benchmark table differs from bench/results/latest.md"
    assert (ROOT / "bench" / "results" / "latest.png").stat().st_size > 10_000


def test_readme_tour_runs(own_server: NatsServer) -> None:
    blocks = re.findall(r"<!-- readme:tour -->\n```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 3
    out = run_python(own_server, "-c", "\n".join(blocks))
    lines = out.stdout.splitlines()
    assert lines[:2] == ["5", "mailed ada@example.com"]
    assert lines[2] == "13 [0, 2, 4, 6, 8, 10, 12, 14, 16, 18] 90"
    assert lines[3].startswith("failed: TypeError unsupported operand")
    assert lines[4] == "34 22 1000 FAILURE"
    assert lines[5:7] == ["True", "2 6 REVOKED"]
    assert re.fullmatch(r"[0-9a-f]{28}", lines[7])


def test_batch_example(own_server: NatsServer) -> None:
    out = run_python(own_server, "-m", "examples.batch", "300")
    assert "sum of results = 89700" in out.stdout  # 2 * sum(range(300))
    assert "300 succeeded" in out.stdout


def test_canvas_example(own_server: NatsServer) -> None:
    out = run_python(own_server, "-m", "examples.canvas", "--burst")
    assert "chain (1 + 2) * 10 + 5 = 35" in out.stdout
    assert "group of squares: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]" in out.stdout
    assert "chord sum of 2i for i < 100 = 9900" in out.stdout


def test_producer_and_embedded_consumer_examples(own_server: NatsServer, tmp_path: Path) -> None:
    env = {"JSQUEUE_URL": own_server.url}
    consumer = Process(
        [sys.executable, "-m", "examples.consumer"],
        env=env,
        cwd=ROOT,
        log_dir=tmp_path,
        name="consumer",
    )
    producer = Process(
        [sys.executable, "-m", "examples.producer", "--rounds", "3", "--interval", "0.1"],
        env=env,
        cwd=ROOT,
        log_dir=tmp_path,
        name="producer",
    )
    with consumer, producer:
        assert producer.wait(60) == 0
        assert consumer.stop() == 0
    out = producer.output()
    assert "round 1: add(1, 1) = 2" in out
    assert "round 3: resize -> cat.png@300px" in out
    assert "consumer done:" in consumer.output()


def test_procfile_system_runs_end_to_end(tmp_path: Path) -> None:
    port = free_port()
    env_file = tmp_path / "test.env"
    env_file.write_text(
        f"JSQUEUE_URL=nats://127.0.0.1:{port}\nJSQUEUE_STORE_DIR={tmp_path / 'store'}\n"
    )
    # the Procfile's commands (`jsqueue ...`) come from this interpreter's environment
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    honcho = Process(
        [sys.executable, "-m", "honcho", "-e", str(env_file), "start"],
        env={"PATH": path},
        cwd=ROOT,
        log_dir=tmp_path,
        name="honcho",
    )
    with honcho:
        wait_for_output(honcho, r"round 2: add\(2, 2\) = 4", 60)
        wait_for_output(honcho, r"worker\.app\.report\[beat\.report\.\d+\] succeeded", 30)
        honcho.signal(signal.SIGTERM)
        honcho.wait(30)
        text = honcho.output()
    assert f"listening on nats://127.0.0.1:{port}" in text
    assert re.search(r"worker\.app\.add\[\w+\] succeeded", text)
    assert "worker" in text
    assert "stopping gracefully" in text
    assert "nats-server stopped" in text
    assert re.search(r"beat \S+ is the leader", text)


def test_server_command_starts_is_reused_and_stops(tmp_path: Path) -> None:
    port = str(free_port())
    scratch = tmp_path / "tmp"  # where the server's run dir goes
    scratch.mkdir()
    first = Process.jsqueue(
        *("server", "--port", port, "--store-dir", str(tmp_path / "s")),
        env={"TMPDIR": str(scratch)},
        log_dir=tmp_path,
        name="first",
    )
    second = Process.jsqueue("server", "--port", port, log_dir=tmp_path, name="second")
    with first:
        wait_for_output(first, "with JetStream listening on", 30)
        with second:
            wait_for_output(
                second, "already answers at nats://127.0.0.1:" + port + "; using it", 30
            )
            assert second.stop() == 0
        assert list(scratch.glob("jsqueue-nats-run-*"))
        assert first.stop() == 0
    assert "nats-server stopped" in first.output()
    assert list(scratch.iterdir()) == []  # the run dir went with the server
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", int(port)), timeout=1),
    ):
        pass


def test_server_command_refuses_an_unsuitable_server(tmp_path: Path) -> None:
    with NatsServer(jetstream=False) as plain:
        out = subprocess.run(
            [sys.executable, "-m", "jsqueue", "server", "--port", str(plain.port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("Error: NATS at")
    assert "has no JetStream" in out.stderr


def test_limits_example_and_its_readme_block(own_server: NatsServer) -> None:
    block = re.search(r"<!-- readme:limits -->\n```python\n(.*?)```", README, re.S)
    assert block is not None
    source = (ROOT / "examples" / "limits.py").read_text()
    for line in block.group(1).strip().splitlines():
        assert line in source, f"README's Limits block line not in examples/limits.py: {line}"
    out = run_python(own_server, "-m", "examples.limits", "--burst")
    lines = out.stdout.splitlines()
    took = float(re.fullmatch(r"21 rate-limited calls took ([\d.]+)s at 10/s", lines[0]).group(1))  # type: ignore[union-attr]
    assert 1.8 <= took < 10, lines[0]  # 21 starts 0.1 s apart: at least 2 s
    capped = float(
        re.fullmatch(r"6 capped jobs of 0.1s took ([\d.]+)s, 2 at a time", lines[1]).group(1)
    )  # type: ignore[union-attr]
    assert capped >= 0.28, lines[1]  # three rounds of two
    assert lines[2] == "same job: True digest for 7"

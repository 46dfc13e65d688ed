"""Connecting: fail fast with one line, refuse unsuitable servers, provision idempotently."""

import asyncio
import time
from pathlib import Path

import nats
import pytest
from nats.js import api as js_api

from jsqueue import App, ConnectError, ProvisionError
from jsqueue.wire.server import NatsServer

from .support import free_port


async def test_unreachable_url_fails_fast_naming_it() -> None:
    app = App("c", url=f"nats://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(ConnectError, match=r"cannot reach NATS at nats://127.0.0.1:\d+"):
        await app.connect()
    assert time.monotonic() - started < 5


async def test_wrong_credentials_fail_fast_without_the_secret(tmp_path: Path) -> None:
    with NatsServer(extra_args=["--user", "alice", "--pass", "right"], store_dir=tmp_path) as srv:
        app = App("c", url=f"nats://alice:wrong-pass@127.0.0.1:{srv.port}")
        started = time.monotonic()
        with pytest.raises(ConnectError, match="refused the credentials") as info:
            await app.connect()
        assert time.monotonic() - started < 5
        assert "wrong-pass" not in str(info.value)
        assert "alice:***@" in str(info.value)
        good = App("c", url=f"nats://alice:right@127.0.0.1:{srv.port}", prefix="cred")
        async with good:
            assert (await good.broker()).is_connected


async def test_server_without_jetstream_is_refused(tmp_path: Path) -> None:
    with (
        NatsServer(jetstream=False) as srv,
        pytest.raises(ConnectError, match=r"no JetStream.*-js"),
    ):
        await App("c", url=srv.url).connect()


@pytest.mark.skipif(not Path("/usr/sbin/nats-server").exists(), reason="no Debian nats-server")
async def test_old_server_is_refused_with_the_minimum_version(tmp_path: Path) -> None:
    # Debian's package (2.9.10) is older than the minimum; start our own copy on a free port.
    old = NatsServer(binary=Path("/usr/sbin/nats-server"), store_dir=tmp_path)
    expected = r"is version 2\.9\.\d+; jsqueue needs 2\.12\.0"
    with old as srv, pytest.raises(ConnectError, match=expected):
        await App("c", url=srv.url).connect()


async def test_unreachable_server_is_waited_for_when_asked(tmp_path: Path) -> None:
    port = free_port()
    app = App("c", url=f"nats://127.0.0.1:{port}", prefix="waited")
    server = NatsServer(port=port, store_dir=tmp_path)
    connecting = asyncio.create_task(app.connect(wait=20))
    try:
        await asyncio.sleep(0.7)  # the client is retrying meanwhile: that is the point
        assert not connecting.done()
        await asyncio.to_thread(server.start)
        await asyncio.wait_for(connecting, 20)
        assert (await app.broker()).is_connected
    finally:
        await app.close()
        server.cleanup()


async def test_provisioning_is_idempotent_and_updates_our_settings(jsq_app: App) -> None:
    async with jsq_app:
        broker = await jsq_app.broker()
        await broker.provision()
        info = await broker.streams.state(jsq_app.settings.jobs_stream)
        assert info.retention == js_api.RetentionPolicy.WORK_QUEUE.value
        assert info.allow_msg_schedules
    jsq_app.configure(duplicate_window=30.0)
    async with jsq_app:
        info = await (await jsq_app.broker()).streams.state(jsq_app.settings.jobs_stream)
        assert info.duplicate_window == 30.0


async def test_foreign_stream_with_conflicting_settings_is_named(jsq_app: App) -> None:
    name = jsq_app.settings.jobs_stream
    other = App("o", url=jsq_app.settings.url, prefix=jsq_app.settings.prefix, provision=False)
    nc = await nats.connect(str(jsq_app.settings.url))  # a stream that another tool made
    try:
        await nc.jetstream().add_stream(name=name, subjects=[f"{jsq_app.settings.prefix}.q.>"])
    finally:
        await nc.close()
    with pytest.raises(
        ProvisionError, match=rf"stream {name} exists but was not created by jsqueue"
    ):
        await jsq_app.connect()
    with pytest.raises(ProvisionError, match="retention is 'limits', jsqueue needs 'workqueue'"):
        await jsq_app.connect()
    async with other:
        await (await other.broker()).streams.delete_stream(name)


def test_importing_jsqueue_and_a_task_module_never_connects(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import socket\n"
        "def boom(*a, **k): raise SystemExit('connected at import')\n"
        "socket.socket.connect = boom\n"
        "socket.create_connection = boom\n"
        "import jsqueue, jsqueue.worker, jsqueue.cli, worker.app\n"
        "print('ok', len(worker.app.app.tasks))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok ")


def test_bundled_binary_is_the_wheel_not_the_system_one() -> None:
    import sys

    from jsqueue.wire.server import bundled_binary, server_version

    binary = bundled_binary()
    assert binary.is_relative_to(Path(sys.prefix).resolve())
    major, minor, _ = (int(x) for x in server_version(binary).split("."))
    assert (major, minor) >= (2, 12)


async def test_publish_to_a_subject_no_stream_stores_fails_with_the_subject(
    nats_server: NatsServer, jsq_prefix: str
) -> None:
    from jsqueue import PublishError

    app = App("p", url=nats_server.url, prefix=jsq_prefix, publish_timeout=0.5)
    async with app:
        broker = await app.broker()
        started = time.monotonic()
        with pytest.raises(PublishError, match=r"publish to nowhere\.at\.all within 0\.5s"):
            await broker.publish("nowhere.at.all", b"x", {"Nats-Msg-Id": "x"})
        assert time.monotonic() - started < 5
        with pytest.raises(PublishError, match=r"nowhere\.either"):
            await broker.publish_many([("nowhere.either", b"y", None)])


async def test_token_in_the_url(tmp_path: Path, jsq_prefix: str) -> None:
    with NatsServer(store_dir=tmp_path, extra_args=["--auth", "s3cr3t-token"]) as srv:
        good = App("t", url=f"nats://s3cr3t-token@127.0.0.1:{srv.port}", prefix=jsq_prefix)
        async with good:
            assert (await good.broker()).is_connected
        bad = App("t", url=f"nats://wrong-token@127.0.0.1:{srv.port}", prefix=jsq_prefix)
        with pytest.raises(ConnectError, match="refused the credentials") as info:
            await bad.connect()
        assert "wrong-token" not in str(info.value)


async def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A key and a self-signed certificate for 127.0.0.1 (also usable as its own CA)."""
    import subprocess

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    await asyncio.to_thread(
        subprocess.run,
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return key, cert


async def test_tls_with_a_ca_file(tmp_path: Path, jsq_prefix: str) -> None:
    key, cert = await self_signed(tmp_path)
    args = ["--tls", "--tlscert", str(cert), "--tlskey", str(key)]
    with NatsServer(store_dir=tmp_path / "s", extra_args=args) as srv:
        url = f"tls://127.0.0.1:{srv.port}"
        app = App("tls", url=url, prefix=jsq_prefix, tls_ca_file=str(cert))
        async with app:
            assert (await app.broker()).is_connected
        untrusted = App("tls", url=url, prefix=jsq_prefix)
        started = time.monotonic()
        with pytest.raises(ConnectError, match=r"TLS with NATS at tls://127\.0\.0\.1:\d+ failed"):
            await untrusted.connect()
        assert time.monotonic() - started < 30


async def test_tls_with_a_client_certificate(tmp_path: Path, jsq_prefix: str) -> None:
    key, cert = await self_signed(tmp_path)
    args = ["--tlsverify", "--tlscert", str(cert), "--tlskey", str(key), "--tlscacert", str(cert)]
    with NatsServer(store_dir=tmp_path / "s", extra_args=args) as srv:
        url = f"tls://127.0.0.1:{srv.port}"
        mutual = App(
            "mtls",
            url=url,
            prefix=jsq_prefix,
            tls_ca_file=str(cert),
            tls_cert_file=str(cert),
            tls_key_file=str(key),
        )
        async with mutual:
            assert (await mutual.broker()).is_connected
        without_cert = App("mtls", url=url, prefix=jsq_prefix, tls_ca_file=str(cert))
        with pytest.raises(
            ConnectError, match=r"TLS with NATS at .*certificate (is )?required.*tls_cert"
        ):
            await without_cert.connect()
        await without_cert.close()

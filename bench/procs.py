"""Worker processes of one measurement: started in their own session, sampled for RSS, and
stopped by PID (SIGTERM, then SIGKILL to each and the children it had) even on failure."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent  # the repo: `-A bench.x:app` imports from here


class WorkerDied(RuntimeError):
    """A worker process exited while the harness was waiting for its jobs."""


class WorkerGroup:
    """Start ``commands`` (one process each, children included in RSS) and stop them all."""

    def __init__(
        self,
        commands: Sequence[Sequence[str]],
        env: dict[str, str] | None = None,
        *,
        sample_every: float = 0.1,
        stop_timeout: float = 20.0,
    ) -> None:
        self.commands = [list(c) for c in commands]
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.sample_every = sample_every
        self.stop_timeout = stop_timeout
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.peak_rss = 0
        self._sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        self._log_dir = Path(tempfile.mkdtemp(prefix="jsqueue-bench-logs-"))

    def start(self) -> WorkerGroup:
        for n, command in enumerate(self.commands):
            log_path = self._log_dir / f"worker-{n}.log"
            with open(log_path, "wb") as log:
                proc = subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.procs.append(proc)
            self.logs.append(log_path)
        self._sampling.set()
        self._sampler = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._sampler.start()
        return self

    def _families(self) -> Iterator[tuple[int, list[psutil.Process]]]:
        """Each worker's pid with its process and all its descendants (the gone skipped)."""
        for proc in self.procs:
            try:
                root = psutil.Process(proc.pid)
                yield proc.pid, [root, *root.children(recursive=True)]
            except psutil.Error:
                continue

    def rss(self) -> int:
        """Resident memory of every worker process and its children now, in bytes."""
        total = 0
        for _, family in self._families():
            for p in family:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
        return total

    def memory(self) -> tuple[int, int]:
        """(RSS, PSS) in bytes of every worker process and its children now. PSS charges each
        shared page to the processes sharing it in equal parts, so it is what a pool of forked
        children really costs; RSS counts a shared page once per process."""
        rss = pss = 0
        for _, family in self._families():
            for p in family:
                with contextlib.suppress(psutil.Error):
                    info = p.memory_full_info()
                    rss += info.rss
                    pss += getattr(info, "pss", info.rss)
        return rss, pss

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the worker processes and their children used so far
        (children already reaped included): a cost that other tenants of the machine do not
        inflate the way they inflate wall-clock time."""
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """:meth:`cpu_seconds` as (the worker processes themselves, their descendants)."""
        own = descendants = 0.0
        for pid, family in self._families():
            for p in family:
                with contextlib.suppress(psutil.Error):
                    t = p.cpu_times()
                    used = t.user + t.system + t.children_user + t.children_system
                    if p.pid == pid:
                        own += t.user + t.system
                        descendants += t.children_user + t.children_system
                    else:
                        descendants += used
        return own, descendants

    def _sample(self) -> None:
        while self._sampling.is_set():
            self.peak_rss = max(self.peak_rss, self.rss())
            time.sleep(self.sample_every)

    def reset_peak(self) -> None:
        self.peak_rss = self.rss()

    def check_alive(self) -> None:
        """Raise :class:`WorkerDied` with the log's tail if a worker exited."""
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                raise WorkerDied(f"worker exited with {proc.returncode}: {tail(log)}")

    def stop(self) -> None:
        """SIGTERM each worker, wait, then SIGKILL it and the children it had (by PID)."""
        self._sampling.clear()
        if self._sampler is not None:
            self._sampler.join(timeout=5)
        family: list[psutil.Process] = []
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(proc.pid)
                family += [root, *root.children(recursive=True)]
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        for proc in self.procs:
            if proc.poll() is None:
                print(
                    f"worker {proc.pid} did not stop within {self.stop_timeout:.0f}s: killed",
                    file=sys.stderr,
                )
        for member in family:  # psutil checks the start time: a reused PID is left alone
            with contextlib.suppress(psutil.Error):
                member.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    def output(self, lines: int = 20) -> str:
        """The last lines each worker logged."""
        return " || ".join(tail(log, lines) for log in self.logs)

    def __enter__(self) -> WorkerGroup:
        try:
            return self.start()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self._log_dir, ignore_errors=True)


def tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"

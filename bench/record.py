"""What every benchmark task does: record that job ``i`` ran, and when.

A task calls :func:`record` with its job id. Each process appends fixed-size records
``(id, started, finished)`` to its own file in ``$BENCH_RECORD_DIR`` with one unbuffered
``write`` (so a record is whole on disk once the call returns). The harness learns that a run is
complete, and checks that every id ran exactly once, from these files alone: never from the
broker. Only the standard library is imported here, so task modules of every peer can use it.
"""

from __future__ import annotations

import os
import struct
import time
import uuid

RECORD = struct.Struct("<qdd")  # job id, start and finish (time.time())
DIR_ENV = "BENCH_RECORD_DIR"

_fd: int = -1
_fd_pid: int = -1
_fd_dir: str = ""


def _open() -> int:
    """This process's record file in the current record dir (reopened after a fork)."""
    global _fd, _fd_pid, _fd_dir
    directory = os.environ.get(DIR_ENV)
    if not directory:
        raise RuntimeError(f"${DIR_ENV} is not set: the benchmark harness sets it for workers")
    if _fd < 0 or _fd_pid != os.getpid() or _fd_dir != directory:
        name = os.path.join(directory, f"{os.getpid()}-{uuid.uuid4().hex[:8]}.rec")
        _fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _fd_pid, _fd_dir = os.getpid(), directory
    return _fd


def record(i: int, started: float | None = None) -> None:
    """Record that job ``i`` ran; ``started`` defaults to now (the task did nothing else)."""
    now = time.time()
    os.write(_open(), RECORD.pack(i, now if started is None else started, time.time()))

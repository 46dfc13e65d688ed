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

#: the env var of a record dir -> (fd, pid, dir) of this process's file there
_files: dict[str, tuple[int, int, str]] = {}


def _open(dir_env: str = DIR_ENV) -> int:
    """This process's record file in the record dir named by ``$dir_env`` (reopened after a
    fork, or when the dir changes)."""
    directory = os.environ.get(dir_env)
    if not directory:
        raise RuntimeError(f"${dir_env} is not set: the benchmark harness sets it for workers")
    fd, pid, opened = _files.get(dir_env, (-1, -1, ""))
    if fd < 0 or pid != os.getpid() or opened != directory:
        name = os.path.join(directory, f"{os.getpid()}-{uuid.uuid4().hex[:8]}.rec")
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _files[dir_env] = (fd, os.getpid(), directory)
    return fd


def record(i: int, started: float | None = None, *, dir_env: str = DIR_ENV) -> None:
    """Record that job ``i`` ran; ``started`` defaults to now (the task did nothing else).
    ``dir_env`` names another record dir, for jobs the harness watches apart (probes)."""
    now = time.time()
    os.write(_open(dir_env), RECORD.pack(i, now if started is None else started, time.time()))

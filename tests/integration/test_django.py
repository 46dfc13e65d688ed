"""The Django example project for real: a view creates a row and sends a job in the same
transaction; a worker process (process pool, so Django is set up in its child) reads the row.
A job sent in a transaction that rolls back is never sent."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from jsqueue.testing import NatsServer, Process, destroy, unique_prefix

from .support import ROOT

pytest.importorskip("django")
pytestmark = pytest.mark.slow
PROJECT = ROOT / "examples" / "django"


@pytest.fixture(scope="module")
def project(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The example project set up in this process (Django is set up once per process), with
    its database migrated and a worker process of its own."""
    tmp = tmp_path_factory.mktemp("django")
    env = {
        "DJANGO_SETTINGS_MODULE": "proj.settings",
        "EXAMPLE_DJANGO_DB": str(tmp / "db.sqlite3"),
        "EXAMPLE_JSQ_PREFIX": unique_prefix(),
        "JSQUEUE_URL": nats_server.url,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    sys.path.insert(0, str(PROJECT))
    import proj.jsq
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    worker = Process.jsqueue(
        *("worker", "-A", "proj.jsq:app", "--pool", "process", "-c", "1"),
        env=env,
        cwd=PROJECT,
        log_dir=tmp,
        name="django-worker",
    )
    try:
        with worker:
            yield proj.jsq.app, worker
            worker.signal(signal.SIGTERM)
            assert worker.wait(30) == 0, worker.output()
    finally:
        asyncio.run(destroy(proj.jsq.app))
        sys.path.remove(str(PROJECT))
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_a_view_sends_after_commit_and_nothing_after_rollback(project: Any) -> None:
    from django.test import Client
    from shop.models import Note

    app, _ = project
    client = Client()
    rolled_back = client.post("/notes/", {"text": "never", "rollback": "1"}).json()
    committed = client.post("/notes/", {"text": "hello from the view"}).json()
    assert not Note.objects.filter(text="never").exists()
    # the worker read the row the view created: the job came after the commit
    assert app.result(committed["job"]).get_sync(timeout=30) == "hello from the view"
    # one child runs jobs in order: had the rolled-back job been sent (before the other), it
    # would have a state by now
    assert app.result(rolled_back["job"]).state_sync().value == "PENDING"
    seen = client.get(f"/jobs/{committed['job']}/").json()
    assert seen == {"state": "SUCCESS", "value": "hello from the view"}


def test_delay_on_commit_inside_a_transaction_and_outside(project: Any) -> None:
    from django.db import transaction
    from shop.models import Note
    from shop.tasks import read_note

    from jsqueue.contrib.django import apply_async_on_commit, delay_on_commit

    app, _ = project
    with transaction.atomic():
        note = Note.objects.create(text="inside")
        job = delay_on_commit(read_note, note.id)
        assert app.result(job.id).state_sync().value == "PENDING"
    outside = apply_async_on_commit(read_note, (note.id,), priority=3)  # no transaction: now
    assert job.get_sync(timeout=30) == "inside"
    assert outside.get_sync(timeout=30) == "inside"
    with pytest.raises(Exception, match="wrong arguments"):
        delay_on_commit(read_note)  # refused in the caller, not lost after the commit


def test_the_worker_closes_a_jobs_database_connection_after_it(project: Any) -> None:
    from shop.tasks import connection_was_open

    first = connection_was_open.delay_sync().get_sync(timeout=30)
    second = connection_was_open.delay_sync().get_sync(timeout=30)
    assert (first, second) == (False, False)

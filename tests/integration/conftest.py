"""Fixtures shared by the integration tests."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator

import pytest

from jsqueue import App
from jsqueue.testing import destroy
from jsqueue.wire.server import NatsServer

from .support import ROOT


@pytest.fixture
async def faulty(
    nats_server: NatsServer, jsq_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[App]:
    """The faulty app as the test process sees it (same prefix as its worker processes)."""
    monkeypatch.setenv("JSQ_TEST_PREFIX", jsq_prefix)
    monkeypatch.syspath_prepend(str(ROOT))
    import tests.apps.faulty as module

    module = importlib.reload(module)
    module.app.configure(url=nats_server.url)
    try:
        yield module.app
    finally:
        await destroy(module.app)


@pytest.fixture
async def procapp(
    nats_server: NatsServer, jsq_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[App]:
    """The app as the test process sees it; its workers are processes with the same prefix."""
    monkeypatch.setenv("JSQ_TEST_PREFIX", jsq_prefix)
    monkeypatch.syspath_prepend(str(ROOT))
    import tests.apps.procapp as module

    module = importlib.reload(module)
    module.app.configure(url=nats_server.url)
    try:
        yield module.app
    finally:
        await destroy(module.app)

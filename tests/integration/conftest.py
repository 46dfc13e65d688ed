"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jsqueue import App
from jsqueue.wire.server import NatsServer

from .support import app_of


@pytest.fixture
async def faulty(
    nats_server: NatsServer, jsq_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[App]:
    """The faulty app as the test process sees it (same prefix as its worker processes)."""
    async with app_of("faulty", nats_server, jsq_prefix, monkeypatch) as app:
        yield app


@pytest.fixture
async def procapp(
    nats_server: NatsServer, jsq_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[App]:
    """The app as the test process sees it; its workers are processes with the same prefix."""
    async with app_of("procapp", nats_server, jsq_prefix, monkeypatch) as app:
        yield app

"""How JetStream's refusals while provisioning are classified: retried, or a clear error."""

from __future__ import annotations

import nats.js.errors

from jsqueue.errors import TransientError
from jsqueue.wire.errors import placement_pending


def test_an_election_in_progress_is_retried() -> None:
    exc = nats.js.errors.ServiceUnavailableError(
        code=503, err_code=10008, description="JetStream system temporarily unavailable"
    )
    pending = placement_pending(exc, "creating KV bucket b")
    assert isinstance(pending, TransientError)
    assert "creating KV bucket b" in str(pending)
    assert "electing" in str(pending)


def test_an_offline_peer_is_retried() -> None:
    exc = nats.js.errors.BadRequestError(
        code=400, err_code=10005, description="insufficient resources: peer offline"
    )
    assert isinstance(placement_pending(exc, "creating stream s"), TransientError)


def test_too_few_servers_stays_the_callers_error() -> None:
    exc = nats.js.errors.BadRequestError(
        code=400, err_code=10005, description="insufficient resources"
    )
    assert placement_pending(exc, "creating stream s") is None
    exists = nats.js.errors.BadRequestError(code=400, err_code=10058, description="in use")
    assert placement_pending(exists, "creating stream s") is None

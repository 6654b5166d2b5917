"""Fixtures of the adversarial suite: one zmq context per module for the attackers and the
well-formed clients (servers are started by each module, see ``live.serving``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import zmq


@pytest.fixture(scope="module")
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context(1)
    ctx.setsockopt(zmq.MAX_SOCKETS, 4096)
    yield ctx
    ctx.destroy(linger=0)

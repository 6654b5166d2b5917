"""A busy server loop does not starve the authenticator (RELIABILITY.md trap 15, issue 7 defect 3).

The ZAP handler answers on a thread of its own, so while the listener's event loop is held by
application work (here: a CPU-bound spin that never yields, the worst a plugin can do) a new
client still completes its CURVE handshake within a second, and an unknown key is still refused
within a second. The client is a raw pyzmq DEALER on another thread, with a socket monitor
reporting the handshake's outcome; the loop spins until that thread is done (3 s at most).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest
import zmq
import zmq.utils.monitor

from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_transport_zmq import ZmqTransportListener

from .helpers import STEP, bounded, listening, raw_curve_dealer

#: How long a handshake may take while the server's loop is busy.
LIMIT = 1.0
#: How long the test holds the server's loop at most.
BUSY_FOR = 3.0

_OUTCOMES = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


@dataclass
class Outcome:
    """What the client thread saw: the first handshake event and how long it took."""

    event: int | None = None
    value: int | None = None
    elapsed: float | None = None


def _handshake(endpoint: str, identity: Identity, server: Identity, outcome: Outcome) -> None:
    """Connect a raw CURVE DEALER and record the first handshake event within ``LIMIT``."""
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = raw_curve_dealer(context, identity, server)
        monitor = sock.get_monitor_socket(_OUTCOMES)
        started = time.perf_counter()
        sock.connect(endpoint)
        if monitor.poll(LIMIT * 1000):
            message = zmq.utils.monitor.recv_monitor_message(monitor)
            outcome.elapsed = time.perf_counter() - started
            outcome.event = int(message["event"])
            outcome.value = int(message["value"])
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
    finally:
        context.destroy(linger=0)


def _handshake_while_the_loop_spins(endpoint: str, identity: Identity, server: Identity) -> Outcome:
    """Run the client thread while this (the server's loop) thread spins on the CPU."""
    outcome = Outcome()
    client = threading.Thread(target=_handshake, args=(endpoint, identity, server, outcome))
    client.start()
    deadline = time.perf_counter() + BUSY_FOR
    while client.is_alive() and time.perf_counter() < deadline:
        pass  # application work that never yields to the loop
    client.join(STEP)
    assert not client.is_alive()
    return outcome


@pytest.mark.timeout(20)
async def test_an_authorised_key_completes_its_handshake_while_the_loop_is_busy(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    async with listening(server_identity, authorized_keys) as listener:
        outcome = _handshake_while_the_loop_spins(
            listener.endpoints[0], client_identity, server_identity
        )
    assert outcome.event == zmq.EVENT_HANDSHAKE_SUCCEEDED, outcome
    assert outcome.elapsed is not None
    assert outcome.elapsed < LIMIT


@pytest.mark.timeout(20)
async def test_an_unknown_key_is_refused_while_the_loop_is_busy(
    server_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    async with listening(server_identity, authorized_keys) as listener:
        outcome = _handshake_while_the_loop_spins(
            listener.endpoints[0], Identity.generate(), server_identity
        )
        assert listener.authenticator is not None
        refused = listener.authenticator.refused
    assert outcome.event == zmq.EVENT_HANDSHAKE_FAILED_AUTH, outcome
    assert outcome.value == 400
    assert outcome.elapsed is not None
    assert outcome.elapsed < LIMIT
    assert refused >= 2  # the start-up probe and this stranger


async def test_close_ends_the_authenticator_thread_promptly(
    server_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    listener = ZmqTransportListener(
        "tcp://127.0.0.1:0", identity=server_identity, authorized_keys=authorized_keys
    )
    await bounded(listener.start())
    authenticator = listener.authenticator
    assert authenticator is not None
    assert authenticator.running
    thread = authenticator._thread
    assert thread is not None
    assert thread.daemon
    started = time.perf_counter()
    await bounded(listener.close())
    assert time.perf_counter() - started < LIMIT
    assert not thread.is_alive()
    assert not authenticator.running

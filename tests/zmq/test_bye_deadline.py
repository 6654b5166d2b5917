"""A peer told ``bye`` has ``bye_timeout`` to leave; then the listener cuts its connection
(issue 7 defect 6).

A ROUTER cannot drop one peer, so the listener asks the client to hang up with a ``bye``. A raw
client that ignores it, with heartbeats keeping the link alive, used to keep its connection for
ever. These tests use a raw pyzmq DEALER with an authorised key as that client and watch its own
socket monitor for the disconnect; a well-behaved client must see no difference.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import zmq
import zmq.asyncio
import zmq.utils.monitor

from rain_envelopes.errors import ConfigError, TransportClosed
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_transport_zmq import ZmqOptions, ZmqTransportListener

from .helpers import (
    STEP,
    LogWatcher,
    accept_peer,
    bounded,
    client_for,
    eventually,
    listening,
    raw_curve_dealer,
)

BYE_TIMEOUT = 1.0
#: Short heartbeats on both ends: the link is unmistakably alive while the deadline runs.
OPTIONS = {"bye_timeout": BYE_TIMEOUT, "heartbeat_ivl": 0.2, "heartbeat_timeout": 1.0}


class RudeClient:
    """A raw CURVE DEALER that says hello, then ignores ``bye`` and keeps its heartbeats on.

    It never reconnects, so the one DISCONNECTED on its monitor is the server's doing.
    """

    def __init__(self, context: zmq.asyncio.Context, identity: Identity, server: Identity):
        self.sock = raw_curve_dealer(context, identity, server)
        self.sock.setsockopt(zmq.HEARTBEAT_IVL, 200)
        self.sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 1000)
        self.sock.setsockopt(zmq.RECONNECT_IVL, -1)
        self.monitor = self.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
        )

    async def next_event(self, wanted: int, seconds: float = STEP) -> float:
        """Wait for monitor event ``wanted``; return the time it was read (time.monotonic)."""
        async with asyncio.timeout(seconds):
            while True:
                parts = await self.monitor.recv_multipart()
                if zmq.utils.monitor.parse_monitor_message(parts)["event"] == wanted:
                    return time.monotonic()

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)


async def _rude_peer(
    listener: ZmqTransportListener,
    context: zmq.asyncio.Context,
    identity: Identity,
    server: Identity,
) -> RudeClient:
    rude = RudeClient(context, identity, server)
    rude.sock.connect(listener.endpoints[0])
    await rude.next_event(zmq.EVENT_HANDSHAKE_SUCCEEDED)
    await bounded(rude.sock.send_multipart([b"", b"hello"]))
    await accept_peer(listener)
    return rude


@pytest.mark.timeout(15)
async def test_a_peer_that_ignores_bye_loses_its_connection_at_the_deadline(
    server_identity: Identity,
    client_identity: Identity,
    authorized_keys: AuthorizedKeys,
    log_watcher: LogWatcher,
    zmq_context: zmq.asyncio.Context,
) -> None:
    async with listening(server_identity, authorized_keys, options=OPTIONS) as listener:
        rude = await _rude_peer(listener, zmq_context, client_identity, server_identity)
        try:
            told = time.monotonic()
            assert await listener.close_peer(client_identity.public_key_text) == 1
            assert await bounded(rude.sock.recv_multipart()) == [b"", b"bye"]
            # It ignores the bye, and a hello on the same connection gets it nothing back.
            await bounded(rude.sock.send_multipart([b"", b"hello"]))
            await log_watcher.wait_for("a hello on a connection told to leave")
            assert listener.peers == []
            # Heartbeats keep the link alive; the listener cuts it at the deadline.
            cut = await rude.next_event(zmq.EVENT_DISCONNECTED, BYE_TIMEOUT + 1.0)
            assert cut - told >= BYE_TIMEOUT * 0.95, "cut before its deadline"
            assert listener.forced_closes == 1
            await log_watcher.wait_for("after bye; shut it down")
            await eventually(lambda: not listener._live_fds)
        finally:
            rude.close()


async def test_a_well_behaved_client_is_not_affected(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    async with listening(server_identity, authorized_keys, options=OPTIONS) as listener:
        client = client_for(listener, client_identity, server_identity)
        await bounded(client.open())
        await accept_peer(listener)
        await listener.close_peer(client_identity.public_key_text)
        with pytest.raises(TransportClosed):
            await bounded(client.receive())
        # It hung up as asked: its deadline is cancelled, so nothing is left to fire.
        await eventually(lambda: not listener._bye_deadlines)
        # Its next link (whose descriptor may reuse the old number) works as any other.
        again = client_for(listener, client_identity, server_identity)
        await bounded(again.open())
        peer = await accept_peer(listener)
        await bounded(again.send(b"ping"))
        assert await bounded(peer.receive()) == b"ping"
        await bounded(peer.send(b"pong"))
        assert await bounded(again.receive()) == b"pong"
        assert listener.forced_closes == 0
        await again.close()


async def test_a_deadline_never_cuts_a_newer_connection_on_the_same_descriptor(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    async with listening(server_identity, authorized_keys, options=OPTIONS) as listener:
        client = client_for(listener, client_identity, server_identity)
        await bounded(client.open())
        peer = await accept_peer(listener)
        fd = peer._fd
        assert fd is not None
        assert fd in listener._live_fds
        # A deadline set for an earlier connection that had this descriptor number.
        stale = listener._fd_serial[fd] - 1
        timer = asyncio.get_running_loop().call_later(60, lambda: None)
        listener._bye_deadlines[fd] = (stale, timer, "an earlier peer")
        listener._bye_deadline_passed(fd, stale)
        timer.cancel()
        assert listener.forced_closes == 0
        await bounded(client.send(b"still here"))
        assert await bounded(peer.receive()) == b"still here"
        await client.close()


async def test_closing_the_listener_leaves_no_deadline_pending(
    server_identity: Identity,
    client_identity: Identity,
    authorized_keys: AuthorizedKeys,
    zmq_context: zmq.asyncio.Context,
) -> None:
    listener = ZmqTransportListener(
        "tcp://127.0.0.1:0",
        identity=server_identity,
        authorized_keys=authorized_keys,
        options=OPTIONS,
    )
    await bounded(listener.start())
    rude = await _rude_peer(listener, zmq_context, client_identity, server_identity)
    try:
        await listener.close_peer(client_identity.public_key_text)
        timers = [timer for _serial, timer, _who in listener._bye_deadlines.values()]
        assert len(timers) == 1
        # While the rude client is still connected: close waits for it up to bye_timeout (a
        # polite peer hangs up after reading its last frames), then nothing is left pending.
        await bounded(listener.close())
        assert timers[0].cancelled() or listener.forced_closes == 1
        assert listener._bye_deadlines == {}
    finally:
        rude.close()
        await listener.close()


@pytest.mark.parametrize("value", [0, -1.0])
def test_bye_timeout_must_be_positive(value: float) -> None:
    with pytest.raises(ConfigError, match="bye_timeout"):
        ZmqOptions(bye_timeout=value)
    assert ZmqOptions().bye_timeout == 2.0

"""Limits and lifecycles on real loopback sockets: message size, queues, back-pressure, link
ends, the socket options actually set, and resources released."""

from __future__ import annotations

import asyncio
import os
import socket

import pytest
import zmq

from rain_envelopes.errors import ConfigError, QueueFull, TransportClosed, TransportError
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_transport_zmq import ZmqOptions, ZmqTransport, ZmqTransportListener
from rain_transport_zmq._io import int_option

from .helpers import LogWatcher, Stopwatch, accept_peer, bounded, client_for, listening

KIB = 1024



async def test_oversized_frame_disconnects_its_sender_and_the_server_keeps_serving(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    async with listening(server_identity, authorized_keys) as listener:
        flooder = client_for(listener, client_identity, server_identity)
        other = client_for(listener, client_identity, server_identity)
        await bounded(flooder.open())
        flooder_peer = await accept_peer(listener)
        await bounded(other.open())
        other_peer = await accept_peer(listener)

        limit = ZmqOptions().server_max_message_size
        await bounded(flooder.send(b"x" * (limit + 1)))
        with pytest.raises(TransportClosed, match="max message size"):
            await bounded(flooder.receive())  # the client learns its link dropped
        with pytest.raises(TransportClosed):
            await bounded(flooder_peer.receive())  # and the server closed that peer

        for n in range(10):
            await bounded(other.send(b"q%d" % n))
            assert await bounded(other_peer.receive()) == b"q%d" % n
            await bounded(other_peer.send(b"a%d" % n))
            assert await bounded(other.receive()) == b"a%d" % n
        # libzmq checks the size on the wire: CURVE's MESSAGE framing takes 33 bytes of it.
        await bounded(other.send(b"y" * (limit - 33)))
        assert len(await bounded(other_peer.receive())) == limit - 33
        await other.close()


async def test_send_to_a_full_peer_raises_queue_full_and_loses_nothing(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    small = {"server_sndhwm": 4, "tcp_sndbuf": 64 * KIB}
    async with listening(server_identity, authorized_keys, options=small) as listener:
        client = client_for(
            listener,
            client_identity,
            server_identity,
            options={"client_rcvhwm": 4, "client_receive_buffer": 4, "tcp_rcvbuf": 64 * KIB},
        )
        await bounded(client.open())
        peer = await accept_peer(listener)
        frame = b"z" * (64 * KIB)
        accepted = refused = 0
        messages: set[str] = set()
        for _ in range(1000):
            try:
                await peer.send(frame[:-8] + b"%08d" % accepted)
                accepted += 1
            except QueueFull as exc:
                messages.add(str(exc))
                refused += 1
            await asyncio.sleep(0)  # a turn of the loop: the client may read (into its bound)
        # The client never reads, so HWMs, socket buffers and its read-ahead bound fill up and
        # stay full: every later send is refused out loud, none vanishes.
        assert refused > 0
        assert all("not sent" in message for message in messages)
        assert accepted < 100, accepted
        for expected in range(accepted):
            got = await bounded(client.receive())
            assert got[-8:] == b"%08d" % expected
        await client.close()


async def test_a_peer_far_ahead_of_its_session_has_its_link_closed(
    server_identity: Identity,
    client_identity: Identity,
    authorized_keys: AuthorizedKeys,
    log_watcher: LogWatcher,
) -> None:
    options = {"peer_receive_buffer": 10}
    async with listening(server_identity, authorized_keys, options=options) as listener:
        client = client_for(listener, client_identity, server_identity)
        await bounded(client.open())
        peer = await accept_peer(listener)
        for n in range(50):
            await bounded(client.send(b"%d" % n))
        await log_watcher.wait_for("frames ahead of its session")
        # What was accepted is a whole in-order prefix; then the link is closed on both ends.
        for n in range(10):
            assert await bounded(peer.receive()) == b"%d" % n
        with pytest.raises(TransportClosed):
            await bounded(peer.receive())
        with pytest.raises(TransportClosed):
            await bounded(client.receive())


async def test_client_stops_reading_ahead_when_its_buffer_is_full(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    async with listening(server_identity, authorized_keys) as listener:
        client = client_for(
            listener, client_identity, server_identity, options={"client_receive_buffer": 5}
        )
        await bounded(client.open())
        peer = await accept_peer(listener)
        for n in range(100):
            await peer.send(b"%d" % n)
        await bounded(peer.send(b"last"))
        # The inbox never holds more than its bound; the rest waits in libzmq.
        received = []
        while len(received) < 101:
            assert len(client._inbox) <= 5
            received.append(await bounded(client.receive()))
        assert received == [b"%d" % n for n in range(100)] + [b"last"]
        await client.close()


async def test_client_link_closes_when_the_server_goes_away(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    listener = ZmqTransportListener(
        "tcp://127.0.0.1:0", identity=server_identity, authorized_keys=authorized_keys
    )
    await bounded(listener.start())
    client = client_for(listener, client_identity, server_identity)
    await bounded(client.open())
    await accept_peer(listener)
    pending = asyncio.ensure_future(client.receive())
    await listener.close()
    with pytest.raises(TransportClosed, match="lost"):
        await bounded(pending, 2.0)
    # It does not reconnect behind the session's back: sends are refused.
    with pytest.raises(TransportClosed):
        await bounded(client.send(b"stale command"))


async def test_open_against_nothing_fails_within_open_timeout(client_identity: Identity) -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = ZmqTransport(
        f"tcp://127.0.0.1:{port}",
        identity=client_identity,
        server_key=Identity.generate().public_key,
        options={"open_timeout": 0.3},
    )
    watch = Stopwatch()
    with pytest.raises(TransportError, match="no handshake"):
        await bounded(client.open())
    assert 0.25 < watch.elapsed < 2.0
    assert client.closed


async def test_socket_options_are_the_documented_defaults(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    async with listening(server_identity, authorized_keys) as listener:
        client = client_for(listener, client_identity, server_identity)
        await bounded(client.open())
        router, dealer = listener._router, client._sock
        assert router is not None
        assert dealer is not None
        expected_router = {
            zmq.MAXMSGSIZE: 256 * KIB,
            zmq.RCVHWM: 64,
            zmq.SNDHWM: 1000,
            zmq.HANDSHAKE_IVL: 10_000,
            zmq.HEARTBEAT_IVL: 2_000,
            zmq.HEARTBEAT_TIMEOUT: 4_000,
            zmq.HEARTBEAT_TTL: 6_000,
            zmq.LINGER: 0,
            zmq.CURVE_SERVER: 1,
        }
        expected_dealer = {
            zmq.MAXMSGSIZE: 4 * 1024 * KIB,
            zmq.RCVHWM: 1000,
            zmq.SNDHWM: 100,
            zmq.HANDSHAKE_IVL: 30_000,
            zmq.HEARTBEAT_IVL: 2_000,
            zmq.HEARTBEAT_TIMEOUT: 4_000,
            zmq.HEARTBEAT_TTL: 6_000,
            zmq.RECONNECT_IVL: 500,
            zmq.RECONNECT_IVL_MAX: 30_000,
            zmq.IMMEDIATE: 1,
            zmq.LINGER: 0,
        }
        for option, value in expected_router.items():
            assert int_option(router, option) == value, option
        for option, value in expected_dealer.items():
            assert int_option(dealer, option) == value, option
        await client.close()


def test_options_are_validated_and_overridable() -> None:
    assert ZmqOptions.from_mapping({"server_rcvhwm": 128}).server_rcvhwm == 128
    assert ZmqOptions.from_mapping(None) == ZmqOptions()
    with pytest.raises(ConfigError, match="server_rcvhwn"):
        ZmqOptions.from_mapping({"server_rcvhwn": 128})
    with pytest.raises(ConfigError, match="heartbeat_ivl"):
        ZmqOptions(heartbeat_ivl="10")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="server_sndhwm"):
        ZmqOptions(server_sndhwm=1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="router_mandatory"):
        ZmqOptions(router_mandatory=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="receive_batch"):
        ZmqOptions(receive_batch=0)
    with pytest.raises(ConfigError, match="heartbeat_ttl"):
        ZmqOptions(heartbeat_ttl=7000.0)
    assert ZmqOptions(linger=1).linger == 1  # ints are fine where seconds are expected


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count fds")
async def test_listeners_and_clients_release_sockets_and_tasks(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    async def cycle() -> None:
        # libzmq closes a socket's descriptors in its reaper thread, after close() returns;
        # terminating a context waits for that, and would hang on any socket left open.
        context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        async with listening(server_identity, authorized_keys) as listener:
            for _ in range(5):
                client = ZmqTransport(
                    listener.endpoints[0],
                    identity=client_identity,
                    server_key=server_identity.public_key,
                    context=context,
                )
                await bounded(client.open())
                peer = await accept_peer(listener)
                await bounded(client.send(b"x"))
                assert await bounded(peer.receive()) == b"x"
                await client.close()
        await bounded(asyncio.to_thread(context.term), 2.0)

    await cycle()
    baseline = _open_fds()
    tasks = asyncio.all_tasks()
    for _ in range(5):
        await cycle()
    assert _open_fds() <= baseline
    assert asyncio.all_tasks() == tasks


async def test_concurrent_starts_and_receives(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    listener = ZmqTransportListener(
        "tcp://127.0.0.1:0", identity=server_identity, authorized_keys=authorized_keys
    )
    await bounded(asyncio.gather(listener.start(), listener.start()))
    try:
        assert len(listener.endpoints) == 1
        client = client_for(listener, client_identity, server_identity)
        await bounded(asyncio.gather(client.open(), client.open()))
        peer = await accept_peer(listener)
        readers = asyncio.gather(peer.receive(), peer.receive())
        await bounded(client.send(b"one"))
        await bounded(client.send(b"two"))
        assert sorted(await bounded(readers)) == [b"one", b"two"]
        await client.close()
    finally:
        await listener.close()
    with pytest.raises(TransportClosed):
        await bounded(listener.start())

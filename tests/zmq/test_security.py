"""Transport security on real loopback sockets: CURVE, the ZAP authenticator, the allowlist,
revocation, and identity taken from the proven key.

These run at transport level (request/response frames). The session-level versions of the same
promises ("an authorised client keeps completing commands", "session.remote_node is the mapped
identity") belong to the channel/server tests.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from rain_envelopes.errors import ConfigError, TransportClosed, TransportSecurityError
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.transport import ClientSecurity, ServerSecurity, transport_factory
from rain_transport_zmq import (
    ZMQ,
    HandshakeFailed,
    ZapAuthenticator,
    ZmqPeerTransport,
    ZmqTransport,
    ZmqTransportListener,
)
from rain_transport_zmq.security import ZapDecision

from .helpers import (
    STEP,
    LogWatcher,
    Stopwatch,
    accept_peer,
    bounded,
    client_for,
    eventually,
    listening,
    port_of,
)


async def _echo(transport: ZmqPeerTransport) -> None:
    """Answer every frame with ``b"re:" + frame`` until the link ends."""
    try:
        while True:
            frame = await transport.receive()
            await transport.send(b"re:" + frame)
    except TransportClosed:
        pass


async def _exchange(client: ZmqTransport, payload: bytes) -> None:
    await bounded(client.send(payload))
    assert await bounded(client.receive()) == b"re:" + payload



# ------------------------------------------------------------------------------ keys


async def test_50_unknown_keys_refused_while_an_authorised_client_keeps_working(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    async with listening(server_identity, authorized_keys) as listener:
        good = client_for(listener, client_identity, server_identity)
        await bounded(good.open())
        peer = await accept_peer(listener)
        echo = asyncio.create_task(_echo(peer))
        strangers = [client_for(listener, Identity.generate(), server_identity) for _ in range(50)]
        storm = asyncio.gather(*(bounded(s.open()) for s in strangers), return_exceptions=True)
        exchanges = during_storm = 0
        while not storm.done() or exchanges < 20:
            await _exchange(good, f"cmd {exchanges}".encode())
            exchanges += 1
            during_storm += not storm.done()
        results = await storm
        assert during_storm >= 1  # served while the refusals were going on
        refused = [r for r in results if isinstance(r, HandshakeFailed) and r.cause == "refused"]
        assert len(refused) == 50, results
        assert all(s.closed for s in strangers)
        assert listener.authenticator is not None
        assert listener.authenticator.refused >= 51  # 50 strangers and the start-up probe
        assert [p.peer_identity for p in listener.peers] == [client_identity.public_key_text]
        await _exchange(good, b"still here")
        await good.close()
        await bounded(echo)


async def test_client_without_curve_is_refused(
    server_identity: Identity,
    client_identity: Identity,
    authorized_keys: AuthorizedKeys,
    log_watcher: LogWatcher,
) -> None:
    async with listening(server_identity, authorized_keys) as listener:
        # Our own client, told to be insecure, learns why at once.
        plain = ZmqTransport(listener.endpoints[0], insecure=True)
        with pytest.raises(HandshakeFailed, match="security mechanism") as caught:
            await bounded(plain.open())
        assert caught.value.cause == "protocol"
        # A raw ZeroMQ client with no keys at all gets nothing through either.
        ctx = zmq.asyncio.Context()
        raw = ctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        try:
            raw.connect(listener.endpoints[0])
            await raw.send_multipart([b"", b"hello"])
            await raw.send(b"get /params")
            await log_watcher.wait_for("handshake failed on")
            # It retries, failing each time; the log says so once per interval, with a count.
            await eventually(lambda: listener.peer_log.counts.get("handshake-failed", 0) >= 2)
        finally:
            raw.close()
            ctx.term()
        assert listener.peers == []


async def test_wrong_pinned_server_key_fails_clearly_and_fast(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    impostor = Identity.generate()
    async with listening(server_identity, authorized_keys) as listener:
        client = client_for(listener, client_identity, impostor)  # pins the wrong key
        watch = Stopwatch()
        with pytest.raises(HandshakeFailed, match="pinned server key") as caught:
            async with asyncio.timeout(2.0):
                await client.open()
        assert caught.value.cause == "server-key"
        assert watch.elapsed < 1.0
        assert client.closed
        # receive() reports the same cause rather than a bare "closed".
        with pytest.raises(HandshakeFailed):
            await bounded(client.receive())
        # So does a first receive() with no open() before it.
        lazy = client_for(listener, client_identity, impostor)
        with pytest.raises(TransportSecurityError, match="pinned server key"):
            await bounded(lazy.receive())
        assert listener.peers == []


async def test_server_key_can_be_given_as_text(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    async with listening(server_identity, authorized_keys) as listener:
        client = ZmqTransport(
            listener.endpoints[0],
            identity=client_identity,
            server_key=server_identity.public_key_text,
        )
        await bounded(client.open())
        assert client.peer_identity == server_identity.public_key_text
        await client.close()


async def test_peer_identity_is_the_proven_key_whatever_the_routing_id(
    server_identity: Identity, client_identity: Identity, tmp_path: Path
) -> None:
    admin = Identity.generate()
    keys = AuthorizedKeys.from_mapping(
        {client_identity.public_key: "alice@irf", admin.public_key: "admin@irf"}
    )
    async with listening(server_identity, keys) as listener:
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        # Alice's keys, but a routing id that spells the admin's key.
        misleading = admin.public_key_text.encode()
        sock.setsockopt(zmq.ROUTING_ID, misleading)
        public, secret = client_identity.curve_keypair()
        sock.curve_publickey = zmq.utils.z85.encode(public)
        sock.curve_secretkey = zmq.utils.z85.encode(secret)
        sock.curve_serverkey = zmq.utils.z85.encode(server_identity.curve_keypair()[0])
        try:
            sock.connect(listener.endpoints[0])
            await sock.send_multipart([b"", b"hello"])
            await sock.send(b"I am the admin")
            peer = await accept_peer(listener)
            assert peer.routing_id == misleading
            assert peer.peer_identity == client_identity.public_key_text
            assert peer.peer_identity != admin.public_key_text
            assert await bounded(peer.receive()) == b"I am the admin"
        finally:
            sock.close()
            ctx.term()


async def test_frames_without_user_id_are_dropped(
    server_identity: Identity,
    authorized_keys: AuthorizedKeys,
    log_watcher: LogWatcher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Trap 1 as libzmq lives it: no ZAP handler answers, so any key completes the handshake and
    # its frames carry no User-Id. Stopping a running handler would race with libzmq releasing
    # its inproc address, so the handler is never started (and the start-up self-test, which
    # rightly refuses to serve in this state, is skipped). The listener must serve nothing.
    monkeypatch.setattr(ZapAuthenticator, "start", lambda self: None)
    monkeypatch.setattr(ZmqTransportListener, "_self_test", _no_self_test)
    async with listening(server_identity, authorized_keys) as listener:
        intruder = client_for(listener, Identity.generate(), server_identity)
        await bounded(intruder.open())  # the handshake itself succeeds...
        await bounded(intruder.send(b"set /params/valve open"))
        await log_watcher.wait_for("without a CURVE User-Id")
        await eventually(lambda: listener.dropped_frames >= 2)  # ...hello and frame dropped
        assert listener.peers == []
        await intruder.close()


async def _no_self_test(listener: ZmqTransportListener) -> None:
    return None


async def test_frame_with_another_user_id_than_its_transport_is_dropped(
    server_identity: Identity, client_identity: Identity, log_watcher: LogWatcher
) -> None:
    other = Identity.generate()
    keys = AuthorizedKeys.from_mapping(
        {client_identity.public_key: "alice@irf", other.public_key: "bob@irf"}
    )
    listener = ZmqTransportListener(
        "tcp://127.0.0.1:0", identity=server_identity, authorized_keys=keys
    )
    # Driven directly (no sockets): the demultiplexer's rule, whatever libzmq delivers.
    alice_id = zmq.utils.z85.encode(client_identity.curve_keypair()[0]).decode()
    bob_id = zmq.utils.z85.encode(other.curve_keypair()[0]).decode()
    listener._started = True
    listener._on_hello(b"rid-1", alice_id, "127.0.0.1", None)
    peer = await accept_peer(listener)
    listener._on_data(b"rid-1", bob_id, b"from bob")
    listener._on_data(b"rid-1", alice_id, b"from alice")
    assert await bounded(peer.receive()) == b"from alice"
    assert peer.dropped_frames == 1
    assert log_watcher.count("User-Id differs") == 1
    # A hello from bob claiming alice's routing id changes nothing either.
    listener._on_hello(b"rid-1", bob_id, "127.0.0.1", None)
    assert listener.peers == [peer]
    assert peer.peer_identity == client_identity.public_key_text
    await listener.close()


# ------------------------------------------------------------------------------ fail closed


async def test_listener_refuses_to_serve_when_its_authenticator_is_not_running(
    server_identity: Identity, authorized_keys: AuthorizedKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ZapAuthenticator, "start", lambda self: None)
    listener = ZmqTransportListener(
        "tcp://127.0.0.1:0", identity=server_identity, authorized_keys=authorized_keys
    )
    with pytest.raises(TransportSecurityError, match=r"not authorised.*refusing to serve"):
        await bounded(listener.start())
    assert listener._router is None  # everything released
    with pytest.raises(TransportClosed):
        await bounded(listener.accept())


async def test_listener_refuses_to_serve_with_an_authenticator_in_another_context(
    server_identity: Identity, authorized_keys: AuthorizedKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    original = ZapAuthenticator.__init__

    def misplaced(self: ZapAuthenticator, context: object, **kwargs: object) -> None:
        original(self, elsewhere, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ZapAuthenticator, "__init__", misplaced)
    listener = ZmqTransportListener(
        "tcp://127.0.0.1:0", identity=server_identity, authorized_keys=authorized_keys
    )
    try:
        with pytest.raises(TransportSecurityError, match="refusing to serve"):
            await bounded(listener.start())
    finally:
        elsewhere.destroy(linger=0)


async def test_listener_refuses_to_serve_when_its_authenticator_lets_anyone_in(
    server_identity: Identity, authorized_keys: AuthorizedKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        ZapAuthenticator, "_decide", lambda self, *args: ZapDecision(200, "OK", b"x" * 40)
    )
    listener = ZmqTransportListener(
        "tcp://127.0.0.1:0", identity=server_identity, authorized_keys=authorized_keys
    )
    with pytest.raises(TransportSecurityError, match="refusing to serve"):
        await bounded(listener.start())


async def test_curve_is_on_by_default(server_identity: Identity) -> None:
    with pytest.raises(ConfigError, match="insecure=True"):
        ZMQ.connect("tcp://127.0.0.1:4505")
    with pytest.raises(ConfigError, match="insecure=True"):
        ZMQ.connect("tcp://127.0.0.1:4505", ClientSecurity())
    with pytest.raises(ConfigError, match="server_key"):
        ZMQ.connect("tcp://127.0.0.1:4505", ClientSecurity(identity=Identity.generate()))
    with pytest.raises(ConfigError, match="insecure=True"):
        ZMQ.listen(["tcp://127.0.0.1:0"])
    with pytest.raises(ConfigError, match="authorized_keys"):
        ZMQ.listen(["tcp://127.0.0.1:0"], ServerSecurity(identity=server_identity))
    with pytest.raises(ConfigError, match="tcp:// and ipc://"):
        ZmqTransport("udp://127.0.0.1:1", insecure=True)


async def test_entry_point_finds_the_zmq_factory() -> None:
    assert transport_factory("tcp://127.0.0.1:4505") is ZMQ
    assert transport_factory("ipc:///tmp/rain.sock") is ZMQ


async def test_insecure_pair_works_when_asked_for_explicitly() -> None:
    listener = ZMQ.listen(["tcp://127.0.0.1:0"], ServerSecurity(insecure=True))
    async with listener:
        client = ZMQ.connect(listener.endpoints[0], ClientSecurity(insecure=True))
        await bounded(client.open())
        peer = await bounded(listener.accept())
        assert peer.peer_identity is None
        assert peer.encryption == "none"
        await bounded(client.send(b"hi"))
        assert await bounded(peer.receive()) == b"hi"
        await client.close()


async def test_insecure_listener_still_enforces_its_allowlist() -> None:
    listener = ZmqTransportListener("tcp://127.0.0.1:0", insecure=True, allow=["127.0.0.2/32"])
    async with listener:
        port = port_of(listener.endpoints[0])
        refused = ZmqTransport(f"tcp://127.0.0.1:{port}", insecure=True)
        with pytest.raises(HandshakeFailed, match="allowlist"):
            await bounded(refused.open())
        admitted = ZmqTransport(f"tcp://127.0.0.2:0;127.0.0.1:{port}", insecure=True)
        await bounded(admitted.open())
        peer = await bounded(listener.accept())
        assert peer.peer_address == "127.0.0.2"
        await admitted.close()


async def test_secure_links_report_curve(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    async with listening(server_identity, authorized_keys) as listener:
        client = client_for(listener, client_identity, server_identity)
        await bounded(client.open())
        peer = await accept_peer(listener)
        assert client.encryption == peer.encryption == "curve"
        assert peer.peer_address == "127.0.0.1"
        await client.close()


# ------------------------------------------------------------------------------ allowlist


@pytest.mark.parametrize(
    ("allow", "source", "admitted"),
    [
        ("127.0.0.1/32", "127.0.0.1", True),
        ("127.0.0.1/32", "127.0.0.2", False),
        ("127.0.0.2/32", "127.0.0.2", True),
        ("127.0.0.2/32", "127.0.0.1", False),
        ("127.0.0.0/31", "127.0.0.1", True),
        ("127.0.0.0/31", "127.0.0.2", False),
    ],
)
async def test_cidr_allowlist_by_source_address(
    server_identity: Identity,
    client_identity: Identity,
    authorized_keys: AuthorizedKeys,
    allow: str,
    source: str,
    admitted: bool,
) -> None:
    async with listening(server_identity, authorized_keys, allow=[allow]) as listener:
        # ZeroMQ's source-address syntax: connect from SOURCE (any port) to the listener.
        endpoint = f"tcp://{source}:0;127.0.0.1:{port_of(listener.endpoints[0])}"
        client = client_for(listener, client_identity, server_identity, endpoint=endpoint)
        if admitted:
            await bounded(client.open())
            peer = await accept_peer(listener)
            assert peer.peer_address == source
            await client.close()
        else:
            with pytest.raises(HandshakeFailed, match="allowlist") as caught:
                await bounded(client.open())
            assert caught.value.cause == "refused"
            assert listener.peers == []


@pytest.mark.parametrize(("allow", "admitted"), [("127.0.0.1/32", True), ("10.0.0.0/8", False)])
async def test_ipv4_mapped_peer_on_an_ipv6_socket(
    server_identity: Identity,
    client_identity: Identity,
    authorized_keys: AuthorizedKeys,
    monkeypatch: pytest.MonkeyPatch,
    allow: str,
    admitted: bool,
) -> None:
    seen: list[bytes] = []
    original = ZapAuthenticator.decide

    def spy(self: ZapAuthenticator, request: list[bytes]) -> ZapDecision:
        seen.append(request[3])
        return original(self, request)

    monkeypatch.setattr(ZapAuthenticator, "decide", spy)
    # An IPv6 socket bound to the IPv4-mapped loopback: IPv4 clients reach it, and libzmq
    # reports them as ::ffff:a.b.c.d, as on a dual-stack [::] bind, without listening on
    # every interface of the machine.
    async with listening(
        server_identity,
        authorized_keys,
        "tcp://[::ffff:127.0.0.1]:0",
        allow=[allow],
        options={"ipv6": True},
    ) as listener:
        assert listener.endpoints[0].startswith("tcp://[::ffff:127.0.0.1]:")
        endpoint = f"tcp://127.0.0.1:{port_of(listener.endpoints[0])}"
        client = client_for(listener, client_identity, server_identity, endpoint=endpoint)
        if admitted:
            await bounded(client.open())
            peer = await accept_peer(listener)
            assert peer.peer_address == "127.0.0.1"  # folded from ::ffff:127.0.0.1
            await client.close()
        else:
            with pytest.raises(HandshakeFailed, match="allowlist"):
                await bounded(client.open())
        assert b"::ffff:127.0.0.1" in seen  # what libzmq really reported


# ------------------------------------------------------------------------------ revocation


async def test_revoked_key_loses_its_live_link_within_a_second(
    server_identity: Identity, client_identity: Identity, keys_file: Path
) -> None:
    bob = Identity.generate()
    keys = AuthorizedKeys.load(keys_file)
    keys.add(bob.public_key, "bob@irf")
    keys.save()
    async with listening(server_identity, keys) as listener:
        alice_link = client_for(listener, client_identity, server_identity)
        bob_link = client_for(listener, bob, server_identity)
        await bounded(alice_link.open())
        alice_peer = await accept_peer(listener)
        await bounded(bob_link.open())
        bob_peer = await accept_peer(listener)
        echo = asyncio.create_task(_echo(bob_peer))
        await _exchange(bob_link, b"before")
        alice_waiting = asyncio.ensure_future(alice_link.receive())
        alice_peer_waiting = asyncio.ensure_future(alice_peer.receive())

        # Remove alice from the file, then reload.
        edited = AuthorizedKeys({bob.public_key: "bob@irf"})
        edited.save(keys_file)
        watch = Stopwatch()
        removed = await bounded(listener.reload_keys())
        assert removed == {client_identity.public_key}
        with pytest.raises(TransportClosed):
            await bounded(alice_peer_waiting, 1.0)
        with pytest.raises(TransportClosed):
            await bounded(alice_waiting, 1.0)  # the client was told, too
        assert watch.elapsed < 1.0
        assert alice_link.closed
        assert alice_peer.closed

        # Refused from then on; bob is unaffected.
        again = client_for(listener, client_identity, server_identity)
        with pytest.raises(HandshakeFailed) as caught:
            await bounded(again.open())
        assert caught.value.cause == "refused"
        await _exchange(bob_link, b"after")
        await bob_link.close()
        await bounded(echo)


async def test_frames_of_a_key_revoked_behind_the_listeners_back_are_refused(
    server_identity: Identity, client_identity: Identity, keys_file: Path
) -> None:
    keys = AuthorizedKeys.load(keys_file)
    async with listening(server_identity, keys) as listener:
        client = client_for(listener, client_identity, server_identity)
        await bounded(client.open())
        peer = await accept_peer(listener)
        AuthorizedKeys().save(keys_file)
        keys.reload()  # not listener.reload_keys(): every frame re-checks its key anyway
        await bounded(client.send(b"set /params/valve open"))
        with pytest.raises(TransportClosed):
            await bounded(peer.receive(), 1.0)
        assert peer.dropped_frames == 1
        with pytest.raises(TransportClosed):
            await bounded(client.receive(), 1.0)


async def test_close_peer_closes_every_link_of_a_key(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    async with listening(server_identity, authorized_keys) as listener:
        clients = [client_for(listener, client_identity, server_identity) for _ in range(3)]
        for client in clients:
            await bounded(client.open())
            await accept_peer(listener)
        assert await listener.close_peer(client_identity.public_key_text) == 3
        for client in clients:
            with pytest.raises(TransportClosed):
                await bounded(client.receive(), 1.0)
        assert listener.peers == []
        assert await listener.close_peer(client_identity.public_key_text) == 0


async def test_handshake_refusals_are_logged_as_warnings(
    server_identity: Identity, authorized_keys: AuthorizedKeys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rain_transport_zmq")
    async with listening(server_identity, authorized_keys) as listener:
        stranger = client_for(listener, Identity.generate(), server_identity)
        with pytest.raises(HandshakeFailed):
            await bounded(stranger.open(), STEP)
    assert any("key not authorised" in r.getMessage() for r in caplog.records)

"""What `rain nats-config`'s authorization block makes a real nats-server enforce, and that the
listener trusts a subject's identity only when a broker enforces it.

- an nkey the block does not list is refused at connect;
- a client may publish only as itself, and only to servers that let it in; it hears only the
  answers addressed to it;
- a broker without the block is caught by the listener's start-up probe;
- revocation: removing a key, then reloading the RAIN server and nats-server, ends that
  identity's sessions within 2 s (measured and printed); the broker's reload alone does too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import pytest

from rain_envelopes.auth import ServerAuthenticator
from rain_envelopes.channel import connect
from rain_envelopes.errors import HandshakeFailed, SecurityCause, TransportSecurityError
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.server import Parameter, Server
from rain_envelopes.server.access import AccessRule
from rain_envelopes.transport import ClientSecurity, ServerSecurity
from rain_transport_nats import NATS, NatsTransportListener, subjects, user_nkey, user_seed
from rain_transport_nats.config import ServerGrant, authorization_block, grant_for, nats_users
from rain_transport_nats.transport import barrier

from .broker import NatsServer
from .conftest import NatsKeys


async def _listener(broker: NatsServer, keys: NatsKeys) -> NatsTransportListener:
    listener = NATS.listen(
        [broker.url], ServerSecurity(identity=keys.station, authorized_keys=keys.authorized)
    )
    assert isinstance(listener, NatsTransportListener)
    await listener.start()
    return listener


async def _raw(broker: NatsServer, identity: Identity) -> tuple[nats.NATS, list[Exception]]:
    """A plain nats-py connection as ``identity``, collecting the errors the broker sends."""
    errors: list[Exception] = []

    async def on_error(error: Exception) -> None:
        errors.append(error)

    client = await nats.connect(
        broker.url, nkeys_seed_str=user_seed(identity), error_cb=on_error,
        allow_reconnect=False,
    )
    return client, errors


async def test_an_nkey_the_block_does_not_list_is_refused(
    nats_broker: NatsServer, nats_keys: NatsKeys
) -> None:
    listener = await _listener(nats_broker, nats_keys)
    try:
        stranger = NATS.connect(
            nats_broker.url,
            ClientSecurity(identity=Identity.generate(), server_key=nats_keys.station.public_key),
        )
        with pytest.raises(TransportSecurityError, match="refused this key") as caught:
            await stranger.open()
        assert caught.value.cause == SecurityCause.REFUSED
        await stranger.close()
        assert listener.sessions == 0
    finally:
        await listener.close()


async def test_a_broker_user_the_server_does_not_let_in_cannot_reach_it(
    nats_broker: NatsServer, nats_keys: NatsKeys
) -> None:
    # mallory is a user of the broker (a server of her own) but not in the station's keys.
    listener = await _listener(nats_broker, nats_keys)
    try:
        mallory = NATS.connect(
            nats_broker.url,
            ClientSecurity(identity=nats_keys.mallory, server_key=nats_keys.station.public_key),
        )
        with pytest.raises(TransportSecurityError, match="does not let this key") as caught:
            await mallory.open()
        assert caught.value.cause == SecurityCause.REFUSED
        await mallory.close()
        assert listener.sessions == 0
    finally:
        await listener.close()


async def test_a_client_cannot_publish_or_listen_as_another_identity(
    nats_broker: NatsServer, nats_keys: NatsKeys
) -> None:
    listener = await _listener(nats_broker, nats_keys)
    station = user_nkey(nats_keys.station.public_key)
    alice = user_nkey(nats_keys.alice.public_key)
    someone = user_nkey(Identity.generate().public_key)
    client, errors = await _raw(nats_broker, nats_keys.alice)
    try:
        # Publishing a hello as someone else, and listening to someone else's answers.
        await client.publish(subjects.to_server(station, someone, "s1", subjects.HELLO), b"")
        await client.subscribe(f"rain.{station}.out.{someone}.>")
        # Listening as the server, and answering as it.
        await client.subscribe(f"rain.{station}.in.>")
        await client.publish(subjects.to_client(station, alice, "s2", subjects.DATA), b"x")
        await barrier(client, 5)
        denied = [str(error) for error in errors]
        assert len(denied) == 4, denied
        assert all("permissions violation" in text.lower() for text in denied), denied
        # As herself, to the station, she may: the listener answers and accepts.
        inbox = await client.subscribe(subjects.client_subscription(station, alice, "s3"))
        await client.publish(subjects.to_server(station, alice, "s3", subjects.HELLO), b"")
        welcome = await inbox.next_msg(timeout=5)
        assert welcome.subject.endswith(".welcome")
        peer = await asyncio.wait_for(listener.accept(), 5)
        assert peer.peer_identity == nats_keys.alice.public_key_text
        assert listener.sessions == 1  # the forged hello made none
    finally:
        await client.close()
        await listener.close()


async def test_a_key_the_broker_knows_only_as_a_client_cannot_serve(
    nats_broker: NatsServer, nats_keys: NatsKeys
) -> None:
    # alice is a broker user, but nats-config gave her no server subjects: her listener's
    # subscription is refused, and start says so instead of serving a deaf listener.
    listener = NATS.listen(
        [nats_broker.url],
        ServerSecurity(identity=nats_keys.alice, authorized_keys=nats_keys.authorized),
    )
    with pytest.raises(HandshakeFailed, match="subscribe to its own subjects") as refused:
        await listener.start()
    assert refused.value.cause is SecurityCause.REFUSED
    await listener.close()


async def test_the_listener_refuses_a_broker_that_lets_anyone_claim_any_subject(
    tmp_path: Path, nats_keys: NatsKeys
) -> None:
    with NatsServer(tmp_path, "open") as broker:  # no authorization block at all
        listener = NATS.listen(
            [broker.url],
            ServerSecurity(identity=nats_keys.station, authorized_keys=nats_keys.authorized),
        )
        with pytest.raises(TransportSecurityError, match="publish as an identity"):
            await listener.start()
        await listener.close()
        # Told insecure, it serves, but vouches for nobody.
        insecure = NATS.listen(
            [broker.url], ServerSecurity(identity=nats_keys.station, insecure=True)
        )
        assert isinstance(insecure, NatsTransportListener)
        await insecure.start()
        try:
            client = NATS.connect(
                broker.url,
                ClientSecurity(
                    identity=nats_keys.alice, server_key=nats_keys.station.public_key,
                    insecure=True,
                ),
            )
            await client.open()
            peer = await asyncio.wait_for(insecure.accept(), 5)
            assert peer.peer_identity is None
            assert not insecure.enforced
            await client.close()
        finally:
            await insecure.close()


def test_access_rules_leave_out_identities_no_rule_mentions() -> None:
    station, alice, bob = Identity.generate(), Identity.generate(), Identity.generate()
    authorized = AuthorizedKeys.from_mapping({
        alice.public_key: "alice@irf", bob.public_key: "bob@elsewhere",
    })
    rules = [AccessRule("*@irf", "/params/*", frozenset({"get"}))]
    grant = grant_for(station.public_key, "station@irf", authorized, rules)
    assert set(grant.clients) == {alice.public_key}
    users = {user.nkey: user for user in nats_users([grant])}
    assert user_nkey(bob.public_key) not in users
    alice_user = users[user_nkey(alice.public_key)]
    assert alice_user.publish == [
        f"rain.{user_nkey(station.public_key)}.in.{user_nkey(alice.public_key)}.>"
    ]
    # Without rules every authorised key is let in.
    assert set(grant_for(station.public_key, "s", authorized).clients) == {
        alice.public_key, bob.public_key,
    }


# ------------------------------------------------------------------------------ revocation


async def _serving(
    broker: NatsServer, station: Identity, authorized: AuthorizedKeys
) -> AsyncIterator[Server]:
    server = Server(
        [Parameter("temp", value=20.0)], node="station@lab", identity=station,
        authorized_keys=authorized, authenticator=ServerAuthenticator(authorized),
    )
    async with server:
        await server.listen(
            [broker.url], security=ServerSecurity(identity=station, authorized_keys=authorized)
        )
        yield server


@pytest.mark.timeout(60)
async def test_revocation_ends_the_identitys_sessions_within_2_s(tmp_path: Path) -> None:
    station, alice, bob = Identity.generate(), Identity.generate(), Identity.generate()
    path = tmp_path / "authorized_keys"
    AuthorizedKeys.from_mapping({alice.public_key: "alice@lab", bob.public_key: "bob@lab"}).save(
        path
    )
    authorized = AuthorizedKeys.load(path)

    def block() -> str:
        return authorization_block([
            ServerGrant(station.public_key, "station@lab", dict(authorized.items()))
        ])

    with NatsServer(tmp_path / "nats", authorization=block()) as broker:
        serving = _serving(broker, station, authorized)
        server = await anext(serving)
        try:
            channels = {
                name: await connect(
                    broker.url, identity=who, server_key=station.public_key,
                    establish_timeout=5.0, command_timeout=5.0, ping_interval=None,
                )
                for name, who in (("alice", alice), ("bob", bob))
            }
            assert (await channels["alice"].get("/params/temp")).resource["value"] == 20.0

            # Revoke alice: the file, then nats-config's block, then both reloads.
            AuthorizedKeys.from_mapping({bob.public_key: "bob@lab"}).save(path)
            started = time.perf_counter()
            revoked = await server.reload_keys()
            await asyncio.to_thread(broker.reload, block())
            async with asyncio.timeout(2.0):
                await channels["alice"].wait_closed()
            elapsed = time.perf_counter() - started
            print(f"\nrevoked NATS session closed {elapsed * 1000:.0f} ms after the reloads began")
            assert "alice@lab" in revoked
            assert elapsed < 2.0
            # bob is untouched; alice cannot come back, the broker refuses her key now.
            assert (await channels["bob"].get("/params/temp")).resource["value"] == 20.0
            with pytest.raises(TransportSecurityError, match="refused this key"):
                await connect(
                    broker.url, identity=alice, server_key=station.public_key,
                    establish_timeout=5.0,
                )

            # The broker alone also cuts a revoked key off: bob, still in the RAIN server's
            # file, loses his session when only nats-server reloads without him.
            authorized_without_bob = AuthorizedKeys.from_mapping({})
            started = time.perf_counter()
            await asyncio.to_thread(
                broker.reload,
                authorization_block([
                    ServerGrant(station.public_key, "station@lab",
                                dict(authorized_without_bob.items()))
                ]),
            )
            async with asyncio.timeout(2.0):
                await channels["bob"].wait_closed()
            elapsed = time.perf_counter() - started
            print(f"a key removed at the broker only: session closed after {elapsed * 1000:.0f} ms")
        finally:
            await serving.aclose()

"""Security shown at the session level, over real ZeroMQ with CURVE on 127.0.0.1.

The transport tests prove the frames; these prove what a user sees: LIME sessions and commands.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from rain_envelopes import (
    AuthorizedKeys,
    ClientChannel,
    ClientSecurity,
    Command,
    Identity,
    Node,
    ServerAuthenticator,
    ServerChannel,
    ServerSecurity,
    TransportSecurityError,
    connect,
    transport_factory,
)

from .helpers import STEP


def _echo(command: Command) -> Command:
    return command.success({"uri": command.uri})


@asynccontextmanager
async def serving(
    server: Identity, keys: AuthorizedKeys
) -> AsyncIterator[tuple[str, asyncio.Queue[ServerChannel]]]:
    """A session server on an ephemeral port: yields (endpoint, queue of established channels)."""
    listener = transport_factory("tcp://127.0.0.1:0").listen(
        ["tcp://127.0.0.1:0"], ServerSecurity(identity=server, authorized_keys=keys)
    )
    established: asyncio.Queue[ServerChannel] = asyncio.Queue()
    channels: list[ServerChannel] = []
    tasks: list[asyncio.Task[None]] = []

    async def serve_one(channel: ServerChannel) -> None:
        channel.on_command = _echo
        await channel.establish_session()
        established.put_nowait(channel)

    async def accept_all() -> None:
        async for transport in listener:
            channel = ServerChannel(
                transport, node="station@irf/main", authenticator=ServerAuthenticator(keys)
            )
            channels.append(channel)
            tasks.append(asyncio.create_task(serve_one(channel)))

    await listener.start()
    acceptor = asyncio.create_task(accept_all())
    try:
        yield listener.endpoints[0], established
    finally:
        for task in (acceptor, *tasks):
            task.cancel()
        await asyncio.gather(acceptor, *tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()
        await listener.close()


async def test_remote_node_is_the_proven_identity_whatever_the_client_claims(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    async with serving(server_identity, authorized_keys) as (endpoint, established):
        async with asyncio.timeout(STEP):
            client = await connect(
                endpoint,
                identity=client_identity,
                server_key=server_identity.public_key,
                node="root@irf/lab",
            )
            server = await established.get()
        try:
            assert server.remote_identity == "alice@irf"
            assert server.remote_node == Node("alice", "irf", "lab")
            assert client.local_node == Node("alice", "irf", "lab")
            assert server.remote_key == client_identity.public_key
            assert client.session is not None
            assert client.session.from_ == Node.parse("station@irf/main")
        finally:
            await client.finish()


async def test_authorised_commands_go_on_during_a_storm_of_50_unknown_keys(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    async with serving(server_identity, authorized_keys) as (endpoint, _established):
        async with asyncio.timeout(STEP):
            client = await connect(
                endpoint, identity=client_identity, server_key=server_identity.public_key
            )

        async def stranger() -> BaseException | None:
            try:
                channel = await connect(
                    endpoint, identity=Identity.generate(), server_key=server_identity.public_key,
                    establish_timeout=STEP,
                )
            except TransportSecurityError as exc:
                return exc
            await channel.close()
            return None

        async def strangers() -> list[BaseException | None]:
            # One after another, so the storm lasts long enough to interleave with our gets.
            return [await stranger() for _ in range(50)]

        try:
            async with asyncio.timeout(4 * STEP):
                storm = asyncio.ensure_future(strangers())
                answered = during = 0
                while not storm.done() or answered < 20:
                    response = await client.get(f"/params/{answered}")
                    assert response.resource == {"uri": f"/params/{answered}"}
                    answered += 1
                    during += not storm.done()
                refusals = await storm
            assert during >= 1
            assert all(isinstance(r, TransportSecurityError) for r in refusals), refusals
        finally:
            await client.finish()


async def test_a_wrong_pinned_server_key_is_reported_within_the_timeout(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    impostor_key = Identity.generate().public_key
    async with serving(server_identity, authorized_keys) as (endpoint, _established):
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TransportSecurityError, match="server key"):
            await connect(
                endpoint, identity=client_identity, server_key=impostor_key, establish_timeout=3
            )
        assert loop.time() - started < 3


async def test_channel_reports_curve_and_the_transport_scheme(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    async with serving(server_identity, authorized_keys) as (endpoint, established):
        factory = transport_factory(endpoint)
        transport = factory.connect(
            endpoint,
            ClientSecurity(identity=client_identity, server_key=server_identity.public_key),
        )
        client = ClientChannel(transport, identity=client_identity)
        async with asyncio.timeout(STEP):
            await client.establish_session()
            server = await established.get()
        try:
            assert transport.encryption.value == "curve"
            # CURVE already proved the key, so the cheaper `transport` scheme was chosen.
            assert server.remote_identity == "alice@irf"
            assert server.remote_key == client_identity.public_key
        finally:
            await client.finish()

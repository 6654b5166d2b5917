"""RAIN sessions across NATS topologies, not only one broker: a 3-node cluster (the server on
one node, the client on another) and a leaf node (the instrument's server behind a site's leaf,
the client at the hub). Every broker carries nats-config's block, so each enforces the subject
permissions of the connections it accepted. Also checks the fixtures of tests/nats/broker.py
that other NATS tests build on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rain_envelopes.auth import ServerAuthenticator
from rain_envelopes.channel import ClientChannel, connect
from rain_envelopes.errors import TransportError
from rain_envelopes.server import Parameter, Server
from rain_envelopes.transport import ServerSecurity
from rain_transport_nats.config import authorization_block

from .broker import NatsServer, start_cluster
from .conftest import NatsKeys


async def _connect_once_interest_arrives(url: str, keys: NatsKeys) -> ClientChannel:
    """Connect; while the server's subscription has not yet reached the client's broker (it
    travels over routes and leaf links asynchronously) the broker answers "no responders" at
    once, so each retry is one round trip, not a sleep."""
    async with asyncio.timeout(10):
        while True:
            try:
                return await connect(
                    url, identity=keys.alice, server_key=keys.station.public_key,
                    establish_timeout=5.0, command_timeout=5.0,
                )
            except TransportError as exc:
                if "no RAIN server" not in str(exc):
                    raise


async def _round_trip(server_url: str, client_url: str, keys: NatsKeys) -> None:
    server = Server([Parameter("temp", value=-12.5)], node="station@lab",
                    identity=keys.station, authorized_keys=keys.authorized,
                    authenticator=ServerAuthenticator(keys.authorized))
    async with server:
        await server.listen(
            [server_url],
            security=ServerSecurity(identity=keys.station, authorized_keys=keys.authorized),
        )
        channel = await _connect_once_interest_arrives(client_url, keys)
        samples: asyncio.Queue[object] = asyncio.Queue()
        await channel.subscribe("/params/temp", samples.put_nowait)
        assert (await channel.get("/params/temp")).resource["value"] == -12.5
        await channel.finish()


@pytest.mark.timeout(60)
async def test_a_session_across_a_three_node_cluster(tmp_path: Path, nats_keys: NatsKeys) -> None:
    block = authorization_block(nats_keys.grants())
    nodes = await asyncio.to_thread(start_cluster, tmp_path, 3, authorization=block)
    try:
        assert len({node.port for node in nodes}) == 3
        await _round_trip(nodes[0].url, nodes[2].url, nats_keys)
    finally:
        for node in nodes:
            await asyncio.to_thread(node.stop)


@pytest.mark.timeout(60)
async def test_a_session_from_the_hub_to_a_server_behind_a_leaf_node(
    tmp_path: Path, nats_keys: NatsKeys
) -> None:
    block = authorization_block(nats_keys.grants())
    hub = NatsServer(
        tmp_path, "hub", authorization=block, leaf_credentials=("site", "leaf-secret")
    )
    await asyncio.to_thread(hub.start)
    leaf = NatsServer(tmp_path, "site", authorization=block, leaf_remotes=[hub.leaf_url])
    try:
        mark = hub.mark()
        await asyncio.to_thread(leaf.start)
        connected = await asyncio.to_thread(
            hub.wait_for_log, "Leafnode connection created", 10, after=mark
        )
        assert connected, hub.log
        await _round_trip(leaf.url, hub.url, nats_keys)
    finally:
        await asyncio.to_thread(leaf.stop)
        await asyncio.to_thread(hub.stop)

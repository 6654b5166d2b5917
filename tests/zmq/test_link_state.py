"""The ZeroMQ client's life as a :class:`~rain_transport_zmq.LinkState`: new, open, closed,
only forward; the members still compare equal to the strings earlier versions used."""

from __future__ import annotations

import asyncio

import pytest

from rain_envelopes import AuthorizedKeys, ClientSecurity, Identity, ServerSecurity
from rain_envelopes.errors import TransportClosed
from rain_transport_zmq import LinkState, ZmqTransport, ZmqTransportListener

from .helpers import STEP


async def test_a_client_goes_new_open_closed_and_never_opens_again(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    listener = ZmqTransportListener(
        ["tcp://127.0.0.1:0"],
        ServerSecurity(identity=server_identity, authorized_keys=authorized_keys),
    )
    async with listener:
        client = ZmqTransport(
            listener.endpoints[0],
            ClientSecurity(identity=client_identity, server_key=server_identity.public_key),
        )
        assert client.state is LinkState.NEW
        assert client.state == "new"  # a StrEnum: the old string still compares equal
        assert not client.closed
        async with asyncio.timeout(STEP):
            await client.open()
            peer = await listener.accept()
        assert client.state is LinkState.OPEN
        assert repr(client).endswith(" open>")
        await client.close()
        assert client.state is LinkState.CLOSED == "closed"
        assert client.closed
        with pytest.raises(TransportClosed):
            await client.open()  # one transport is one connection
        assert client.state is LinkState.CLOSED
        await peer.close()


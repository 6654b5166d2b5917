"""The shared transport conformance suite, run over the ZeroMQ transport on tcp and ipc.

Each pair is a real CURVE-secured listener (with its ZAP authenticator and start-up self-test)
and a client pinning the server key.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.testing import TransportConformance
from rain_envelopes.transport import Transport
from rain_transport_zmq import ZmqTransport, ZmqTransportListener


class _ZmqPair(TransportConformance):
    endpoint = "tcp://127.0.0.1:0"

    @pytest.fixture(autouse=True)
    def _keys(self, tmp_path: Path) -> None:
        self.server_identity = Identity.generate()
        self.client_identity = Identity.generate()
        self.keys = AuthorizedKeys.from_mapping({self.client_identity.public_key: "alice@irf"})
        self.tmp_path = tmp_path

    def bind_endpoint(self) -> str:
        return self.endpoint

    @contextlib.asynccontextmanager
    async def pair(self) -> AsyncIterator[tuple[Transport, Transport]]:
        listener = ZmqTransportListener(
            self.bind_endpoint(), identity=self.server_identity, authorized_keys=self.keys
        )
        await listener.start()
        client = ZmqTransport(
            listener.endpoints[0],
            identity=self.client_identity,
            server_key=self.server_identity.public_key,
        )
        try:
            await client.open()
            server = await listener.accept()
            assert server.peer_identity == self.client_identity.public_key_text
            yield client, server
        finally:
            await client.close()
            await listener.close()


class TestZmqTcp(_ZmqPair):
    """Conformance over tcp://127.0.0.1 with an ephemeral port."""


class TestZmqIpc(_ZmqPair):
    """Conformance over ipc:// in the test's temporary folder."""

    def bind_endpoint(self) -> str:
        return f"ipc://{self.tmp_path / 'rain.sock'}"

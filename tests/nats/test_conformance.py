"""The shared transport conformance suite over NATS, through a real nats-server whose
authorization block is generated from the keys (so every frame passes the broker's subject
permissions, as in a deployment)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from rain_envelopes.testing import TransportConformance
from rain_envelopes.transport import ClientSecurity, ServerSecurity, Transport
from rain_transport_nats import NATS, NatsTransportListener

from .broker import NatsServer
from .conftest import NatsKeys


class TestNats(TransportConformance):
    """Conformance over nats://127.0.0.1 with an ephemeral broker port."""

    @pytest.fixture(autouse=True)
    def _broker(self, nats_broker: NatsServer, nats_keys: NatsKeys) -> None:
        self.broker = nats_broker
        self.keys = nats_keys

    @contextlib.asynccontextmanager
    async def pair(self) -> AsyncIterator[tuple[Transport, Transport]]:
        listener = NATS.listen(
            [self.broker.url],
            ServerSecurity(identity=self.keys.station, authorized_keys=self.keys.authorized),
        )
        assert isinstance(listener, NatsTransportListener)
        await listener.start()
        assert listener.enforced
        client = NATS.connect(
            self.broker.url,
            ClientSecurity(identity=self.keys.alice, server_key=self.keys.station.public_key),
        )
        try:
            await client.open()
            server = await listener.accept()
            assert server.peer_identity == self.keys.alice.public_key_text
            yield client, server
        finally:
            await client.close()
            await listener.close()

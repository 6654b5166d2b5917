"""How a NATS link ends when nobody says bye: a peer that goes silent is cut after
``heartbeat_timeout``, a peer that overruns ``max_queue`` has its link ended (never thinned), and
a broker that goes away ends every link on it. Short heartbeat settings keep these quick."""

from __future__ import annotations

import asyncio
import time

import pytest

from rain_envelopes.errors import TransportClosed
from rain_envelopes.transport import ClientSecurity, ServerSecurity
from rain_transport_nats import NATS, NatsTransport, NatsTransportListener

from .broker import NatsServer
from .conftest import NatsKeys

FAST = {"heartbeat_interval": 0.2, "heartbeat_timeout": 0.8}


async def _pair(
    broker: NatsServer, keys: NatsKeys, server_options: dict[str, object] | None = None
) -> tuple[NatsTransportListener, NatsTransport]:
    listener = NATS.listen(
        [broker.url], ServerSecurity(identity=keys.station, authorized_keys=keys.authorized),
        server_options or FAST,
    )
    assert isinstance(listener, NatsTransportListener)
    await listener.start()
    client = NATS.connect(
        broker.url,
        ClientSecurity(identity=keys.alice, server_key=keys.station.public_key),
        FAST,
    )
    assert isinstance(client, NatsTransport)
    await client.open()
    return listener, client


async def test_a_client_that_vanishes_without_bye_is_cut_after_the_heartbeat_timeout(
    nats_broker: NatsServer, nats_keys: NatsKeys
) -> None:
    listener, client = await _pair(nats_broker, nats_keys)
    try:
        peer = await asyncio.wait_for(listener.accept(), 5)
        # Idle, but heartbeats keep it alive well past the timeout.
        idle = asyncio.ensure_future(peer.receive())
        await asyncio.sleep(1.0)  # longer than the timeout, on purpose: nothing may happen
        assert not idle.done(), "an idle link with heartbeats was cut"
        # The client's process dies: its broker connection goes, no bye is sent.
        assert client._nc is not None
        await client._nc.close()
        started = time.monotonic()
        with pytest.raises(TransportClosed):
            await asyncio.wait_for(idle, 5)
        waited = time.monotonic() - started
        assert waited < 0.8 + 0.2 + 1.0, f"cut after {waited:.2f} s"
        assert listener.sessions == 0
    finally:
        await client.close()
        await listener.close()


async def test_a_peer_that_overruns_max_queue_has_its_link_ended_not_thinned(
    nats_broker: NatsServer, nats_keys: NatsKeys
) -> None:
    listener, client = await _pair(nats_broker, nats_keys, {**FAST, "max_queue": 50})
    try:
        peer = await asyncio.wait_for(listener.accept(), 5)
        frames = [f"{i}".encode() for i in range(200)]
        await client.send_batch(frames)  # nobody reads at the server
        received: list[bytes] = []

        async def drain() -> None:
            while True:
                received.extend(await peer.receive_batch())

        with pytest.raises(TransportClosed):
            await asyncio.wait_for(drain(), 5)
        # What was queued before the overrun arrives whole and in order; then the link ends.
        # How many arrive depends on how many the drain took before the 51st unread frame came
        # (a loaded machine read 66): at least the 50 the queue holds, never all 200, and never
        # a gap (nothing thinned).
        assert received == [f"{i}".encode() for i in range(len(received))]
        assert 50 <= len(received) < 200
        # The client is told (bye) and its link ends too.
        with pytest.raises(TransportClosed):
            await asyncio.wait_for(client.receive(), 5)
    finally:
        await client.close()
        await listener.close()


async def test_losing_the_broker_ends_every_link_on_both_sides(
    nats_broker: NatsServer, nats_keys: NatsKeys
) -> None:
    listener, client = await _pair(nats_broker, nats_keys)
    try:
        peer = await asyncio.wait_for(listener.accept(), 5)
        waiting = [asyncio.ensure_future(peer.receive()), asyncio.ensure_future(client.receive())]
        await asyncio.to_thread(nats_broker.stop)
        for pending in waiting:
            with pytest.raises(TransportClosed):
                await asyncio.wait_for(pending, 5)
    finally:
        await client.close()
        await listener.close()

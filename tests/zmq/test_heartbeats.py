"""A link that goes silent (no FIN, no RST) is noticed by ZMTP heartbeats on both ends.

A minimal TCP relay sits between client and server; "blackholing" it stops forwarding bytes
while keeping both TCP connections open, as a dead router or a pulled cable would.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from rain_envelopes.errors import TransportClosed
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_transport_zmq import ZmqTransport

from .helpers import Stopwatch, accept_peer, bounded, listening, port_of

FAST_HEARTBEATS = {"heartbeat_ivl": 0.1, "heartbeat_timeout": 0.3, "heartbeat_ttl": 0.3}


class Relay:
    """Forwards one TCP port to another until :meth:`blackhole` is called."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.silent = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def blackhole(self) -> None:
        self.silent.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        self.writers += [writer, upstream_writer]
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self.tasks.add(task)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                if self.silent.is_set():
                    continue  # swallow: the peer sees silence, not a close
                sink.write(data)
                await sink.drain()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for writer in self.writers:
            writer.close()
        self.server.close()
        await self.server.wait_closed()


@pytest.mark.timeout(15)
async def test_silent_link_is_noticed_by_heartbeats_on_both_ends(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    async with listening(server_identity, authorized_keys, options=FAST_HEARTBEATS) as listener:
        relay = Relay(port_of(listener.endpoints[0]))
        port = await relay.start()
        try:
            client = ZmqTransport(
                f"tcp://127.0.0.1:{port}",
                identity=client_identity,
                server_key=server_identity.public_key,
                options=FAST_HEARTBEATS,
            )
            await bounded(client.open())
            peer = await accept_peer(listener)
            await bounded(client.send(b"ping"))
            assert await bounded(peer.receive()) == b"ping"

            relay.blackhole()
            watch = Stopwatch()
            with pytest.raises(TransportClosed, match="heartbeats"):
                await bounded(client.receive(), 3.0)
            with pytest.raises(TransportClosed):
                await bounded(peer.receive(), 3.0)
            assert watch.elapsed < 3.0
        finally:
            await relay.close()

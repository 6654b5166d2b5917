"""The in-process memory transport against the shared conformance suite, plus what is its own."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from rain_envelopes.errors import ConfigError, QueueFull, TransportClosed, TransportError
from rain_envelopes.memory import MEMORY, memory_transport_pair
from rain_envelopes.testing import TransportConformance
from rain_envelopes.transport import Transport, transport_factory

_names = itertools.count()


def _endpoint() -> str:
    # A fresh name per pair: memory endpoints are process-wide, like bound ports.
    return f"memory://conformance-{next(_names)}"


class TestMemoryTransportPair(TransportConformance):
    """``memory_transport_pair()``: the two ends made directly."""

    large_frame_size = 4 * 1024 * 1024

    @asynccontextmanager
    async def pair(self) -> AsyncIterator[tuple[Transport, Transport]]:
        client, server = memory_transport_pair()
        try:
            yield client, server
        finally:
            await client.close()
            await server.close()


class TestMemoryTransportEndpoint(TransportConformance):
    """``memory://NAME``: a listener and a client found through ``transport_factory``."""

    large_frame_size = 4 * 1024 * 1024

    @asynccontextmanager
    async def pair(self) -> AsyncIterator[tuple[Transport, Transport]]:
        endpoint = _endpoint()
        factory = transport_factory(endpoint)
        async with factory.listen([endpoint]) as listener:
            client = factory.connect(endpoint)
            async with client:
                server = await listener.accept()
                yield client, server


class _FiveOperations(Transport):
    """A transport written before the batch forms: only the five operations, so the contract's
    default ``receive_batch`` and ``send_batch`` are the ones checked."""

    def __init__(self, inner: Transport) -> None:
        self._inner = inner

    async def send(self, data: bytes) -> None:
        await self._inner.send(data)

    async def receive(self) -> bytes:
        return await self._inner.receive()

    async def close(self) -> None:
        await self._inner.close()

    @property
    def closed(self) -> bool:
        return self._inner.closed


class TestDefaultBatchForms(TransportConformance):
    """The defaults built on ``send`` and ``receive`` keep the batch promises."""

    @asynccontextmanager
    async def pair(self) -> AsyncIterator[tuple[Transport, Transport]]:
        client, server = memory_transport_pair()
        try:
            yield _FiveOperations(client), _FiveOperations(server)
        finally:
            await client.close()
            await server.close()


# ------------------------------------------------------------------------------ memory-only


async def test_frames_sent_before_close_are_delivered_first() -> None:
    client, server = memory_transport_pair()
    await client.send(b"one")
    await client.send(b"two")
    await client.close()
    async with asyncio.timeout(5):
        assert await server.receive() == b"one"
        assert await server.receive() == b"two"
        with pytest.raises(TransportClosed):
            await server.receive()


async def test_a_full_peer_queue_refuses_the_frame() -> None:
    client, server = memory_transport_pair(max_queue=2)
    await client.send(b"1")
    await client.send(b"2")
    with pytest.raises(QueueFull):
        await client.send(b"3")
    async with asyncio.timeout(5):
        assert await server.receive() == b"1"
    await client.send(b"3")
    async with asyncio.timeout(5):
        assert [await server.receive(), await server.receive()] == [b"2", b"3"]


async def test_receive_batch_takes_the_whole_inbox_up_to_the_end() -> None:
    client, server = memory_transport_pair()
    await client.send_batch([b"one", b"two", b"three"])
    await client.close()
    async with asyncio.timeout(5):
        assert await server.receive_batch() == [b"one", b"two", b"three"]
        with pytest.raises(TransportClosed):
            await server.receive_batch()


async def test_a_full_peer_queue_stops_a_batch_at_the_frame_that_did_not_fit() -> None:
    client, server = memory_transport_pair(max_queue=2)
    batch = [b"1", b"2", b"3", b"4"]
    with pytest.raises(QueueFull):
        await client.send_batch(batch)
    assert batch == [b"3", b"4"]
    async with asyncio.timeout(5):
        assert await server.receive_batch() == [b"1", b"2"]


async def test_send_refuses_non_bytes() -> None:
    client, _server = memory_transport_pair()
    with pytest.raises(TypeError):
        await client.send("text")  # type: ignore[arg-type]


async def test_connect_with_nobody_listening_fails() -> None:
    endpoint = _endpoint()
    transport = transport_factory(endpoint).connect(endpoint)
    with pytest.raises(TransportError, match="nothing listens"):
        await transport.open()


async def test_endpoint_without_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="needs a name"):
        transport_factory("memory://").connect("memory://")


async def test_an_endpoint_binds_once() -> None:
    endpoint = _endpoint()
    factory = transport_factory(endpoint)
    async with factory.listen([endpoint]) as listener:
        assert listener.endpoints == [endpoint]
        with pytest.raises(TransportError, match="already bound"):
            await factory.listen([endpoint]).start()
    # Closing the listener frees the name.
    async with factory.listen([endpoint]):
        pass


async def test_closing_the_listener_ends_accept_and_every_link() -> None:
    endpoint = _endpoint()
    factory = transport_factory(endpoint)
    listener = factory.listen([endpoint])
    await listener.start()
    client = factory.connect(endpoint)
    await client.open()
    async with asyncio.timeout(5):
        server = await listener.accept()
        await listener.close()
        assert server.closed
        with pytest.raises(TransportClosed):
            await client.receive()
        with pytest.raises(TransportClosed):
            await listener.accept()
        assert [transport async for transport in listener] == []


def test_the_memory_transport_is_registered_by_its_own_module() -> None:
    # The entry point and the built-in lookup name the one factory in rain_envelopes.memory.
    from importlib.metadata import entry_points

    (entry,) = entry_points(group="rain_envelopes.transports", name="memory")
    assert entry.value == "rain_envelopes.memory:MEMORY"
    assert entry.load() is MEMORY
    assert transport_factory("memory://x") is MEMORY


def test_the_old_import_path_still_works() -> None:
    # Code written when the memory transport shared transport.py keeps importing it from there.
    import rain_envelopes.memory as memory
    import rain_envelopes.transport as transport

    for name in ("MEMORY", "MemoryTransport", "MemoryTransportListener", "memory_transport_pair"):
        assert getattr(transport, name) is getattr(memory, name), name
    with pytest.raises(AttributeError):
        _ = transport.no_such_name  # type: ignore[attr-defined]


async def test_a_memory_link_states_only_the_link_facts() -> None:
    # The contract's three facts: no key proven, nothing encrypted, no address. Session
    # settings (which compressions to offer) are no longer a transport's to declare.
    client, server = memory_transport_pair()
    for end in (client, server):
        assert end.peer_identity is None
        assert end.peer_address is None
        assert end.encryption == "none"
        assert not hasattr(end, "compression_options")
    await client.close()

"""The in-process memory transport: ``memory://NAME`` endpoints and :func:`memory_transport_pair`.

For tests, embedding and ``rain demo``: two :class:`MemoryTransport` ends share nothing but a
queue each way, so a client and a server in one event loop talk exactly as over a socket, with
no port, no key and no thread. It passes the same conformance suite
(:class:`rain_envelopes.testing.TransportConformance`) as the ZeroMQ transport.

How it works. :func:`memory_transport_pair` links two ends: ``send`` copies the bytes into the
peer's inbox (a deque) and wakes its ``receive``; ``close`` puts an end marker behind whatever
is already queued, so the peer reads every frame sent before the close and then
TransportClosed, as with a socket. A sender meets QueueFull when the peer's inbox holds
``max_queue`` frames, never an unbounded queue. ``receive_batch`` hands over the whole inbox
(up to an end marker) in one call; ``send_batch`` is the default (``send`` never suspends here),
and the peer's reader, woken once, finds the whole batch.

``memory://NAME`` endpoints go through the ordinary factory (:data:`MEMORY`, registered as the
``memory`` entry point): a :class:`MemoryTransportListener` binds NAME in a process-wide table
on ``start``; a client transport looks NAME up when opened (so, as with a socket, connecting
before anything listens fails with TransportError) and the listener hands out the server end of
a fresh pair from ``accept``.

Link facts: a memory link is neither encrypted nor authenticated (``encryption`` is
``SessionEncryption.NONE`` and ``peer_identity`` None), so sessions over it authenticate with
``keypair`` or ``guest``. This module lives apart from :mod:`rain_envelopes.transport`, which
holds only the contract and the registry.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ConfigError, QueueFull, TransportClosed, TransportError
from .transport import (
    ClientSecurity,
    ServerSecurity,
    Transport,
    TransportFactory,
    TransportListener,
)

__all__ = [
    "MEMORY",
    "MemoryTransport",
    "MemoryTransportListener",
    "memory_transport_pair",
]

_CLOSED = object()


class MemoryTransport(Transport):
    """One end of an in-process link. Frames are copied so neither side can alter the other's."""

    def __init__(self, *, max_queue: int = 10_000, name: str = "memory") -> None:
        self._inbox: collections.deque[bytes | object] = collections.deque()
        self._ready = asyncio.Event()
        self._peer: MemoryTransport | None = None
        self._closed = False
        self._max_queue = max_queue
        self.name = name

    def __repr__(self) -> str:
        return f"<MemoryTransport {self.name} {'closed' if self._closed else 'open'}>"

    def _deliver(self, item: bytes | object) -> None:
        self._inbox.append(item)
        self._ready.set()

    async def send(self, data: bytes) -> None:
        if self._closed or self._peer is None:
            raise TransportClosed("memory transport is closed")
        if self._peer._closed:
            raise TransportClosed("peer closed the memory transport")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("send() takes bytes")
        if len(self._peer._inbox) >= self._max_queue:
            raise QueueFull(f"peer queue full ({self._max_queue} frames)")
        self._peer._deliver(bytes(data))

    async def receive(self) -> bytes:
        while True:
            if self._inbox:
                item = self._inbox[0]
                if item is _CLOSED:
                    self._closed = True
                    raise TransportClosed("peer closed the memory transport")
                self._inbox.popleft()
                assert isinstance(item, bytes)
                return item
            if self._closed:
                raise TransportClosed("memory transport is closed")
            self._ready.clear()
            await self._ready.wait()

    async def receive_batch(self) -> list[bytes]:
        frames = [await self.receive()]
        inbox = self._inbox
        while inbox and inbox[0] is not _CLOSED:
            item = inbox.popleft()
            assert isinstance(item, bytes)
            frames.append(item)
        return frames

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._inbox.clear()  # nothing is received after our own close
        self._ready.set()
        if self._peer is not None and not self._peer._closed:
            self._peer._deliver(_CLOSED)

    @property
    def closed(self) -> bool:
        return self._closed or (self._peer is not None and self._peer._closed)


def memory_transport_pair(*, max_queue: int = 10_000) -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected in-process transports: ``(client_end, server_end)``."""
    client, server = MemoryTransport(max_queue=max_queue, name="client"), MemoryTransport(
        max_queue=max_queue, name="server"
    )
    client._peer, server._peer = server, client
    return client, server


_MEMORY_LISTENERS: dict[str, MemoryTransportListener] = {}


class MemoryTransportListener(TransportListener):
    """Accepts in-process links on ``memory://NAME`` endpoints."""

    def __init__(self, endpoints: Sequence[str]) -> None:
        self._endpoints = [_memory_name(endpoint) for endpoint in endpoints]
        self._pending: asyncio.Queue[MemoryTransport | None] = asyncio.Queue()
        self._handed_out: list[MemoryTransport] = []
        self._closed = False

    async def start(self) -> None:
        for name in self._endpoints:
            if name in _MEMORY_LISTENERS:
                raise TransportError(f"memory://{name} is already bound")
        for name in self._endpoints:
            _MEMORY_LISTENERS[name] = self

    def _connect(self) -> MemoryTransport:
        if self._closed:
            raise TransportClosed("listener is closed")
        client, server = memory_transport_pair()
        self._handed_out.append(server)
        self._pending.put_nowait(server)
        return client

    async def accept(self) -> Transport:
        if self._closed:
            raise TransportClosed("listener is closed")
        item = await self._pending.get()
        if item is None:
            self._pending.put_nowait(None)  # wake every other waiting accept() too
            raise TransportClosed("listener is closed")
        return item

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for name in self._endpoints:
            if _MEMORY_LISTENERS.get(name) is self:
                del _MEMORY_LISTENERS[name]
        for transport in self._handed_out:
            await transport.close()
        self._pending.put_nowait(None)

    @property
    def endpoints(self) -> list[str]:
        return [f"memory://{name}" for name in self._endpoints]


class _LazyMemoryTransport(Transport):
    """A memory client that finds its listener when opened (like a socket connect)."""

    def __init__(self, endpoint: str) -> None:
        self._name = _memory_name(endpoint)
        self._inner: MemoryTransport | None = None
        self._closed = False

    async def open(self) -> None:
        if self._closed:
            raise TransportClosed("transport is closed")
        if self._inner is not None:
            return
        listener = _MEMORY_LISTENERS.get(self._name)
        if listener is None:
            raise TransportError(f"nothing listens on memory://{self._name}")
        self._inner = listener._connect()

    def _link(self) -> MemoryTransport:
        if self._inner is None:
            raise TransportClosed("transport is not open")
        return self._inner

    async def send(self, data: bytes) -> None:
        await self._link().send(data)

    async def receive(self) -> bytes:
        return await self._link().receive()

    async def receive_batch(self) -> list[bytes]:
        return await self._link().receive_batch()

    async def send_batch(self, frames: list[bytes]) -> None:
        await self._link().send_batch(frames)

    async def close(self) -> None:
        self._closed = True
        if self._inner is not None:
            await self._inner.close()

    @property
    def closed(self) -> bool:
        return self._closed or (self._inner is not None and self._inner.closed)


def _memory_name(endpoint: str) -> str:
    name = endpoint.split("://", 1)[1] if "://" in endpoint else endpoint
    if not name:
        raise ConfigError(f"memory endpoint {endpoint!r} needs a name: memory://NAME")
    return name


class _MemoryFactory(TransportFactory):
    def connect(
        self,
        endpoint: str,
        security: ClientSecurity | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Transport:
        return _LazyMemoryTransport(endpoint)

    def listen(
        self,
        endpoints: Sequence[str],
        security: ServerSecurity | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> TransportListener:
        return MemoryTransportListener(endpoints)


#: The factory registered for ``memory://`` endpoints.
MEMORY: TransportFactory = _MemoryFactory()

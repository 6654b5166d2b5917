"""Transports: how envelope bytes travel between two nodes.

A :class:`Transport` is one ordered, message-framed link to one peer: one ``send`` is one
``receive`` at the other end, in order. A :class:`TransportListener` accepts links from many
peers and hands out one Transport per peer. Channels only ever speak to these two ABCs.

Transports are found by URI scheme through the ``rain_envelopes.transports`` entry-point group
(``memory`` is built in; ``tcp`` and ``ipc`` come from ``rain_transport_zmq``), so this package
never imports zmq. Each entry point names a :class:`TransportFactory`.

The in-process memory transport (``memory://name`` endpoints, or :func:`memory_transport_pair`)
is here for tests, embedding and the demo: it passes the same conformance suite as the ZMQ one.
"""

from __future__ import annotations

import asyncio
import collections
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from .envelopes import SessionCompression, SessionEncryption
from .errors import ConfigError, QueueFull, TransportClosed, TransportError

if TYPE_CHECKING:
    from .keys import AuthorizedKeys, Identity

__all__ = [
    "MEMORY",
    "ClientSecurity",
    "MemoryTransport",
    "MemoryTransportListener",
    "ServerSecurity",
    "Transport",
    "TransportFactory",
    "TransportListener",
    "memory_transport_pair",
    "transport_factory",
]


class Transport(ABC):
    """One ordered, message-framed link to one peer.

    Subclasses implement ``open``, ``send``, ``receive`` and ``close`` with these guarantees:
    - ``send(data)`` delivers ``data`` as exactly one ``receive()`` at the peer, in order;
    - ``receive()`` raises TransportClosed once the link has ended (closed by either side);
    - ``send`` after close raises TransportClosed; ``close`` is idempotent and always releases.
    """

    #: The public key the transport proved for the peer (e.g. the CURVE User-Id), if any.
    peer_identity: str | None = None
    #: The peer's network address, when the transport knows it ("127.0.0.1", ...).
    peer_address: str | None = None
    #: Compressions the session may negotiate over this link (applied per envelope).
    compression_options: tuple[SessionCompression, ...] = (
        SessionCompression.NONE,
        SessionCompression.GZIP,
    )
    #: What protects the link. Reported in the session, never negotiated.
    encryption: SessionEncryption = SessionEncryption.NONE

    async def open(self) -> None:  # noqa: B027 - most transports are open when made
        """Open the link. Raises TransportError when it cannot be opened."""

    @abstractmethod
    async def send(self, data: bytes) -> None:
        """Send one frame. Raises TransportClosed after close, QueueFull when the peer's queue
        is full, TransportError on other failures."""

    @abstractmethod
    async def receive(self) -> bytes:
        """Receive the next frame. Raises TransportClosed once the link has ended."""

    @abstractmethod
    async def close(self) -> None:
        """Close the link. Idempotent; never raises."""

    @property
    @abstractmethod
    def closed(self) -> bool:
        """True once the link has ended (closed by us or by the peer)."""

    async def __aenter__(self) -> Transport:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class TransportListener(ABC):
    """Accepts links from peers: ``async for transport in listener`` or ``await accept()``."""

    @abstractmethod
    async def start(self) -> None:
        """Bind and start accepting. Raises TransportError (or TransportSecurityError)."""

    @abstractmethod
    async def accept(self) -> Transport:
        """The next new peer's transport. Raises TransportClosed once the listener is closed."""

    @abstractmethod
    async def close(self) -> None:
        """Stop accepting and close every transport handed out. Idempotent."""

    @property
    @abstractmethod
    def endpoints(self) -> list[str]:
        """The endpoints actually bound (with the real port when 0 was asked for)."""

    async def close_peer(self, peer_identity: str) -> int:
        """Close every live transport whose peer proved ``peer_identity``; return how many."""
        return 0

    def __aiter__(self) -> AsyncIterator[Transport]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Transport]:
        while True:
            try:
                yield await self.accept()
            except TransportClosed:
                return

    async def __aenter__(self) -> TransportListener:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


@dataclass(frozen=True)
class ClientSecurity:
    """What a client brings to a secured transport."""

    identity: Identity | None = None
    #: The server public key the client pins (raw 32-byte Ed25519 key).
    server_key: bytes | None = None
    #: Set to True only to talk to a server with no transport security (tests, loopback demos).
    insecure: bool = False


@dataclass(frozen=True)
class ServerSecurity:
    """What a server brings to a secured transport listener."""

    identity: Identity | None = None
    authorized_keys: AuthorizedKeys | None = None
    #: IP networks allowed to connect ("127.0.0.1/32", "::1", "10.0.0.0/8"); empty = any.
    allow: Sequence[str] = field(default_factory=tuple)
    insecure: bool = False


class TransportFactory(ABC):
    """Makes transports for one family of endpoints; registered by URI scheme."""

    #: True when its links are secured by default (keys proven and traffic encrypted), so a
    #: client must bring its identity and the server's key unless it asks to be insecure.
    secure: bool = False

    @abstractmethod
    def connect(
        self,
        endpoint: str,
        security: ClientSecurity | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Transport:
        """A client transport to ``endpoint`` (not yet opened)."""

    @abstractmethod
    def listen(
        self,
        endpoints: Sequence[str],
        security: ServerSecurity | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> TransportListener:
        """A listener for ``endpoints`` (not yet started)."""


def transport_factory(endpoint: str) -> TransportFactory:
    """The registered factory for ``endpoint``'s URI scheme (``tcp://...`` -> the ZMQ one).

    Raises ConfigError when no installed transport handles the scheme.
    """
    scheme = endpoint.split("://", 1)[0].lower() if "://" in endpoint else ""
    if scheme == "memory":
        return MEMORY
    found = entry_points(group="rain_envelopes.transports", name=scheme) if scheme else ()
    for entry in found:
        factory = entry.load()
        if isinstance(factory, TransportFactory):
            return factory
    raise ConfigError(
        f"no transport for endpoint {endpoint!r}: expected a URI such as tcp://127.0.0.1:4505"
        " (is rain-envelopes installed with its ZeroMQ transport?)"
    )


# ------------------------------------------------------------------------------ memory transport

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

"""Transports: how envelope bytes travel between two nodes. The contract, and the registry.

A :class:`Transport` is one ordered, message-framed link to one peer: one ``send`` is one
``receive`` at the other end, in order. A :class:`TransportListener` accepts links from many
peers and hands out one Transport per peer. Channels only ever speak to these two ABCs.

The contract is deliberately narrow (httpcore's ``AsyncNetworkStream`` is the model): five
operations -- ``open``, ``send``, ``receive``, ``close`` and the ``closed`` property -- two
batch forms of the middle two, and three facts about the link, fixed once it is open, that
only the transport can know.

The batch forms are what the channel's hot path uses: ``receive_batch()`` waits for one frame
and returns it with every other frame already queued, and ``send_batch(frames)`` sends a list
of frames in order, consuming the list (what is left when it raises was not sent, starting
with the frame that failed). One wake-up of the channel then decodes, dispatches and answers
everything that arrived together. Both have defaults built on ``receive`` and ``send``, so a
transport that implements only the five operations keeps working; a transport that can do
better (the ZeroMQ one drains every queued frame after one poll and sends a batch with
non-blocking calls and one pump kick; the memory one moves a whole inbox) overrides them.

The facts:

- ``peer_identity``: the peer's public key (``ed25519:...``) that the transport's handshake
  *proved*, or None. On a server end the session's ``transport`` scheme maps it to an identity,
  so a transport sets it only from a cryptographic proof (ZeroMQ: the CURVE ``User-Id``);
- ``encryption``: what encrypts the link (:class:`SessionEncryption`, NONE by default). The
  session reports it to the peer and never negotiates it; a client whose link is encrypted
  also proposes the ``transport`` scheme, expecting that the same handshake proved its key to
  the server. If it did not, the server (which decides on ``peer_identity`` alone) does not
  offer that scheme and the client falls back to ``keypair``: a round trip lost, nothing given
  away;
- ``peer_address``: the peer's network address, for logs and allowlists; never trusted.

Fan-out is optional: ``Transport.fanout(name, variant)`` returns a :class:`FanoutMember` when
the transport can reach this peer, and every other peer of its listener that joins the same
topic, with one publication per frame (a broker does the copying). The default returns None
and the caller sends to each peer itself, as over ZeroMQ. A member goes through three steps:
``await join()`` (the peer is made ready to receive the topic; False when it cannot be, and the
caller keeps sending to it directly), ``admit()`` (synchronous: every frame the group publishes
from now on reaches the peer, none published before does, and every frame sent directly to the
peer before the call arrives before the group's) and ``leave()``. The group
(:class:`FanoutGroup`) is shared by the members of one topic; ``publish`` never blocks.

Everything else about a session is the session's: which compressions may be negotiated is a
parameter of the server's channel and protocol (``compression_options``), compressing is done
by the sans-I/O protocol, and nothing a transport carries changes the LIME rules.

Transports are found by URI scheme through the ``rain_envelopes.transports`` entry-point group
(``memory`` and ``rain``, a server found by name, are built in; ``tcp`` and ``ipc`` come
from ``rain_transport_zmq``), so this package never imports zmq. Each entry point names a
:class:`TransportFactory`. The in-process memory transport lives in
:mod:`rain_envelopes.memory`; its names are still importable from here for code written when it
lived in this module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from .envelopes import SessionEncryption
from .errors import ConfigError, TransportClosed

if TYPE_CHECKING:
    from .keys import AuthorizedKeys, Identity
    from .memory import (  # noqa: F401 - the names __getattr__ hands out, for type checkers
        MEMORY,
        MemoryTransport,
        MemoryTransportListener,
        memory_transport_pair,
    )

__all__ = [
    "ClientSecurity",
    "FanoutGroup",
    "FanoutMember",
    "ServerSecurity",
    "Transport",
    "TransportFactory",
    "TransportListener",
    "transport_factory",
]

#: Names that moved to :mod:`rain_envelopes.memory`, still importable from here.
_MOVED_TO_MEMORY = frozenset(
    {"MEMORY", "MemoryTransport", "MemoryTransportListener", "memory_transport_pair"}
)


def __getattr__(name: str) -> Any:
    if name in _MOVED_TO_MEMORY:
        from . import memory

        return getattr(memory, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Transport(ABC):
    """One ordered, message-framed link to one peer.

    Subclasses implement ``send``, ``receive``, ``close`` and ``closed`` (and ``open`` when the
    link is not open when made), with these guarantees:
    - ``send(data)`` delivers ``data`` as exactly one ``receive()`` at the peer, in order;
    - ``receive()`` raises TransportClosed once the link has ended (closed by either side);
    - ``send`` after close raises TransportClosed; ``close`` is idempotent and always releases.
    """

    #: The peer's public key (``ed25519:...``) the transport's handshake proved, or None.
    #: Set it only from a cryptographic proof: the ``transport`` session scheme trusts it.
    peer_identity: str | None = None
    #: The peer's network address, when the transport knows it ("127.0.0.1", ...). For logs
    #: and allowlists; never proof of anything.
    peer_address: str | None = None
    #: What encrypts the link; the session reports it and never negotiates it. Not NONE only
    #: when the handshake that encrypts also proves the client's key (see the module docstring).
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

    async def receive_batch(self) -> list[bytes]:
        """Wait for the next frame; return it with every frame already queued behind it, in
        order (never an empty list). Raises TransportClosed once the link has ended and no
        frame is left.

        The default returns ``[await self.receive()]``: correct for any transport, but a
        transport that holds frames in a queue should hand the whole queue over at once.
        """
        return [await self.receive()]

    async def send_batch(self, frames: list[bytes]) -> None:
        """Send every frame of ``frames`` in order, each as exactly one ``receive`` at the
        peer, as ``send`` would one by one.

        The list is consumed: frames that went out are removed from its front. When a frame
        cannot be sent the error is raised as ``send`` raises it (QueueFull, TransportClosed,
        TransportError) and ``frames`` still holds that frame and every one after it, none
        of them sent. The default calls ``send`` for each frame.
        """
        sent = 0
        try:
            for frame in frames:
                await self.send(frame)
                sent += 1
        finally:
            del frames[:sent]

    @abstractmethod
    async def close(self) -> None:
        """Close the link. Idempotent; never raises."""

    @property
    @abstractmethod
    def closed(self) -> bool:
        """True once the link has ended (closed by us or by the peer)."""

    def fanout(self, name: str, variant: str) -> FanoutMember | None:
        """This peer's membership of the topic ``name`` (what is published, such as a
        parameter's name) in its ``variant`` (what distinguishes encodings of it, such as the
        URI text a subscriber wrote), or None: the transport cannot publish once for many
        peers, so the caller sends to each (the default; see the module docstring)."""
        return None

    async def __aenter__(self) -> Transport:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class FanoutGroup(ABC):
    """One topic of one listener: each frame published once reaches every admitted member."""

    #: Frames published (each once, whatever the number of members).
    published: int = 0

    @abstractmethod
    def publish(self, data: bytes) -> None:
        """Publish ``data`` to every admitted member; never blocks, never raises (a member
        whose link fails loses its link, as with a direct send)."""

    @property
    @abstractmethod
    def members(self) -> int:
        """How many members are admitted."""


class FanoutMember(ABC):
    """One peer's place in a :class:`FanoutGroup` (see the module docstring for the steps)."""

    group: FanoutGroup

    @abstractmethod
    async def join(self) -> bool:
        """Make the peer ready to receive the group's frames; False when it cannot be (then
        keep sending to it directly). Never raises but CancelledError."""

    @abstractmethod
    def admit(self) -> None:
        """From now on the group's frames reach the peer (after everything sent to it
        directly so far), and no earlier ones. Only after ``join`` returned True."""

    @abstractmethod
    def leave(self) -> None:
        """Stop the group's frames to this peer. Idempotent."""


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

    def check_options(self, options: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Raise ConfigError when ``options`` has one this transport does not know, or a bad
        value, binding and connecting nothing: a server checks its ``[transport]`` table
        with this when it loads its configuration, before any plugin code runs. The default
        accepts anything, as a transport that ignores its options does."""


#: Factories found through the entry points, by scheme (see _registered_factory).
_FACTORIES: dict[str, TransportFactory] = {}


def _registered_factory(scheme: str) -> TransportFactory | None:
    # Looked up once per scheme and process: entry_points() scans every installed
    # distribution's metadata, 4-5 ms a call with 83 of them (benchmarks.md), which made it the
    # largest cost of a client's connect(). What is installed does not change while we run; a
    # scheme with no transport is not remembered (the extra may be installed and retried).
    factory = _FACTORIES.get(scheme)
    if factory is not None:
        return factory
    for entry in entry_points(group="rain_envelopes.transports", name=scheme):
        loaded = entry.load()
        if isinstance(loaded, TransportFactory):
            _FACTORIES[scheme] = loaded
            return loaded
    return None


def transport_factory(endpoint: str) -> TransportFactory:
    """The registered factory for ``endpoint``'s URI scheme (``tcp://...`` -> the ZMQ one).

    Raises ConfigError when no installed transport handles the scheme.
    """
    scheme = endpoint.split("://", 1)[0].lower() if "://" in endpoint else ""
    if scheme == "memory":
        # Built in, so memory:// works even where the package's entry points are not installed.
        from .memory import MEMORY

        return MEMORY
    if scheme == "rain":
        # rain://station@lab: a server found by name on the LAN (zeroconf, imported only when
        # such a transport is made); built in like memory://.
        from .discovery import DISCOVERY

        return DISCOVERY
    factory = _registered_factory(scheme) if scheme else None
    if factory is not None:
        return factory
    raise ConfigError(
        f"no transport for endpoint {endpoint!r}: expected a URI such as tcp://127.0.0.1:4505"
        " (is rain-envelopes installed with its ZeroMQ transport?)"
    )

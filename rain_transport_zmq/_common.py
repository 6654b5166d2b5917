"""Pieces the ZeroMQ client and listener share: the control messages, the client context,
socket options both roles set, endpoint checks, and the two errors this package adds."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

import zmq

from rain_envelopes.errors import ConfigError, QueueFull, TransportClosed, TransportSecurityError

from .options import ZmqOptions

__all__ = [
    "BYE",
    "CONTROL",
    "HELLO",
    "ZERO_COPY_FROM",
    "HandshakeFailed",
    "PeerGone",
    "apply_common",
    "check_endpoint",
    "client_context",
    "to_ms",
]

log = logging.getLogger("rain_transport_zmq")

# Control messages are two parts, the first empty; envelopes are always one part.

CONTROL = b""
HELLO = b"hello"
BYE = b"bye"

#: Frames at least this large are sent zero-copy; below it (pyzmq's own threshold) the
#: bookkeeping of a zero-copy send costs more than the copy.
ZERO_COPY_FROM = 64 * 1024

_shared_context: zmq.Context[zmq.Socket[bytes]] | None = None
_shared_context_lock = threading.Lock()


def client_context() -> zmq.Context[zmq.Socket[bytes]]:
    """The zmq context every client transport of this process shares (made on first use).

    One context per process, never one per connection: a context is an I/O thread.
    """
    global _shared_context
    with _shared_context_lock:
        if _shared_context is None or _shared_context.closed:
            _shared_context = zmq.Context(1)
        return _shared_context


class HandshakeFailed(TransportSecurityError):
    """The secure handshake failed; ``cause`` says which way.

    - ``"refused"``: the server's authenticator refused our key or our address;
    - ``"server-key"``: the server could not complete CURVE with us, most likely because the
      pinned server key is not the server's;
    - ``"protocol"``: the peer speaks another security mechanism (e.g. CURVE vs none).
    """

    def __init__(self, message: str, cause: str = "protocol") -> None:
        super().__init__(message)
        self.cause = cause


class PeerGone(QueueFull, TransportClosed):
    """The peer's connection is gone: the frame was not sent and the transport is closed."""


# ------------------------------------------------------------------------------ helpers


def check_endpoint(endpoint: object) -> str:
    if not isinstance(endpoint, str) or "://" not in endpoint:
        raise ConfigError(f"endpoint {endpoint!r}: expected tcp://HOST:PORT or ipc://PATH")
    scheme = endpoint.split("://", 1)[0].lower()
    if scheme not in ("tcp", "ipc"):
        raise ConfigError(f"endpoint {endpoint!r}: the ZeroMQ transport handles tcp:// and ipc://")
    return endpoint


def _wants_ipv6(endpoint: str, options: ZmqOptions) -> bool:
    return options.ipv6 or endpoint.lower().startswith("tcp://[")


def to_ms(seconds: float) -> int:
    return -1 if seconds < 0 else round(seconds * 1000)


def apply_common(sock: zmq.Socket[bytes], options: ZmqOptions, endpoints: Iterable[str]) -> None:
    """The options both roles set; IPV6 when any of the socket's ``endpoints`` needs it."""
    sock.setsockopt(zmq.LINGER, to_ms(options.linger))
    sock.setsockopt(zmq.HEARTBEAT_IVL, to_ms(options.heartbeat_ivl))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, to_ms(options.heartbeat_timeout))
    sock.setsockopt(zmq.HEARTBEAT_TTL, to_ms(options.heartbeat_ttl))
    sock.setsockopt(zmq.SNDBUF, options.tcp_sndbuf)
    sock.setsockopt(zmq.RCVBUF, options.tcp_rcvbuf)
    if any(_wants_ipv6(endpoint, options) for endpoint in endpoints):
        sock.setsockopt(zmq.IPV6, 1)

"""RAIN's ZeroMQ transport: CURVE-secured DEALER clients and ROUTER listeners.

Registered for ``tcp://`` and ``ipc://`` endpoints through the ``rain_envelopes.transports``
entry-point group (both name :data:`ZMQ`), so ``rain_envelopes`` finds it without importing zmq.
"""

from .client import LinkState
from .options import ZmqOptions
from .security import ZapAuthenticator, address_allowed, parse_allowlist
from .transport import (
    HandshakeFailed,
    PeerGone,
    ZmqPeerTransport,
    ZmqTransport,
    ZmqTransportFactory,
    ZmqTransportListener,
)

__all__ = [
    "ZMQ",
    "HandshakeFailed",
    "LinkState",
    "PeerGone",
    "ZapAuthenticator",
    "ZmqOptions",
    "ZmqPeerTransport",
    "ZmqTransport",
    "ZmqTransportFactory",
    "ZmqTransportListener",
    "address_allowed",
    "parse_allowlist",
]

#: The transport factory registered for the ``tcp`` and ``ipc`` URI schemes.
ZMQ = ZmqTransportFactory()

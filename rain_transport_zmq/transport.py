"""ZeroMQ transports: a DEALER client and a ROUTER listener with one Transport per peer.

Wire format: one envelope per single-part ZeroMQ message. Two-part messages whose first part is
empty are transport control, never handed to the session:

- ``["", "hello"]`` client -> server, sent once the handshake succeeded. It makes the peer known
  to the listener (``accept()`` returns its transport) before its first envelope.
- ``["", "bye"]`` server -> client: the server closed this peer's transport (revocation,
  ``close_peer``, flooding). A ROUTER cannot drop one connection, so it asks the client to.

The client lives in :mod:`rain_transport_zmq.client`, the listener in
:mod:`rain_transport_zmq.listener`; their module docstrings state their invariants. This module
gathers both and the factory registered for ``tcp://`` and ``ipc://``. ``HandshakeFailed`` and
``PeerGone`` live in :mod:`rain_envelopes.errors`; they are re-exported here so that code which
imported them from this package keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rain_envelopes.errors import HandshakeFailed, PeerGone
from rain_envelopes.transport import (
    ClientSecurity,
    ServerSecurity,
    Transport,
    TransportFactory,
    TransportListener,
)

from .client import ZmqTransport
from .listener import ZmqPeerTransport, ZmqTransportListener
from .options import ZmqOptions

__all__ = [
    "HandshakeFailed",
    "PeerGone",
    "ZmqPeerTransport",
    "ZmqTransport",
    "ZmqTransportFactory",
    "ZmqTransportListener",
]


class ZmqTransportFactory(TransportFactory):
    """Makes ZeroMQ transports for ``tcp://`` and ``ipc://`` endpoints (entry point ``ZMQ``)."""

    secure = True  # CURVE is on unless a caller asks for insecure

    def connect(
        self,
        endpoint: str,
        security: ClientSecurity | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Transport:
        """A client transport (not yet opened). Raises ConfigError without keys unless
        ``security.insecure``."""
        return ZmqTransport(endpoint, security, options)

    def listen(
        self,
        endpoints: Sequence[str],
        security: ServerSecurity | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> TransportListener:
        """A listener (not yet started). Raises ConfigError without keys unless
        ``security.insecure``."""
        return ZmqTransportListener(endpoints, security, options)

    def check_options(self, options: Mapping[str, Any]) -> None:
        """ConfigError for an unknown option or a bad value, as ``listen`` would raise."""
        ZmqOptions.from_mapping(options)

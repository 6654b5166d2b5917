"""RAIN over NATS: sessions through a broker, for many sites (optional extra ``nats``).

Registered for ``nats://`` endpoints through the ``rain_envelopes.transports`` entry-point group
(:data:`NATS`), so ``rain_envelopes`` finds it without importing nats-py. The RAIN identity file
is the NATS credential (:mod:`.nkey`); the subject scheme, which lets the broker vouch for the
identity a frame's subject names, is described in :mod:`.subjects`; the transport itself in
:mod:`.transport`; ``rain nats-config`` (the broker's authorization block from authorised keys and
access rules) in :mod:`.config`; publishing once for many subscribers in :mod:`.fanout`;
store-and-forward archives in :mod:`.archive`; the broker connection they share (nkey login,
error mapping, :func:`~.connection.barrier`) in :mod:`.connection`.
"""

from .nkey import is_user_nkey, user_nkey, user_public_key, user_seed
from .transport import (
    NatsOptions,
    NatsPeerTransport,
    NatsTransport,
    NatsTransportFactory,
    NatsTransportListener,
    parse_endpoint,
)

__all__ = [
    "NATS",
    "NatsOptions",
    "NatsPeerTransport",
    "NatsTransport",
    "NatsTransportFactory",
    "NatsTransportListener",
    "is_user_nkey",
    "parse_endpoint",
    "user_nkey",
    "user_public_key",
    "user_seed",
]

#: The transport factory registered for the ``nats`` URI scheme.
NATS = NatsTransportFactory()

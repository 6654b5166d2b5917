"""RAIN: LIME-style envelopes for research instruments, over any transport.

Everything a user needs is importable from here::

    from rain_envelopes import ClientChannel, Command, connect

    channel = await connect("tcp://127.0.0.1:4505", identity=keys, server_key=server_pub)
    reply = await channel.send_command(Command("get", "/params/temp"))

Layers (each enforced by a test): the protocol core (``envelopes``, ``node``, ``codec``,
``session``, ``protocol``, ``auth``, ``keys``) does no I/O and imports neither asyncio nor zmq;
key files are read and written by ``keyfiles``; ``transport`` (the contract), ``memory`` and
``channel`` are the asyncio shell; this package never imports zmq: the ZeroMQ transport is found
through the ``rain_envelopes.transports`` entry-point group.
"""

from .auth import ClientCredentials, ServerAuthenticator
from .channel import Channel, ClientChannel, ServerChannel, connect
from .client import Backoff, Client, ClientState, StateChange, Update
from .codec import decode, encode
from .envelopes import (
    AuthenticationScheme,
    Command,
    CommandMethod,
    CommandStatus,
    Envelope,
    Message,
    Notification,
    NotificationEvent,
    Reason,
    ReasonCode,
    Session,
    SessionCompression,
    SessionEncryption,
    SessionState,
)
from .errors import (
    AuthenticationFailed,
    ChannelClosed,
    ClientClosed,
    CommandFailed,
    CommandRefused,
    CommandTimeout,
    ConfigError,
    Disconnected,
    EnvelopeDecodeError,
    EnvelopeKind,
    EnvelopeValidationError,
    EstablishTimeout,
    HandshakeFailed,
    KeyFileError,
    LocalProtocolError,
    NotDone,
    PeerGone,
    ProtocolError,
    QueueFull,
    RainError,
    RemoteProtocolError,
    ResponseTimeout,
    SecurityCause,
    SessionError,
    SessionFailed,
    StateStoreError,
    TransportClosed,
    TransportError,
    TransportSecurityError,
)
from .keys import AuthorizedKeys, Identity, KnownHosts
from .node import Node
from .protocol import ClientProtocol, NodeRegistry, ServerProtocol
from .sync import BlockingClient
from .transport import (
    ClientSecurity,
    ServerSecurity,
    Transport,
    TransportFactory,
    TransportListener,
    transport_factory,
)

__version__ = "0.1.0"

__all__ = [
    "AuthenticationFailed",
    "AuthenticationScheme",
    "AuthorizedKeys",
    "Backoff",
    "BlockingClient",
    "Channel",
    "ChannelClosed",
    "Client",
    "ClientChannel",
    "ClientClosed",
    "ClientCredentials",
    "ClientProtocol",
    "ClientSecurity",
    "ClientState",
    "Command",
    "CommandFailed",
    "CommandMethod",
    "CommandRefused",
    "CommandStatus",
    "CommandTimeout",
    "ConfigError",
    "Disconnected",
    "Envelope",
    "EnvelopeDecodeError",
    "EnvelopeKind",
    "EnvelopeValidationError",
    "EstablishTimeout",
    "HandshakeFailed",
    "Identity",
    "KeyFileError",
    "KnownHosts",
    "LocalProtocolError",
    "Message",
    "Node",
    "NodeRegistry",
    "NotDone",
    "Notification",
    "NotificationEvent",
    "PeerGone",
    "ProtocolError",
    "QueueFull",
    "RainError",
    "Reason",
    "ReasonCode",
    "RemoteProtocolError",
    "ResponseTimeout",
    "SecurityCause",
    "ServerAuthenticator",
    "ServerChannel",
    "ServerProtocol",
    "ServerSecurity",
    "Session",
    "SessionCompression",
    "SessionEncryption",
    "SessionError",
    "SessionFailed",
    "SessionState",
    "StateChange",
    "StateStoreError",
    "Transport",
    "TransportClosed",
    "TransportError",
    "TransportFactory",
    "TransportListener",
    "TransportSecurityError",
    "Update",
    "connect",
    "decode",
    "encode",
    "transport_factory",
]

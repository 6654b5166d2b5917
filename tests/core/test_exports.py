"""``rain_envelopes.__all__`` is exactly the public API, and every name in it exists."""

from __future__ import annotations

import rain_envelopes

EXPECTED = {
    # envelopes and their enums
    "Envelope", "Message", "Notification", "Command", "Session", "Reason", "ReasonCode",
    "CommandMethod", "CommandStatus", "NotificationEvent", "SessionState", "SessionCompression",
    "SessionEncryption", "AuthenticationScheme", "Node",
    # codec
    "encode", "decode",
    # sans-I/O protocol and authentication
    "ClientProtocol", "ServerProtocol", "NodeRegistry", "ServerAuthenticator",
    "ClientCredentials", "Identity", "AuthorizedKeys", "KnownHosts",
    # channels and transports
    "Channel", "ClientChannel", "ServerChannel", "connect", "Transport", "TransportListener",
    "TransportFactory", "ClientSecurity", "ServerSecurity", "transport_factory",
    # the reconnecting client
    "Client", "ClientState", "StateChange", "Backoff", "Update",
    # the blocking API over it (rain_envelopes.sync)
    "BlockingClient",
    # errors
    "RainError", "ProtocolError", "LocalProtocolError", "RemoteProtocolError",
    "EnvelopeDecodeError", "EnvelopeValidationError", "SessionError", "SessionFailed",
    "AuthenticationFailed", "EstablishTimeout", "CommandFailed", "CommandTimeout",
    "ChannelClosed", "KeyFileError", "ConfigError", "TransportError", "TransportClosed",
    "QueueFull", "TransportSecurityError", "NotDone", "Disconnected", "ResponseTimeout",
    "ClientClosed", "StateStoreError", "CommandRefused",
    "HandshakeFailed", "PeerGone", "SecurityCause", "EnvelopeKind",
}


def test_all_is_exactly_the_public_api() -> None:
    assert set(rain_envelopes.__all__) == EXPECTED
    assert len(rain_envelopes.__all__) == len(set(rain_envelopes.__all__))


def test_every_exported_name_exists() -> None:
    for name in rain_envelopes.__all__:
        assert getattr(rain_envelopes, name) is not None, name


def test_errors_follow_the_documented_tree() -> None:
    e = rain_envelopes
    assert issubclass(e.EnvelopeDecodeError, e.RemoteProtocolError)
    assert issubclass(e.RemoteProtocolError, e.ProtocolError)
    assert issubclass(e.ProtocolError, e.RainError)
    assert issubclass(e.CommandTimeout, TimeoutError)
    assert issubclass(e.EstablishTimeout, TimeoutError)
    assert issubclass(e.TransportError, OSError)
    assert issubclass(e.TransportClosed, e.TransportError)
    assert issubclass(e.AuthenticationFailed, e.SessionFailed)
    assert issubclass(e.ConfigError, ValueError)
    assert issubclass(e.HandshakeFailed, e.TransportSecurityError)
    assert issubclass(e.PeerGone, e.QueueFull)
    assert issubclass(e.PeerGone, e.TransportClosed)
    assert e.SecurityCause.REFUSED == "refused"  # the strings of earlier versions still match
    assert e.EnvelopeKind.COMMAND == "command"
    # The tree is drawn in the errors module docstring: every class appears in it.
    import rain_envelopes.errors as errors_module

    doc = errors_module.__doc__ or ""
    for name in errors_module.__all__:
        assert name in doc, name

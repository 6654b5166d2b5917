"""Every exception RAIN raises on purpose.

Library errors (orjson, pynacl, pyzmq, OS calls) are translated into these at one boundary per
library, so callers only ever need to catch what is drawn here::

    RainError
    ├── ProtocolError                  the LIME protocol was not followed
    │   ├── LocalProtocolError         ... by us: we tried something the state machine forbids
    │   └── RemoteProtocolError        ... by the peer; carries the reason to answer with
    │       └── EnvelopeDecodeError    bytes that are no valid envelope; message names the JSON path
    ├── EnvelopeValidationError        (also ValueError) an envelope built with bad field values
    ├── SessionError                   the session could not be established or has ended
    │   ├── SessionFailed              the server sent `failed`; carries the reason
    │   │   └── AuthenticationFailed   credentials refused (code 13)
    │   └── EstablishTimeout           (also TimeoutError) no established session in time
    ├── CommandFailed                  a command answered with status failure; carries the reason
    ├── CommandRefused                 raised by a command handler: answer with this reason
    │   └── ParameterError             (server) plugin code refuses a request with a code
    │       ├── InvalidValue           the value is not acceptable (code 64)
    │       └── NotAllowed             not allowed in the current state (code 66)
    ├── CommandTimeout                 (also TimeoutError) no response in time
    ├── ChannelClosed                  the channel ended while we were waiting on it
    ├── NotDone                        (client.Client) not carried out; repeating it is safe
    │   ├── Disconnected               no session to carry it within its time, or the link was lost
    │   ├── ResponseTimeout            (also CommandTimeout) sent, no answer within its time
    │   └── ClientClosed               the client was closed (or gave up) first
    ├── KeyFileError                   a key file is missing, malformed or has unsafe permissions
    ├── ConfigError                    (also ValueError) a bad configuration value; names the key
    ├── StateStoreError                the server's state file cannot be used; names it and the fix
    ├── PluginError                    (server) a plugin cannot be loaded; names file and line
    └── TransportError                 (also OSError) the link failed
        ├── TransportClosed            the link has ended; nothing more will be received
        ├── QueueFull                  the peer's queue is full; the frame was not sent
        │   └── PeerGone               (also TransportClosed) the peer's connection is gone
        └── TransportSecurityError     the transport's security could not be set up safely
            └── HandshakeFailed        the secure handshake failed; ``cause`` says which way

Invariant: the receive path (decode, protocol, channel dispatch) lets nothing but these escape.

The four server errors live here, in the one tree, and are imported from
``rain_envelopes.server`` (where plugin code finds them); their codes are written as numbers
because this module is below ``envelopes`` (the server's tests pin them to ``ReasonCode``).

Kinds are enums, not loose strings: a :class:`TransportSecurityError`'s ``cause`` is a
:class:`SecurityCause` and an :class:`EnvelopeDecodeError`'s ``kind`` an :class:`EnvelopeKind`
(StrEnums, so they still compare equal to ``"refused"``, ``"command"`` and the rest).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .envelopes import Reason

__all__ = [
    "AuthenticationFailed",
    "ChannelClosed",
    "ClientClosed",
    "CommandFailed",
    "CommandRefused",
    "CommandTimeout",
    "ConfigError",
    "Disconnected",
    "EnvelopeDecodeError",
    "EnvelopeKind",
    "EnvelopeValidationError",
    "EstablishTimeout",
    "HandshakeFailed",
    "InvalidValue",
    "KeyFileError",
    "LocalProtocolError",
    "NotAllowed",
    "NotDone",
    "ParameterError",
    "PeerGone",
    "PluginError",
    "ProtocolError",
    "QueueFull",
    "RainError",
    "RemoteProtocolError",
    "ResponseTimeout",
    "SecurityCause",
    "SessionError",
    "SessionFailed",
    "StateStoreError",
    "TransportClosed",
    "TransportError",
    "TransportSecurityError",
]


class RainError(Exception):
    """Root of every error RAIN raises on purpose."""


class ProtocolError(RainError):
    """The LIME protocol was not followed."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the session state machine forbids (a bug in the caller)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol.

    ``code`` is the LIME reason code to answer with (15 wrong state, 11 session error, ...).
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class EnvelopeKind(StrEnum):
    """The four kinds of LIME envelope, as the codec tells them apart by their keys
    (:attr:`EnvelopeDecodeError.kind`).

    Members compare equal to the strings earlier versions used (``kind == "command"`` still
    holds). The codec looks for the keys in this order: an object with a ``content`` is a
    message whatever else it has, and so on down to ``state``.
    """

    #: Has a ``content``: a message, to be delivered (and perhaps receipted).
    MESSAGE = "message"
    #: Has an ``event``: a notification, a receipt about an earlier message.
    NOTIFICATION = "notification"
    #: Has a ``method``: a command, a request on a resource or the response to one.
    COMMAND = "command"
    #: Has a ``state``: a session envelope, a step of establishing or ending the session.
    SESSION = "session"


class EnvelopeDecodeError(RemoteProtocolError):
    """The bytes received are not a valid envelope.

    The message names the JSON path of the fault, e.g. ``$.reason.code: expected int, got str``.
    ``envelope_id`` is the ``id`` of the offending object when it could be read, so a reply can
    echo it; ``kind`` is the :class:`EnvelopeKind` when it could be told (None for bytes that
    are not even a JSON object with one of the four telling keys). The protocol decides from
    these three whether and how to answer the peer (``reply_to_error``).
    """

    def __init__(
        self,
        message: str,
        *,
        code: int = 21,
        envelope_id: str | None = None,
        kind: EnvelopeKind | None = None,
        method: str | None = None,
        is_response: bool = False,
    ) -> None:
        super().__init__(message, code)
        self.envelope_id = envelope_id
        #: What the offending object was, when its keys said so.
        self.kind = kind
        #: For a command: its method when readable, and whether it was a response (never answered).
        self.method = method
        self.is_response = is_response


class EnvelopeValidationError(RainError, ValueError):
    """An envelope (or a Node, or a Reason) was constructed with invalid field values."""


class SessionError(RainError):
    """The session could not be established, or it has ended."""


class SessionFailed(SessionError):
    """The server ended the session with ``failed``; ``reason`` says why."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(f"session failed: {reason}")
        self.reason = reason


class AuthenticationFailed(SessionFailed):
    """The server refused our credentials (LIME code 13)."""


class EstablishTimeout(SessionError, TimeoutError):
    """No established session within the establishment timeout."""


class CommandFailed(RainError):
    """A command was answered with status ``failure``; ``reason`` and ``response`` say why."""

    def __init__(self, reason: Reason, response: object = None) -> None:
        super().__init__(str(reason))
        self.reason = reason
        self.response = response


class CommandRefused(RainError):
    """Raised by a command handler to refuse the request: the peer gets a ``failure`` with
    ``reason``.

    The one way a handler says no. A channel's ``on_command`` returns a response (or None for
    no answer) or raises; the channel turns a CommandRefused, raised at once or by the
    awaitable the handler returned, into ``command.failure(reason)`` in one place, and
    anything else it raises into a logged internal error. Build it from a :class:`Reason`, or
    from a description and a ``code`` (default: the class's ``code``, 61 processing error).
    The description is sent to the peer as is: keep it short and free of secrets.
    """

    #: The reason code used when none is given (ReasonCode.COMMAND_PROCESSING_ERROR).
    code: int = 61

    def __init__(self, reason: Reason | str, *, code: int | None = None) -> None:
        if isinstance(reason, str):
            description: str | None = reason
            if code is not None:
                self.code = int(code)
        else:
            description = reason.description
            self.code = reason.code
        super().__init__(description or "")
        self.description = description or ""

    @property
    def reason(self) -> Reason:
        """The reason to answer with."""
        from .envelopes import Reason  # here, not at the top: envelopes imports this module

        return Reason(self.code, self.description)


class CommandTimeout(RainError, TimeoutError):
    """No response to a command within its timeout."""


class ChannelClosed(RainError):
    """The channel ended (finished, failed or link lost) while something was waiting on it."""


class NotDone(RainError):
    """The reconnecting client could not carry a request out; repeating it is safe.

    The one family to catch for "try again" when using :class:`rain_envelopes.client.Client`:
    it never lets ``ChannelClosed``, ``SessionError``, ``TransportError`` or a transport's own
    exceptions escape for a lost link. Safe to repeat because gets, subscribes and unsubscribes
    are idempotent and a set keeps one command id (answered once by the server) and carries an
    expiry (never applied after its caller gave up). ``cause`` is the underlying error, if any.
    """

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class Disconnected(NotDone):
    """No established session to carry the request within its time (or the caller chose not to
    wait for one), or the session was lost under it and no time was left to try again."""


class ResponseTimeout(NotDone, CommandTimeout):
    """The request was sent but no response came within its time (also a CommandTimeout)."""


class ClientClosed(NotDone):
    """The client was closed, or gave up reconnecting, before the request could be done."""


class KeyFileError(RainError):
    """A key file is missing, malformed, or has permissions that expose a secret."""


class ConfigError(RainError, ValueError):
    """A configuration value is wrong. The message names the key and what was expected."""


class StateStoreError(RainError):
    """The server's state file cannot be used; the message names the file and what to do.

    Raised instead of ever resetting the file: unreadable, not a database, corrupt, from a newer
    format version, or in use by another server. ``path`` is the state file.
    """

    def __init__(self, message: str, *, path: object) -> None:
        super().__init__(message)
        self.path = path


class ParameterError(CommandRefused):
    """Raise from plugin code (a getter, setter or scan) to refuse a request with a reason code.

    ``ParameterError(description, code=N)``; without ``code``, 61 (processing error). The
    server answers the request with that code and description, and nothing else of the
    request happens. The description is sent to the client as is, so keep it short and free
    of secrets. Imported from ``rain_envelopes.server``.
    """

    def __init__(self, description: str, *, code: int | None = None) -> None:
        super().__init__(description, code=code)


class InvalidValue(ParameterError):
    """The value is not acceptable (code 64, ReasonCode.COMMAND_INVALID_ARGUMENT)."""

    code = 64


class NotAllowed(ParameterError):
    """The request is not allowed in the current state (code 66, ReasonCode.COMMAND_NOT_ALLOWED)."""

    code = 66


class PluginError(RainError):
    """A plugin failed to import, or declared a parameter wrongly or twice; stops start-up.

    ``path`` and ``line`` locate the culprit when known; they are also in the message.
    Imported from ``rain_envelopes.server``.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = f"{path}:{line}: " if path and line else f"{path}: " if path else ""
        super().__init__(where + message)
        self.path = path
        self.line = line


class TransportError(RainError, OSError):
    """The link to the peer failed."""


class TransportClosed(TransportError):
    """The link has ended: nothing more will be received and nothing can be sent."""


class QueueFull(TransportError):
    """The peer's queue is full (or the peer is unknown): the frame was not sent."""


class SecurityCause(StrEnum):
    """Why a transport's security could not be set up (:attr:`TransportSecurityError.cause`).

    Members compare equal to the strings earlier versions used (``cause == "refused"`` still
    holds), so code written against those strings keeps working.
    """

    #: The server definitively refused our key or our address: retrying will not help.
    REFUSED = "refused"
    #: The server could not complete the handshake with us, most likely because the pinned
    #: server key is not the server's. A link that broke mid-handshake (a server restarting)
    #: can look the same, so this is not final.
    SERVER_KEY = "server-key"
    #: The peer speaks another security mechanism (CURVE against none, say), or the handshake
    #: broke in a way that names nothing more precise.
    PROTOCOL = "protocol"


class TransportSecurityError(TransportError):
    """The transport's security could not be set up safely, so it refuses to run.

    ``cause`` may say more (a :class:`SecurityCause`, None when nothing more is known):
    :attr:`SecurityCause.REFUSED` is final; the others may also come from a link that broke
    mid-handshake, e.g. while a server restarts.
    """

    cause: SecurityCause | None = None


class HandshakeFailed(TransportSecurityError):
    """The secure handshake with the peer failed; ``cause`` says which way.

    Raised by transports that run a handshake of their own (ZeroMQ CURVE): by ``open`` on a
    client, and by ``receive`` once the link ended that way. ``cause`` is always set here.
    """

    def __init__(self, message: str, cause: SecurityCause = SecurityCause.PROTOCOL) -> None:
        super().__init__(message)
        self.cause: SecurityCause = SecurityCause(cause)


class PeerGone(QueueFull, TransportClosed):
    """The peer's connection is gone: the frame was not sent and the transport is closed.

    A QueueFull (the frame was refused, as when the peer is unknown) and a TransportClosed
    (nothing more will come on this link), so callers catching either see it.
    """

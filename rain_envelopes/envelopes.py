"""The four LIME envelopes (Message, Notification, Command, Session), Reason, and their enums.

Envelopes are frozen, slotted dataclasses whose constructors validate and normalise their fields,
so an envelope that exists is one that can be sent: ``Command("GET", "/params/temp")`` has method
``get``; ``Command("fly", "/x")`` raises EnvelopeValidationError naming the allowed methods.
Node fields accept ``"name@domain/instance"`` strings and hold :class:`Node` objects.

Field names are the wire names in snake_case; only ``from`` is spelled ``from_``. Unknown wire
keys a peer sent survive in ``extras`` so a relayed envelope loses nothing. This module is part
of the pure protocol core: no I/O, no asyncio, no zmq.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, TypeVar

from .errors import EnvelopeValidationError
from .node import Node

__all__ = [
    "AuthenticationScheme",
    "Command",
    "CommandMethod",
    "CommandStatus",
    "Envelope",
    "Message",
    "Notification",
    "NotificationEvent",
    "Reason",
    "ReasonCode",
    "Session",
    "SessionCompression",
    "SessionEncryption",
    "SessionState",
    "is_json_media_type",
]


class CommandMethod(StrEnum):
    GET = "get"
    SET = "set"
    DELETE = "delete"
    MERGE = "merge"
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    OBSERVE = "observe"


class CommandStatus(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    # LIME defines `pending` but it is never final and never sent on the wire by us.
    PENDING = "pending"


class NotificationEvent(StrEnum):
    ACCEPTED = "accepted"
    DISPATCHED = "dispatched"
    RECEIVED = "received"
    CONSUMED = "consumed"
    FAILED = "failed"
    # Obsolete in LIME, still decoded so old peers are understood.
    VALIDATED = "validated"
    AUTHORIZED = "authorized"


class SessionState(StrEnum):
    NEW = "new"
    NEGOTIATING = "negotiating"
    AUTHENTICATING = "authenticating"
    ESTABLISHED = "established"
    FINISHING = "finishing"
    FINISHED = "finished"
    FAILED = "failed"


class SessionCompression(StrEnum):
    NONE = "none"
    GZIP = "gzip"


class SessionEncryption(StrEnum):
    NONE = "none"
    TLS = "tls"
    # RAIN extension: reported when the ZeroMQ link is CURVE-secured (never negotiated).
    CURVE = "curve"


class AuthenticationScheme(StrEnum):
    GUEST = "guest"
    PLAIN = "plain"
    KEY = "key"
    TRANSPORT = "transport"
    EXTERNAL = "external"
    # RAIN extension: Ed25519 challenge/signature, transport-independent.
    KEYPAIR = "keypair"


class ReasonCode(IntEnum):
    """LIME's reason codes (PROTOCOL.md). RAIN's own codes start at 1000."""

    GENERAL_ERROR = 1
    SESSION_ERROR = 11
    SESSION_REGISTRATION_ERROR = 12
    SESSION_AUTHENTICATION_FAILED = 13
    SESSION_UNREGISTER_FAILED = 14
    SESSION_INVALID_ACTION_FOR_STATE = 15
    SESSION_NEGOTIATION_TIMEOUT = 16
    SESSION_NEGOTIATION_INVALID_OPTIONS = 17
    VALIDATION_ERROR = 21
    VALIDATION_EMPTY_DOCUMENT = 22
    VALIDATION_INVALID_RESOURCE = 23
    VALIDATION_INVALID_STATUS = 24
    VALIDATION_INVALID_IDENTITY = 25
    VALIDATION_INVALID_RECIPIENTS = 26
    VALIDATION_INVALID_METHOD = 27
    AUTHORIZATION_ERROR = 31
    AUTHORIZATION_UNAUTHORIZED_SENDER = 32
    AUTHORIZATION_DESTINATION_NOT_FOUND = 33
    AUTHORIZATION_QUOTA_EXCEEDED = 34
    AUTHORIZATION_PERMISSION_REQUIRED = 35
    ROUTING_ERROR = 41
    ROUTING_DESTINATION_NOT_FOUND = 42
    ROUTING_GATEWAY_NOT_FOUND = 43
    ROUTING_ROUTE_NOT_FOUND = 44
    DISPATCH_ERROR = 51
    COMMAND_PROCESSING_ERROR = 61
    COMMAND_RESOURCE_NOT_SUPPORTED = 62
    COMMAND_METHOD_NOT_SUPPORTED = 63
    COMMAND_INVALID_ARGUMENT = 64
    COMMAND_NOT_ALLOWED = 66
    COMMAND_RESOURCE_NOT_FOUND = 67
    MESSAGE_UNSUPPORTED_CONTENT_TYPE = 71
    APPLICATION_ERROR = 101
    # RAIN's own codes.
    COMMAND_EXPIRED = 1001
    QUEUE_OVERFLOW = 1002


_E = TypeVar("_E", bound=StrEnum)


def _enum(enum: type[_E], value: object, what: str) -> _E:
    if isinstance(value, enum):
        return value
    if isinstance(value, str):
        try:
            return enum(value.lower())
        except ValueError:
            pass
    allowed = ", ".join(member.value for member in enum)
    raise EnvelopeValidationError(f"{what} must be one of {allowed}; got {value!r}")


def _enum_tuple(enum: type[_E], values: object, what: str) -> tuple[_E, ...] | None:
    if values is None:
        return None
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise EnvelopeValidationError(f"{what} must be a list")
    return tuple(_enum(enum, value, what) for value in values)


def is_json_media_type(media_type: str) -> bool:
    """True for ``application/json`` and any ``.../...+json`` type (parameters ignored)."""
    base = media_type.split(";", 1)[0].strip().lower()
    return base == "application/json" or base.endswith("+json")


def _check_str(value: object, what: str, *, allow_empty: bool = True) -> None:
    if not isinstance(value, str):
        raise EnvelopeValidationError(f"{what} must be a string, got {type(value).__name__}")
    if not allow_empty and not value:
        raise EnvelopeValidationError(f"{what} must not be empty")


@dataclass(frozen=True, slots=True)
class Reason:
    """Why something failed: a LIME reason code and a human description."""

    code: int
    description: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.code, bool) or not isinstance(self.code, int):
            raise EnvelopeValidationError("reason code must be an integer")
        if self.description is not None:
            _check_str(self.description, "reason description")
        if isinstance(self.code, ReasonCode):
            object.__setattr__(self, "code", int(self.code))

    def __str__(self) -> str:
        return f"{self.code}: {self.description}" if self.description else str(self.code)


@dataclass(frozen=True, slots=True)
class Envelope:
    """Fields every envelope has. Never instantiated itself; use one of the four kinds."""

    _: KW_ONLY
    id: str | None = None
    from_: Node | None = None
    to: Node | None = None
    pp: Node | None = None
    metadata: Mapping[str, str] | None = None
    # Wire keys we do not know, kept verbatim so relaying loses nothing.
    extras: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if type(self) is Envelope:
            raise TypeError("Envelope is abstract: build a Message, Notification, Command, Session")
        if self.id is not None:
            _check_str(self.id, "id", allow_empty=False)
        for name in ("from_", "to", "pp"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Node):
                object.__setattr__(self, name, Node.coerce(value))
        if self.metadata is not None:
            if not isinstance(self.metadata, Mapping):
                raise EnvelopeValidationError("metadata must be a mapping of strings to strings")
            for key, value in self.metadata.items():
                if not isinstance(key, str) or not isinstance(value, str):
                    raise EnvelopeValidationError("metadata must map strings to strings")
        if self.extras is not None and not isinstance(self.extras, Mapping):
            raise EnvelopeValidationError("extras must be a mapping")

    @property
    def sender(self) -> Node | None:
        """The effective sender: ``pp`` when set, else ``from``."""
        return self.pp if self.pp is not None else self.from_

    def replace(self: _T, **changes: Any) -> _T:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


_T = TypeVar("_T", bound=Envelope)


@dataclass(frozen=True, slots=True)
class Message(Envelope):
    """Content of a media type sent to a node. With an ``id`` the receiver sends receipts."""

    type: str
    content: Any

    def __post_init__(self) -> None:
        Envelope.__post_init__(self)
        _check_str(self.type, "message type", allow_empty=False)
        if self.content is None:
            raise EnvelopeValidationError("message content is required")


@dataclass(frozen=True, slots=True)
class Notification(Envelope):
    """An event about a message (a receipt); ``id`` is the id of that message."""

    event: NotificationEvent
    reason: Reason | None = None

    def __post_init__(self) -> None:
        Envelope.__post_init__(self)
        object.__setattr__(self, "event", _enum(NotificationEvent, self.event, "event"))
        if self.reason is not None and not isinstance(self.reason, Reason):
            raise EnvelopeValidationError("notification reason must be a Reason")
        if self.event is NotificationEvent.FAILED and self.reason is None:
            raise EnvelopeValidationError("a failed notification needs a reason")


@dataclass(frozen=True, slots=True)
class Command(Envelope):
    """A request on a resource (no status) or the response to one (status set)."""

    method: CommandMethod
    uri: str | None = None
    _: KW_ONLY
    type: str | None = None
    resource: Any = None
    status: CommandStatus | None = None
    reason: Reason | None = None

    def __post_init__(self) -> None:
        Envelope.__post_init__(self)
        object.__setattr__(self, "method", _enum(CommandMethod, self.method, "method"))
        if self.status is not None:
            object.__setattr__(self, "status", _enum(CommandStatus, self.status, "status"))
        if self.uri is not None:
            _check_str(self.uri, "uri", allow_empty=False)
        if self.type is not None:
            _check_str(self.type, "command type", allow_empty=False)
        if self.reason is not None and not isinstance(self.reason, Reason):
            raise EnvelopeValidationError("command reason must be a Reason")
        # A request built without an id gets one from the channel that sends it; the codec
        # refuses one on the wire (only observe may go without).
        if self.status is None:
            if self.uri is None:
                raise EnvelopeValidationError("a command request needs a uri")
        elif self.status is CommandStatus.FAILURE and self.reason is None:
            raise EnvelopeValidationError("a failure response needs a reason")
        if self.resource is not None and self.type is None:
            raise EnvelopeValidationError("a command with a resource needs its media type")

    @property
    def is_request(self) -> bool:
        return self.status is None

    @property
    def is_response(self) -> bool:
        return self.status is not None

    def success(self, resource: Any = None, type: str | None = None) -> Command:
        """The success response to this request: same id and method, addressed back."""
        if resource is not None and type is None:
            type = "application/json"
        elif type is not None:
            _check_str(type, "command type", allow_empty=False)
        # Everything copied comes from a valid request; only `type` is new and checked above.
        return Command._unchecked(
            self.method, self.uri, id=self.id, to=self.sender, type=type, resource=resource,
            status=CommandStatus.SUCCESS,
        )

    @classmethod
    def _unchecked(
        cls,
        method: CommandMethod,
        uri: str | None,
        *,
        id: str | None,
        to: Node | None = None,
        type: str | None = None,
        resource: Any = None,
        status: CommandStatus | None = None,
    ) -> Command:
        """Build a Command skipping validation, for the hot path only: every value must already
        be what the constructor would accept (the codec's fast path, ``success()``)."""
        # Straight-line slot stores: measurably cheaper than a loop over (name, value) pairs.
        command = object.__new__(cls)
        set_ = object.__setattr__
        set_(command, "id", id)
        set_(command, "from_", None)
        set_(command, "to", to)
        set_(command, "pp", None)
        set_(command, "metadata", None)
        set_(command, "extras", None)
        set_(command, "method", method)
        set_(command, "uri", uri)
        set_(command, "type", type)
        set_(command, "resource", resource)
        set_(command, "status", status)
        set_(command, "reason", None)
        return command

    def failure(self, reason: Reason | int, description: str | None = None) -> Command:
        """The failure response to this request, with a reason (or a code and description)."""
        if not isinstance(reason, Reason):
            reason = Reason(int(reason), description)
        return Command(
            self.method, self.uri, id=self.id, to=self.sender,
            status=CommandStatus.FAILURE, reason=reason,
        )


@dataclass(frozen=True, slots=True)
class Session(Envelope):
    """A session negotiation, authentication or state-change envelope."""

    state: SessionState
    _: KW_ONLY
    encryption_options: tuple[SessionEncryption, ...] | None = None
    encryption: SessionEncryption | None = None
    compression_options: tuple[SessionCompression, ...] | None = None
    compression: SessionCompression | None = None
    scheme_options: tuple[AuthenticationScheme, ...] | None = None
    scheme: AuthenticationScheme | None = None
    authentication: Mapping[str, Any] | None = None
    reason: Reason | None = None

    def __post_init__(self) -> None:
        Envelope.__post_init__(self)
        object.__setattr__(self, "state", _enum(SessionState, self.state, "session state"))
        setter = object.__setattr__
        setter(self, "encryption_options",
               _enum_tuple(SessionEncryption, self.encryption_options, "encryptionOptions"))
        setter(self, "compression_options",
               _enum_tuple(SessionCompression, self.compression_options, "compressionOptions"))
        setter(self, "scheme_options",
               _enum_tuple(AuthenticationScheme, self.scheme_options, "schemeOptions"))
        if self.encryption is not None:
            setter(self, "encryption", _enum(SessionEncryption, self.encryption, "encryption"))
        if self.compression is not None:
            setter(self, "compression", _enum(SessionCompression, self.compression, "compression"))
        if self.scheme is not None:
            setter(self, "scheme", _enum(AuthenticationScheme, self.scheme, "scheme"))
        if self.authentication is not None and not isinstance(self.authentication, Mapping):
            raise EnvelopeValidationError("authentication must be an object")
        if self.reason is not None and not isinstance(self.reason, Reason):
            raise EnvelopeValidationError("session reason must be a Reason")
        if self.state is SessionState.FAILED and self.reason is None:
            raise EnvelopeValidationError("a failed session needs a reason")

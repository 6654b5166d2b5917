"""The four LIME envelopes (Message, Notification, Command, Session), Reason, and their enums.

Theory of operation
-------------------
Envelopes are frozen, slotted dataclasses whose constructors validate and normalise their fields,
so an envelope that exists is one that can be sent: ``Command("GET", "/params/temp")`` has method
``get``; ``Command("fly", "/x")`` raises EnvelopeValidationError naming the allowed methods.
Node fields accept ``"name@domain/instance"`` strings and hold :class:`Node` objects.

**The rules of a valid envelope live here and nowhere else.** The codec
(:mod:`rain_envelopes.codec`) reads JSON into Python values of the right *types* and then builds
the envelope through its constructor's *trusted path* (``_parsed=True``, after h11's parsed
events). The trusted path skips only what the codec has already made true by construction: the
type of each field (a ``str``, a :class:`Node`, a :class:`Reason`, a mapping) and the parsing of
enum values, which the codec does with the same :func:`enum_member` the constructors use. Every
rule about *values* (a non-empty ``uri``, a request needs a ``uri``, a failure needs a reason, a
resource needs its media type) runs on both paths. A broken rule raises EnvelopeValidationError
carrying a :class:`WireFault` (the wire key, the LIME reason code), so the codec can answer
``$.uri: ...`` with code 27 without restating the rule.

Enum values are read case-insensitively in ASCII only: ``"GET"`` is ``get``, but ``"\\u212aey"``
(a Kelvin sign, which full Unicode lower-casing turns into ``k``) is not ``key``. Both the
constructors and the codec fold through :func:`enum_member`, so they cannot disagree.

Field names are the wire names in snake_case; only ``from`` is spelled ``from_``. Unknown wire
keys a peer sent survive in ``extras`` so a relayed envelope loses nothing.

Every ``#:`` comment on an enum member below is documentation: ``docs/generate.py`` reads them
into the reference pages (reason codes, wire format), so the meaning sits next to the value.

This module is part of the pure protocol core: no I/O, no asyncio, no zmq.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, NamedTuple, TypeVar, cast

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
    """What a command does to its resource (LIME ``method``)."""

    #: Read the resource at ``uri``.
    GET = "get"
    #: Replace the resource at ``uri`` with the command's ``resource``.
    SET = "set"
    #: Remove the resource at ``uri``.
    DELETE = "delete"
    #: Merge the command's ``resource`` into the resource at ``uri``.
    MERGE = "merge"
    #: Ask for an ``observe`` command each time the resource at ``uri`` changes.
    SUBSCRIBE = "subscribe"
    #: Stop the updates a ``subscribe`` started.
    UNSUBSCRIBE = "unsubscribe"
    #: A change of a subscribed resource, pushed by its owner; the only request sent without an
    #: ``id``, because it is never answered.
    OBSERVE = "observe"


class CommandStatus(StrEnum):
    """How a command was answered (LIME ``status``); a request has none."""

    #: The request was carried out; a ``get`` carries the resource.
    SUCCESS = "success"
    #: The request was refused or failed; the response carries a ``reason``.
    FAILURE = "failure"
    #: LIME's interim answer. It is never final and RAIN never sends it, but reads it.
    PENDING = "pending"


class NotificationEvent(StrEnum):
    """What happened to a message (LIME ``event``); a notification's ``id`` is the message's."""

    #: The server accepted the message for delivery.
    ACCEPTED = "accepted"
    #: The message left the server towards its destination.
    DISPATCHED = "dispatched"
    #: The destination received the message (RAIN's receipt for a message with an ``id``).
    RECEIVED = "received"
    #: The destination's application handled the message.
    CONSUMED = "consumed"
    #: The message could not be processed; the notification carries a ``reason``.
    FAILED = "failed"
    #: Obsolete in LIME; still decoded so old peers are understood.
    VALIDATED = "validated"
    #: Obsolete in LIME; still decoded so old peers are understood.
    AUTHORIZED = "authorized"


class SessionState(StrEnum):
    """Where a session is (LIME ``state``); only the server changes it, the client asks."""

    #: The client opens (or asks for) a session; the state before any exchange.
    NEW = "new"
    #: Compression and encryption are being agreed: the server offers, the client chooses.
    NEGOTIATING = "negotiating"
    #: The client proves who it is: the server offers schemes, the client answers.
    AUTHENTICATING = "authenticating"
    #: Messages, notifications and commands may flow both ways.
    ESTABLISHED = "established"
    #: The client asked to end the session; the server may still deliver what it had in flight.
    FINISHING = "finishing"
    #: The server ended the session normally.
    FINISHED = "finished"
    #: The server ended the session on an error; the envelope carries a ``reason``.
    FAILED = "failed"


class SessionCompression(StrEnum):
    """How the frames of a session are compressed once it is negotiated."""

    #: Frames travel as plain UTF-8 JSON.
    NONE = "none"
    #: Each frame is one gzip member (RFC 1952) of the JSON.
    GZIP = "gzip"


class SessionEncryption(StrEnum):
    """How the link under a session is protected; RAIN reports it, never switches it."""

    #: Nothing encrypts the link (or RAIN cannot tell).
    NONE = "none"
    #: LIME's TLS upgrade; read, never offered by RAIN's transports.
    TLS = "tls"
    #: RAIN extension: the ZeroMQ link is CURVE-secured (reported, never negotiated).
    CURVE = "curve"


class AuthenticationScheme(StrEnum):
    """How a client proves its identity (LIME ``scheme``)."""

    #: No proof: the client is a guest, if the server allows guests.
    GUEST = "guest"
    #: LIME's password scheme; read, never offered by RAIN.
    PLAIN = "plain"
    #: LIME's shared-key scheme; read, never offered by RAIN.
    KEY = "key"
    #: The transport already proved the client's key (ZeroMQ CURVE).
    TRANSPORT = "transport"
    #: LIME's external-provider scheme; read, never offered by RAIN.
    EXTERNAL = "external"
    #: RAIN extension: an Ed25519 signature over a fresh server challenge, over any transport.
    KEYPAIR = "keypair"


class ReasonCode(IntEnum):
    """LIME's reason codes (PROTOCOL.md). RAIN's own codes start at 1000.

    Each member's ``#:`` comment says what the code means in LIME, then, after ``In RAIN:``,
    when RAIN itself sends or raises it; ``docs/reference/reason-codes.md`` is built from them.
    """

    #: General error.
    #: In RAIN: Default code of a `RemoteProtocolError` raised without one; a channel whose reader
    #: fails internally ends with it.
    GENERAL_ERROR = 1
    #: Session error: invalid session id, establishment failed, server shutting down.
    #: In RAIN: A session id that does not match, a first server session envelope with no id, a
    #: frame after the session ended, an undecodable keypair challenge, a failed link, a peer that
    #: stopped answering pings.
    SESSION_ERROR = 11
    #: Session registration error: the node already has a session.
    #: In RAIN: `NodeRegistry.register` when the same `name@domain/instance` is already connected.
    SESSION_REGISTRATION_ERROR = 12
    #: Authentication failed.
    #: In RAIN: Unknown key, bad or replayed signature, guest not enabled, transport key not
    #: authorised, no scheme available; also an unknown `scheme` value on decode. The client raises
    #: `AuthenticationFailed`.
    SESSION_AUTHENTICATION_FAILED = 13
    #: Unregister failed.
    #: In RAIN: Not sent by RAIN.
    SESSION_UNREGISTER_FAILED = 14
    #: Action not valid for the session state.
    #: In RAIN: Any received envelope the transition table does not allow (`RemoteProtocolError`);
    #: also an unknown `state` value on decode.
    SESSION_INVALID_ACTION_FOR_STATE = 15
    #: Negotiation timeout.
    #: In RAIN: A `ServerChannel` whose client did not establish in time fails the session with it.
    SESSION_NEGOTIATION_TIMEOUT = 16
    #: Negotiation: option not offered.
    #: In RAIN: A compression, encryption or scheme that was not offered; an echo that differs from
    #: the client's choice; nothing offered that the client can use; an unknown `compression` or
    #: `encryption` value on decode.
    SESSION_NEGOTIATION_INVALID_OPTIONS = 17
    #: Validation: general.
    #: In RAIN: Default code of `EnvelopeDecodeError`: not JSON, wrong top-level type, wrong field
    #: type, nesting too deep, size over the limit, a bad gzip frame.
    VALIDATION_ERROR = 21
    #: Validation: empty document.
    #: In RAIN: Empty input to `decode`.
    VALIDATION_EMPTY_DOCUMENT = 22
    #: Validation: invalid resource.
    #: In RAIN: A command with `resource` but no `type`.
    VALIDATION_INVALID_RESOURCE = 23
    #: Validation: invalid status.
    #: In RAIN: An unknown command `status` on decode.
    VALIDATION_INVALID_STATUS = 24
    #: Validation: invalid identity.
    #: In RAIN: A `from`, `to` or `pp` that is not a valid node address.
    VALIDATION_INVALID_IDENTITY = 25
    #: Validation: invalid recipients.
    #: In RAIN: Not sent by RAIN.
    VALIDATION_INVALID_RECIPIENTS = 26
    #: Validation: invalid method or URI.
    #: In RAIN: An unknown command `method`, or a request with no `uri`.
    VALIDATION_INVALID_METHOD = 27
    #: Authorisation: general.
    #: In RAIN: Not sent by the protocol core.
    AUTHORIZATION_ERROR = 31
    #: Authorisation: unauthorised sender.
    #: In RAIN: Server access rules: the identity is not mentioned by any rule.
    AUTHORIZATION_UNAUTHORIZED_SENDER = 32
    #: Authorisation: destination account not found.
    #: In RAIN: Not sent by RAIN.
    AUTHORIZATION_DESTINATION_NOT_FOUND = 33
    #: Authorisation: quota exceeded.
    #: In RAIN: Server: a session asked for more subscriptions than `limits.max_subscriptions`.
    AUTHORIZATION_QUOTA_EXCEEDED = 34
    #: Authorisation: permission required.
    #: In RAIN: Server access rules: the identity may not use this method on this URI.
    AUTHORIZATION_PERMISSION_REQUIRED = 35
    #: Routing: general.
    #: In RAIN: Not sent by RAIN (it does not relay).
    ROUTING_ERROR = 41
    #: Routing: destination not found.
    #: In RAIN: Not sent by RAIN.
    ROUTING_DESTINATION_NOT_FOUND = 42
    #: Routing: gateway not found.
    #: In RAIN: Not sent by RAIN.
    ROUTING_GATEWAY_NOT_FOUND = 43
    #: Routing: route not found.
    #: In RAIN: Not sent by RAIN.
    ROUTING_ROUTE_NOT_FOUND = 44
    #: Dispatch error.
    #: In RAIN: Not sent by RAIN.
    DISPATCH_ERROR = 51
    #: Command: processing error.
    #: In RAIN: Default code of a server `ParameterError` raised by plugin code.
    COMMAND_PROCESSING_ERROR = 61
    #: Command: resource not supported.
    #: In RAIN: A channel with no `on_command` handler answers every command request with it.
    COMMAND_RESOURCE_NOT_SUPPORTED = 62
    #: Command: method not supported.
    #: In RAIN: Server: a method the resource does not declare.
    COMMAND_METHOD_NOT_SUPPORTED = 63
    #: Command: invalid argument.
    #: In RAIN: Server: a value refused by the parameter's JSON schema or setter (`InvalidValue`).
    COMMAND_INVALID_ARGUMENT = 64
    #: Command: not allowed.
    #: In RAIN: Server: a method the parameter does not allow (such as `set` on a read-only one), or
    #: plugin code raising `NotAllowed`.
    COMMAND_NOT_ALLOWED = 66
    #: Command: resource not found.
    #: In RAIN: Server: an unknown parameter or path.
    COMMAND_RESOURCE_NOT_FOUND = 67
    #: Message: unsupported content type.
    #: In RAIN: Not sent by the protocol core.
    MESSAGE_UNSUPPORTED_CONTENT_TYPE = 71
    #: Application error.
    #: In RAIN: A command handler raised (the command is answered with it); a message handler raised
    #: (the `failed` receipt carries it); a plugin raised.
    APPLICATION_ERROR = 101
    # RAIN's own codes.
    #: RAIN: the command expired before it could be applied.
    #: In RAIN: Server: a command whose `metadata["#expires"]` (UTC ISO-8601) has passed is refused
    #: without being applied.
    COMMAND_EXPIRED = 1001
    #: RAIN: a bounded queue overflowed.
    #: In RAIN: Reserved; not sent in this release. Updates dropped from a full subscription queue
    #: are reported in the next sample's `dropped` field instead.
    QUEUE_OVERFLOW = 1002


_E = TypeVar("_E", bound=StrEnum)


def enum_member(enum: type[_E], value: object) -> _E | None:
    """The member of ``enum`` that ``value`` names, or None: the one enum parser of the package.

    A member, its exact value, or its value in another ASCII case; nothing else. Case folding is
    ASCII-only on purpose: ``str.lower`` maps some non-ASCII letters to ASCII ones (the Kelvin
    sign to ``k``), which would let ``"\\u212aey"`` read as ``key``. The codec and the
    constructors both call this, so what one accepts the other accepts.
    """
    if not isinstance(value, str):
        return None
    # Exact (canonical) values are what peers send: one dict lookup, no copy of the string.
    by_value: dict[str, _E] = enum._value2member_map_  # type: ignore[assignment]
    member = by_value.get(value)
    if member is None and value.isascii():
        member = by_value.get(value.lower())
    return member


class WireFault(NamedTuple):
    """Where a broken envelope rule sits on the wire, for the codec to report it.

    ``key`` is the wire key the rule is about, ``code`` the LIME reason code a decoder answers
    with (21, validation error, unless a more precise one exists), ``detail`` what it says after
    the path (``$.<key>: <detail>``): peers have seen these descriptions, they stay as they were.
    """

    key: str
    code: int
    detail: str


def _broken(
    key: str, message: str, code: int = 21, detail: str | None = None
) -> EnvelopeValidationError:
    """The error for a broken rule: a plain EnvelopeValidationError (what users catch and see)
    that also carries its :class:`WireFault`."""
    error = EnvelopeValidationError(message)
    error.__dict__["wire_fault"] = WireFault(key, code, message if detail is None else detail)
    return error


def wire_fault(error: EnvelopeValidationError) -> WireFault | None:
    """The :class:`WireFault` of an error raised by an envelope rule (None for any other)."""
    fault = error.__dict__.get("wire_fault")
    return fault if isinstance(fault, WireFault) else None


def _enum(enum: type[_E], value: object, key: str, what: str, code: int = 21) -> _E:
    member = enum_member(enum, value)
    if member is None:
        allowed = ", ".join(member.value for member in enum)
        raise _broken(key, f"{what} must be one of {allowed}; got {value!r}", code)
    return member


def _enum_tuple(
    enum: type[_E], values: object, key: str, what: str
) -> tuple[_E, ...] | None:
    if values is None:
        return None
    if isinstance(values, (str, Mapping)) or not isinstance(values, Iterable):
        raise _broken(key, f"{what} must be a list")
    return tuple(_enum(enum, value, key, what) for value in values)


def is_json_media_type(media_type: str) -> bool:
    """True for ``application/json`` and any ``.../...+json`` type (parameters ignored)."""
    base = media_type.split(";", 1)[0].strip().lower()
    return base == "application/json" or base.endswith("+json")


def _check_str(value: object, key: str, what: str) -> None:
    """A type check: skipped on the trusted path, where the codec read a JSON string."""
    if not isinstance(value, str):
        raise _broken(key, f"{what} must be a string, got {type(value).__name__}")


def _check_not_empty(value: str, key: str, what: str) -> None:
    """A value rule: it runs on both paths (JSON allows ``""`` where LIME does not)."""
    if not value:
        raise _broken(key, f"{what} must not be empty", detail="must not be empty")


@dataclass(frozen=True, slots=True)
class Reason:
    """Why something failed: a LIME reason code and a human description."""

    code: int
    description: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.code, bool) or not isinstance(self.code, int):
            raise _broken("reason.code", "reason code must be an integer")
        if self.description is not None:
            _check_str(self.description, "reason.description", "reason description")
        if isinstance(self.code, ReasonCode):
            # Plain ints compare, hash and serialise the same whoever built the Reason.
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
        _check_common(self.id, self.metadata, self.extras)
        for name in ("from_", "to", "pp"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Node):
                object.__setattr__(self, name, _node(value, name))

    @property
    def sender(self) -> Node | None:
        """The effective sender: ``pp`` when set, else ``from``."""
        return self.pp if self.pp is not None else self.from_

    def replace(self: _T, **changes: Any) -> _T:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


_T = TypeVar("_T", bound=Envelope)


def _node(value: object, name: str) -> Node:
    key = "from" if name == "from_" else name
    try:
        return Node.coerce(cast("Node | str", value))
    except EnvelopeValidationError as exc:
        raise _broken(key, str(exc), 25) from None


def _check_common(id: object, metadata: object, extras: object) -> None:
    """The rules on the fields every envelope has (the codec's reader makes all but the first
    true by construction)."""
    if id is not None:
        _check_str(id, "id", "id")
        _check_not_empty(id, "id", "id")  # type: ignore[arg-type]
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise _broken("metadata", "metadata must be a mapping of strings to strings")
        for meta_key, meta_value in metadata.items():
            if not isinstance(meta_key, str) or not isinstance(meta_value, str):
                raise _broken("metadata", "metadata must map strings to strings")
    if extras is not None and not isinstance(extras, Mapping):
        raise _broken("extras", "extras must be a mapping")


def _check_reason(reason: object, what: str) -> None:
    if reason is not None and not isinstance(reason, Reason):
        raise _broken("reason", f"{what} reason must be a Reason")


@dataclass(frozen=True, slots=True)
class Message(Envelope):
    """Content of a media type sent to a node. With an ``id`` the receiver sends receipts."""

    type: str
    content: Any

    def __post_init__(self) -> None:
        Envelope.__post_init__(self)
        _check_str(self.type, "type", "message type")
        _check_not_empty(self.type, "type", "message type")
        if self.content is None:
            raise _broken("content", "message content is required")


@dataclass(frozen=True, slots=True)
class Notification(Envelope):
    """An event about a message (a receipt); ``id`` is the id of that message."""

    event: NotificationEvent
    reason: Reason | None = None

    def __post_init__(self) -> None:
        Envelope.__post_init__(self)
        object.__setattr__(self, "event", _enum(NotificationEvent, self.event, "event", "event"))
        _check_reason(self.reason, "notification")
        if self.event is NotificationEvent.FAILED and self.reason is None:
            raise _broken("reason", "a failed notification needs a reason",
                             detail="required when event is failed")


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

    # Written out rather than generated: a frozen dataclass's own __init__ stores each of the
    # twelve fields with object.__setattr__, which alone costs ten times building the dict of a
    # request. The rules are the ones in _check_command; see _OpenCommand for how the fields get in.
    def __init__(
        self,
        method: CommandMethod | str,
        uri: str | None = None,
        *,
        id: str | None = None,
        from_: Node | str | None = None,
        to: Node | str | None = None,
        pp: Node | str | None = None,
        metadata: Mapping[str, str] | None = None,
        extras: Mapping[str, Any] | None = None,
        type: str | None = None,
        resource: Any = None,
        status: CommandStatus | str | None = None,
        reason: Reason | None = None,
        _parsed: bool = False,
    ) -> None:
        if not _parsed:
            # The type checks and conversions the codec makes by construction. Each test of
            # the exact class first: the cheap check that passes for nearly every call.
            if method.__class__ is not CommandMethod:
                method = _enum(CommandMethod, method, "method", "method", 27)
            if status is not None and status.__class__ is not CommandStatus:
                status = _enum(CommandStatus, status, "status", "status", 24)
            if uri is not None and uri.__class__ is not str:
                _check_str(uri, "uri", "uri")
            if type is not None and type.__class__ is not str:
                _check_str(type, "type", "command type")
            if reason is not None:
                _check_reason(reason, "command")
            if from_ is not None and from_.__class__ is not Node:
                from_ = _node(from_, "from_")
            if to is not None and to.__class__ is not Node:
                to = _node(to, "to")
            if pp is not None and pp.__class__ is not Node:
                pp = _node(pp, "pp")
            if id is not None or metadata is not None or extras is not None:
                _check_common(id, metadata, extras)
        elif id == "":
            raise _broken("id", "id must not be empty", detail="must not be empty")
        _check_command(uri, type, resource, status, reason)
        if self.__class__ is not Command:
            # A subclass may have a layout of its own: take the slow, general way.
            _store_slowly(self, method, uri, id, from_, to, pp, metadata, extras, type,
                          resource, status, reason)
            return
        # See _OpenCommand: plain slot stores instead of object.__setattr__ per field.
        object.__setattr__(self, "__class__", _OpenCommand)
        open_: Any = self
        open_.id = id
        open_.from_ = from_
        open_.to = to
        open_.pp = pp
        open_.metadata = metadata
        open_.extras = extras
        open_.method = method
        open_.uri = uri
        open_.type = type
        open_.resource = resource
        open_.status = status
        open_.reason = reason
        open_.__class__ = Command

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
            _check_str(type, "type", "command type")
            _check_not_empty(type, "type", "command type")
        # Everything copied comes from a valid request and `type` was checked just above, so no
        # rule can fail: the fields go straight in.
        response: Any = object.__new__(_OpenCommand)
        response.id = self.id
        response.from_ = None
        response.to = self.sender
        response.pp = None
        response.metadata = None
        response.extras = None
        response.method = self.method
        response.uri = self.uri
        response.type = type
        response.resource = resource
        response.status = CommandStatus.SUCCESS
        response.reason = None
        response.__class__ = Command
        return cast(Command, response)

    def failure(self, reason: Reason | int, description: str | None = None) -> Command:
        """The failure response to this request, with a reason (or a code and description)."""
        if not isinstance(reason, Reason):
            reason = Reason(int(reason), description)
        return Command(
            self.method, self.uri, id=self.id, to=self.sender,
            status=CommandStatus.FAILURE, reason=reason,
        )


def _check_command(uri: object, type: object, resource: object, status: object,
                   reason: object) -> None:
    """The value rules of a command, on both paths (the codec relies on them, never repeats
    them). The codes are what a decoder answers a peer's broken rule with."""
    if uri == "":
        raise _broken("uri", "uri must not be empty", detail="must not be empty")
    if type == "":
        raise _broken("type", "command type must not be empty", detail="must not be empty")
    # A request built without an id gets one from the channel that sends it; the codec refuses a
    # request without one on the wire (only observe may go without), a rule of the wire.
    if status is None:
        if uri is None:
            raise _broken("uri", "a command request needs a uri", 27,
                             "required in a command request")
    elif status is CommandStatus.FAILURE and reason is None:
        raise _broken("reason", "a failure response needs a reason",
                         detail="required when status is failure")
    if resource is not None and type is None:
        raise _broken("type", "a command with a resource needs its media type", 23,
                         "required when resource is present")


class _OpenCommand(Command):
    """A Command whose attributes can be stored, used only while a new Command is filled in.

    A frozen dataclass refuses attribute stores, so the usual way to fill its slots is
    ``object.__setattr__`` per field: a call and a name lookup each, about 100 ns. A twin class
    with the same layout and the plain store lets each field be a simple slot store instead, and
    the object is switched back to Command before anyone else sees it (``__class__`` may change
    between classes of the same layout). Never instantiated for use, never exported.
    """

    __slots__ = ()
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__


def _store_slowly(command: Command, *values: object) -> None:
    """Fill in every slot of a new Command, in the order of Command.__init__'s arguments."""
    names = ("method", "uri", "id", "from_", "to", "pp", "metadata", "extras", "type",
             "resource", "status", "reason")
    for name, value in zip(names, values, strict=True):
        object.__setattr__(command, name, value)


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
        setter = object.__setattr__
        setter(self, "state", _enum(SessionState, self.state, "state", "session state", 15))
        setter(self, "encryption_options", _enum_tuple(
            SessionEncryption, self.encryption_options, "encryptionOptions", "encryptionOptions"
        ))
        setter(self, "compression_options", _enum_tuple(
            SessionCompression, self.compression_options, "compressionOptions",
            "compressionOptions",
        ))
        setter(self, "scheme_options", _enum_tuple(
            AuthenticationScheme, self.scheme_options, "schemeOptions", "schemeOptions"
        ))
        if self.encryption is not None:
            setter(self, "encryption", _enum(
                SessionEncryption, self.encryption, "encryption", "encryption", 17
            ))
        if self.compression is not None:
            setter(self, "compression", _enum(
                SessionCompression, self.compression, "compression", "compression", 17
            ))
        if self.scheme is not None:
            setter(self, "scheme", _enum(
                AuthenticationScheme, self.scheme, "scheme", "scheme", 13
            ))
        if self.authentication is not None and not isinstance(self.authentication, Mapping):
            raise _broken("authentication", "authentication must be an object")
        _check_reason(self.reason, "session")
        if self.state is SessionState.FAILED and self.reason is None:
            raise _broken("reason", "a failed session needs a reason",
                             detail="required when state is failed")

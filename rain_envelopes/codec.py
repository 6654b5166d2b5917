"""The one place where JSON meets envelope objects.

``encode(envelope) -> bytes`` writes compact UTF-8 JSON with camelCase keys and no nulls.
``decode(data) -> Envelope`` reads it back. The kind is told by key presence, in LIME's order:
``content`` -> Message, ``event`` -> Notification, ``method`` -> Command, ``state`` -> Session.
Keys we do not know are kept in ``extras`` and written back out on encode.

Every fault in the input, whatever its family, raises EnvelopeDecodeError and nothing else; the
message names the JSON path (``$.reason.code: expected integer, got string``) and the error
carries the envelope id when it could be read, so a server can answer with a coded failure.

Limits, on purpose (RELIABILITY.md §11):
- ``MAX_ENVELOPE_SIZE`` bytes of input (1 MiB by default, per call overridable);
- ``MAX_DEPTH`` levels of nesting of objects and arrays, counting the envelope itself;
- NaN, Infinity, invalid UTF-8 and lone surrogates are rejected (orjson refuses them).
Duplicate keys in one object are not an error: the last one wins, as in every JSON parser we
interoperate with.

Theory of operation
-------------------
Decoding is two stages with a clean split of duties. The *codec's* duties are the JSON: the size
and depth limits, integers beyond 64 bits, telling the kind from the keys, the JSON type of each
field (``$.uri: expected string, got integer``), enum values read with the envelopes' own parser
(:func:`rain_envelopes.envelopes.enum_member`), node addresses, unknown keys kept as extras, and
one rule that belongs to the wire rather than to the envelope: a command request carries an id
(only ``observe`` may go without; a channel gives one to a request built in Python). The
*envelope's* duties are every rule about values (a non-empty ``uri``, a request needs a
``uri``, a resource needs its media type, a failure needs a reason): the decoders hand the typed
values to the constructors and report whatever rule breaks, with the key and code the rule
names (:class:`rain_envelopes.envelopes.WireFault`). So the codec never restates a rule, and a
constructor and ``decode`` cannot disagree about what is valid (tests/codec/test_rules_agree.py).

A command of plain fields with canonical values (nearly every frame of a running session) takes
a fast path: exact type screening in a few dict lookups, then the constructor's trusted path
(``_parsed=True``), which skips the type checks just made and still runs the rules. Without a
resource, such a command holds only strings, so the depth and long-integer scans of the bytes
are skipped too. Anything the fast path does not take goes to the full reader, which builds the
same envelope or names the fault (tests/codec/test_fast_path.py).

Encoding is the mirror: one field-by-field builder lays out a Command (enum members go to
orjson as they are); :func:`to_json_object` uses it for commands and lays out the other kinds,
and a Command without extras skips even that dispatch.
What a peer's ``decode`` would refuse (NaN, too deep, an integer beyond 64 bits, a lone
surrogate) is refused here, so RAIN never sends what it would not accept.

Pure protocol core: no asyncio, no zmq.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson

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
    enum_member,
    wire_fault,
)
from .errors import EnvelopeDecodeError, EnvelopeKind, EnvelopeValidationError
from .node import Node

__all__ = ["MAX_DEPTH", "MAX_ENVELOPE_SIZE", "check_value", "decode", "encode", "to_json_object"]

#: Bytes of one frame ``decode`` reads at most (1 MiB); anything larger is refused before it is
#: parsed, so a peer cannot make us build a huge object only to refuse it afterwards.
MAX_ENVELOPE_SIZE = 1024 * 1024
#: Levels of nested objects and arrays, the envelope itself being level 1. Deep enough for any
#: real document; shallow enough that no recursive consumer of a decoded value (orjson when it
#: writes it back, a JSON schema check) can hit Python's recursion limit.
MAX_DEPTH = 64

# The wire keys each kind owns. What is not among them is kept in ``extras`` on decode, and an
# extra that bears one of them is refused on encode (it would overwrite a field).
_COMMON_KEYS = frozenset({"id", "from", "to", "pp", "metadata"})
_KIND_KEYS: dict[type[Envelope], frozenset[str]] = {
    Message: _COMMON_KEYS | {"type", "content"},
    Notification: _COMMON_KEYS | {"event", "reason"},
    Command: _COMMON_KEYS | {"method", "uri", "type", "resource", "status", "reason"},
    Session: _COMMON_KEYS
    | {
        "state", "encryptionOptions", "encryption", "compressionOptions", "compression",
        "schemeOptions", "scheme", "authentication", "reason",
    },
}

# Errors name JSON's types, not Python's: the peer wrote JSON and may not be written in Python.
_JSON_TYPE_NAMES = {
    dict: "object", list: "array", str: "string", int: "integer", float: "number",
    bool: "boolean", type(None): "null",
}


def _type_name(value: object) -> str:
    """The JSON name of a decoded value's type (any other, which orjson never makes, by its
    Python name)."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------------------- encode


def _reason_json(reason: Reason) -> dict[str, Any]:
    """A reason as its wire object; no ``description`` key when there is none (no nulls)."""
    out: dict[str, Any] = {"code": reason.code}
    if reason.description is not None:
        out["description"] = reason.description
    return out


def to_json_object(envelope: Envelope) -> dict[str, Any]:
    """The envelope as the JSON object it is on the wire (before serialisation).

    Enum fields are their StrEnum members, which equal (and serialise as) their wire values.
    """
    if isinstance(envelope, Command):
        fields = _command_object(envelope)
        if not envelope.extras:
            return fields
        # Extras first, then the fields over them: a field always wins. (encode refuses a clash
        # outright; here the object is only looked at, so it must not fail.)
        merged = dict(envelope.extras)
        merged.update(fields)
        return merged
    out: dict[str, Any] = {}
    if envelope.extras:
        out.update(envelope.extras)
    if envelope.id is not None:
        out["id"] = envelope.id
    # Node addresses travel as their text (name@domain/instance).
    if envelope.from_ is not None:
        out["from"] = str(envelope.from_)
    if envelope.to is not None:
        out["to"] = str(envelope.to)
    if envelope.pp is not None:
        out["pp"] = str(envelope.pp)
    if isinstance(envelope, Message):
        out["type"] = envelope.type
        out["content"] = envelope.content
    elif isinstance(envelope, Notification):
        out["event"] = envelope.event.value
        if envelope.reason is not None:
            out["reason"] = _reason_json(envelope.reason)
    elif isinstance(envelope, Session):
        out["state"] = envelope.state.value
        # The negotiation fields come in pairs: the options one side offers, and the one the
        # other side chose. Either may be absent, depending on the step of the handshake.
        for key, value in (
            ("encryptionOptions", envelope.encryption_options),
            ("compressionOptions", envelope.compression_options),
            ("schemeOptions", envelope.scheme_options),
        ):
            if value is not None:
                out[key] = [option.value for option in value]
        for key, single in (
            ("encryption", envelope.encryption),
            ("compression", envelope.compression),
            ("scheme", envelope.scheme),
        ):
            if single is not None:
                out[key] = single.value
        if envelope.authentication is not None:
            out["authentication"] = dict(envelope.authentication)
        if envelope.reason is not None:
            out["reason"] = _reason_json(envelope.reason)
    else:
        raise TypeError(f"not an envelope: {envelope!r}")
    if envelope.metadata is not None:
        out["metadata"] = dict(envelope.metadata)
    return out


def encode(envelope: Envelope) -> bytes:
    """Serialise an envelope to compact UTF-8 JSON.

    Raises EnvelopeValidationError when the content cannot be written as JSON (a value that is not
    JSON-like, NaN or Infinity, an integer beyond 64 bits, a string with a lone surrogate), or
    when ``extras`` would shadow a field and so change the envelope.
    """
    # The commonest case by far (every request and response of a running session) skips the
    # dispatch: an exact class check, so a subclass of Command takes the general way.
    if envelope.__class__ is Command and envelope.extras is None:
        obj = _command_object(envelope)
    else:
        if envelope.extras:
            _check_extras(envelope)
        obj = to_json_object(envelope)
    return _dumps(obj, MAX_DEPTH, "envelope")


def _command_object(command: Command) -> dict[str, Any]:
    """The wire object of a command (without extras): the one place that lays a command out,
    also the encoder's fast path. The enum members go in as they are: orjson writes an enum as
    its value, and reading ``.value`` costs a call."""
    out: dict[str, Any] = {}
    if command.id is not None:
        out["id"] = command.id
    if command.from_ is not None:
        out["from"] = str(command.from_)
    if command.to is not None:
        out["to"] = str(command.to)
    if command.pp is not None:
        out["pp"] = str(command.pp)
    out["method"] = command.method
    if command.uri is not None:
        out["uri"] = command.uri
    if command.type is not None:
        out["type"] = command.type
    if command.resource is not None:
        out["resource"] = command.resource
    if command.status is not None:
        out["status"] = command.status
    if command.reason is not None:
        out["reason"] = _reason_json(command.reason)
    if command.metadata is not None:
        out["metadata"] = dict(command.metadata)
    return out


def check_value(value: Any) -> None:
    """Raise EnvelopeValidationError unless ``value`` can travel as a message's content or a
    command's resource: JSON-like, finite, and nested shallowly enough that a peer's ``decode``
    accepts the envelope around it (which adds up to two levels)."""
    _dumps(value, MAX_DEPTH - 2, "value")


def _dumps(obj: Any, max_depth: int, what: str) -> bytes:
    """``obj`` as JSON bytes, refusing (EnvelopeValidationError, naming ``what``) whatever a
    peer's ``decode`` would refuse. The checks cost a search of the output in the common case:
    the walks of the object run only when the output says they could find something."""
    try:
        data = orjson.dumps(obj)
    except orjson.JSONEncodeError as exc:
        raise EnvelopeValidationError(f"{what} cannot be written as JSON: {exc}") from None
    # orjson writes NaN and Infinity as null; only then can the output hold a null.
    if b"null" in data and not _all_finite(obj):
        raise EnvelopeValidationError(f"{what} holds NaN or Infinity, which JSON cannot carry")
    # What decode would refuse is not sent: the same C-speed count, the walk only when needed.
    if _may_be_deep(data, max_depth) and _too_deep(obj, max_depth):
        raise EnvelopeValidationError(f"{what} is nested deeper than {max_depth} levels")
    return data


# The order LIME tells kinds apart in: a key of an earlier kind would turn the envelope into it.
_PRECEDENCE: tuple[tuple[type[Envelope], str], ...] = (
    (Message, "content"), (Notification, "event"), (Command, "method"), (Session, "state"),
)


def _check_extras(envelope: Envelope) -> None:
    """Refuse extras that would change what the envelope says: a key of its own kind would be
    written over a field, and a telling key of a kind LIME checks earlier (``content`` in a
    command's extras, say) would make the peer read another kind of envelope altogether."""
    assert envelope.extras is not None
    forbidden = set(_KIND_KEYS[type(envelope)])
    for kind, key in _PRECEDENCE:
        if kind is type(envelope):
            break
        forbidden.add(key)
    clash = forbidden.intersection(envelope.extras)
    if clash:
        raise EnvelopeValidationError(
            f"extras must not hold wire keys of this envelope: {', '.join(sorted(clash))}"
        )


def _all_finite(value: Any) -> bool:
    """True when no float in ``value`` is NaN or infinite. A loop with its own stack, not a
    recursion: the value may be as deep as the depth limit allows (or deeper, before the
    depth check has refused it)."""
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return False
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return True


# --------------------------------------------------------------------------------------- decode


class _Reader:
    """Reads typed fields out of one JSON object, naming the path of any fault."""

    __slots__ = ("envelope_id", "kind", "obj", "path")

    def __init__(
        self, obj: dict[str, Any], path: str, envelope_id: str | None, kind: EnvelopeKind
    ) -> None:
        self.obj = obj
        self.path = path
        self.envelope_id = envelope_id
        self.kind = kind

    def fail(
        self, key: str, message: str, code: int = ReasonCode.VALIDATION_ERROR
    ) -> EnvelopeDecodeError:
        """The error for ``key`` of this object: its JSON path, and LIME's code (21 invalid
        envelope unless the field has a code of its own, such as 27 for a bad method)."""
        return _error(f"{self.path}.{key}: {message}", self.obj, self.envelope_id, self.kind, code)

    def string(self, key: str, *, required: bool = False) -> str | None:
        """A JSON string or None. Whether it may be empty is the envelope's rule, not ours."""
        value = self.obj.get(key)
        if value is None:
            if required:
                raise self.fail(key, "required")
            return None
        if not isinstance(value, str):
            raise self.fail(key, f"expected string, got {_type_name(value)}")
        return value

    def node(self, key: str) -> Node | None:
        """A node address, or None. An empty string, or one that parses to an empty node, is
        read as no address: some LIME peers write ``""`` for one they do not know. A malformed
        address is code 25 (invalid node), so the reply says what was wrong with it."""
        text = self.string(key)
        if text is None or text == "":
            return None
        try:
            node = Node.parse(text)
        except EnvelopeValidationError as exc:
            raise self.fail(key, str(exc), code=ReasonCode.VALIDATION_INVALID_IDENTITY) from None
        return None if node.empty else node

    def enum(
        self,
        key: str,
        enum: type[Any],
        *,
        required: bool = False,
        code: int = ReasonCode.VALIDATION_ERROR,
    ) -> Any:
        """The member of ``enum`` that the string at ``key`` names, or None when absent. An
        unknown value is refused with ``code`` and a message listing the values allowed."""
        text = self.string(key, required=required)
        if text is None:
            return None
        # The constructors' own parser (ASCII-only folding), so both accept the same values.
        member = enum_member(enum, text)
        if member is None:
            if not text:
                raise self.fail(key, "must not be empty", code)
            allowed = ", ".join(member.value for member in enum)
            message = f"unknown value {text!r} (expected one of {allowed})"
            raise self.fail(key, message, code)
        return member

    def enum_list(self, key: str, enum: type[Any]) -> tuple[Any, ...] | None:
        """An array of enum values (a session's options), as a tuple of members; the path of
        a fault names the item (``$.encryptionOptions[1]``)."""
        values = self.obj.get(key)
        if values is None:
            return None
        if not isinstance(values, list):
            raise self.fail(key, f"expected array, got {_type_name(values)}")
        out = []
        for index, value in enumerate(values):
            if not isinstance(value, str):
                raise self.fail(f"{key}[{index}]", f"expected string, got {_type_name(value)}")
            member = enum_member(enum, value)
            if member is None:
                raise self.fail(f"{key}[{index}]", f"unknown value {value!r}")
            out.append(member)
        return tuple(out)

    def obj_field(self, key: str) -> dict[str, Any] | None:
        """A JSON object taken as it is (a session's ``authentication``: what it must hold
        is the scheme's business, checked by the authenticator)."""
        value = self.obj.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail(key, f"expected object, got {_type_name(value)}")
        return value

    def metadata(self) -> dict[str, str] | None:
        """LIME metadata: an object whose values are all strings (``#expires`` and the like)."""
        value = self.obj_field("metadata")
        if value is not None:
            for meta_key, meta_value in value.items():
                if not isinstance(meta_value, str):
                    raise self.fail(
                        f"metadata.{meta_key}", f"expected string, got {_type_name(meta_value)}"
                    )
        return value

    def reason(self) -> Reason | None:
        value = self.obj.get("reason")
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.fail("reason", f"expected object, got {_type_name(value)}")
        code = value.get("code")
        # A JSON true is a Python bool, which is an int: refused by name, it is no code.
        if isinstance(code, bool) or not isinstance(code, int):
            raise self.fail("reason.code", f"expected integer, got {_type_name(code)}")
        description = value.get("description")
        if description is not None and not isinstance(description, str):
            raise self.fail("reason.description", f"expected string, got {_type_name(description)}")
        return Reason(code, description)

    def extras(self, known: frozenset[str]) -> dict[str, Any] | None:
        # A null is an absent key on the wire: it is not kept (nor written back).
        unknown = {
            key: value for key, value in self.obj.items()
            if key not in known and value is not None
        }
        return unknown or None

    def common(self) -> dict[str, Any]:
        """The fields every kind has, as keyword arguments for its constructor."""
        return {
            "id": self.string("id"),
            "from_": self.node("from"),
            "to": self.node("to"),
            "pp": self.node("pp"),
            "metadata": self.metadata(),
        }


# Each decoder reads the JSON values into the Python types the envelope holds (paths and codes
# for a wrong type or an unknown enum value are ours) and leaves every rule about the values to
# the envelope's constructor: the WireFault of its error names the key and code to report (decode).


def _decode_message(r: _Reader) -> Message:
    media_type = r.string("type", required=True)
    assert media_type is not None
    # The content is any JSON value, taken as orjson made it: its size and depth were checked
    # on the whole frame, and its media type is the application's business.
    return Message(
        media_type, r.obj["content"], extras=r.extras(_KIND_KEYS[Message]), **r.common()
    )


def _decode_notification(r: _Reader) -> Notification:
    # The reason is read whatever the event; that a `failed` one must have one, and that the
    # others may, is the constructor's rule.
    event = r.enum("event", NotificationEvent, required=True)
    return Notification(
        event, r.reason(), extras=r.extras(_KIND_KEYS[Notification]), **r.common()
    )


def _decode_command(r: _Reader) -> Command:
    # An unknown method or status has a code of its own, so a peer learns which field it got
    # wrong from the code alone (27 and 24, not the generic 21).
    method = r.enum(
        "method", CommandMethod, required=True, code=ReasonCode.VALIDATION_INVALID_METHOD
    )
    status = r.enum("status", CommandStatus, code=ReasonCode.VALIDATION_INVALID_STATUS)
    command = Command(
        method, r.string("uri"), type=r.string("type"), resource=r.obj.get("resource"),
        status=status, reason=r.reason(), extras=r.extras(_KIND_KEYS[Command]), **r.common(),
        _parsed=True,  # every field read above has its type: the constructor checks the rules
    )
    if _lacks_wire_id(command):
        raise r.fail("id", "required in a command request (only observe may omit it)")
    return command


def _lacks_wire_id(command: Command) -> bool:
    """LIME's rule of the wire, not of the envelope (a request built in Python gets its id from
    the channel that sends it): a request on the wire has an id, except ``observe``, which is
    never answered."""
    return (
        command.id is None
        and command.status is None
        and command.method is not CommandMethod.OBSERVE
    )


def _decode_session(r: _Reader) -> Session:
    # An unknown state is an action the session machine cannot take (15); an unknown choice
    # of encryption or compression is an option that cannot be negotiated (17); an unknown
    # scheme is an authentication that cannot succeed (13). Each code says what failed.
    invalid_options = ReasonCode.SESSION_NEGOTIATION_INVALID_OPTIONS
    return Session(
        r.enum("state", SessionState, required=True,
               code=ReasonCode.SESSION_INVALID_ACTION_FOR_STATE),
        encryption_options=r.enum_list("encryptionOptions", SessionEncryption),
        encryption=r.enum("encryption", SessionEncryption, code=invalid_options),
        compression_options=r.enum_list("compressionOptions", SessionCompression),
        compression=r.enum("compression", SessionCompression, code=invalid_options),
        scheme_options=r.enum_list("schemeOptions", AuthenticationScheme),
        scheme=r.enum("scheme", AuthenticationScheme,
                      code=ReasonCode.SESSION_AUTHENTICATION_FAILED),
        authentication=r.obj_field("authentication"),
        reason=r.reason(),
        extras=r.extras(_KIND_KEYS[Session]),
        **r.common(),
    )


# Fast path for the commonest envelope on the wire: a command made only of plain fields with
# canonical (lower-case) enum values. It screens types exactly (what orjson made of each key)
# and builds through the constructor's trusted path, so the envelope rules run as on the slow
# path. Anything it does not take, valid or not, goes to the full reader, which produces the
# same envelope or the precise error (tests/codec/test_fast_path.py holds it to that).
_FAST_COMMAND_KEYS = frozenset({"id", "method", "uri", "type", "resource", "status"})
_METHOD_BY_VALUE = {member.value: member for member in CommandMethod}
_STATUS_BY_VALUE = {member.value: member for member in CommandStatus}


def _fast_command(obj: dict[str, Any]) -> Command | None:
    # Any other key (from, to, pp, metadata, reason, or one unknown) needs the full reader.
    for key in obj:
        if key not in _FAST_COMMAND_KEYS:
            return None
    # Exact types and exact values: "GET" or a subclass of str is legal but rare, and the full
    # reader (which folds case) takes it, so the common case pays for no folding.
    raw_method = obj["method"]
    method = _METHOD_BY_VALUE.get(raw_method) if type(raw_method) is str else None
    if method is None:
        return None
    envelope_id = obj.get("id")
    uri = obj.get("uri")
    media_type = obj.get("type")
    raw_status = obj.get("status")
    status = None
    if raw_status is not None:
        status = _STATUS_BY_VALUE.get(raw_status) if type(raw_status) is str else None
        if status is None:
            return None
    if (
        (envelope_id is not None and type(envelope_id) is not str)
        or (uri is not None and type(uri) is not str)
        or (media_type is not None and type(media_type) is not str)
    ):
        return None
    # Past this point every field has its type. The constructor still runs every rule about
    # values; one it breaks is left to the full reader, which reports it with its path, so
    # this returns a valid command or None and never an error of its own.
    try:
        command = Command(
            method, uri, id=envelope_id, type=media_type, resource=obj.get("resource"),
            status=status, _parsed=True,
        )
    except EnvelopeValidationError:
        return None  # the full reader reports it, with its path
    return None if _lacks_wire_id(command) else command


# The telling key of each kind, in the order LIME looks for them, with the kind's decoder.
_KINDS: tuple[tuple[str, EnvelopeKind, Callable[[_Reader], Envelope]], ...] = (
    ("content", EnvelopeKind.MESSAGE, _decode_message),
    ("event", EnvelopeKind.NOTIFICATION, _decode_notification),
    ("method", EnvelopeKind.COMMAND, _decode_command),
    ("state", EnvelopeKind.SESSION, _decode_session),
)


def _error(
    message: str,
    obj: dict[str, Any],
    envelope_id: str | None,
    kind: EnvelopeKind | None,
    code: int = ReasonCode.VALIDATION_ERROR,
) -> EnvelopeDecodeError:
    """The decode error, with what the protocol needs to answer it (``reply_to_error``): the
    id to echo, the kind, and for a command its method (when it names one) and whether it
    was a response (a response is never answered, so no two peers reply to each other's
    errors forever)."""
    method = obj.get("method")
    known = isinstance(method, str) and method.lower() in _METHODS
    return EnvelopeDecodeError(
        message, code=code, envelope_id=envelope_id, kind=kind,
        method=method.lower() if known and isinstance(method, str) else None,
        is_response=kind is EnvelopeKind.COMMAND and obj.get("status") is not None,
    )


# The method values, to tell whether an unreadable command names a method a reply could echo.
_METHODS = frozenset(member.value for member in CommandMethod)


def _may_be_deep(data: bytes | bytearray, max_depth: int) -> bool:
    # Deeper than max_depth needs more opening brackets than that, each with its closing one:
    # short frames (most of them) skip even the C-speed count.
    return len(data) > 2 * max_depth and data.count(b"{") + data.count(b"[") > max_depth


def _too_deep(value: Any, max_depth: int) -> bool:
    """True when objects and arrays nest deeper than ``max_depth`` (the outermost is level 1).
    Iterative, for the reason :func:`_all_finite` is; it stops at the first level too many."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            return True
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def decode(
    data: bytes | bytearray | memoryview | str,
    *,
    max_size: int = MAX_ENVELOPE_SIZE,
    max_depth: int = MAX_DEPTH,
) -> Envelope:
    """Parse one envelope. Raises EnvelopeDecodeError, and only that, for any bad input."""
    if isinstance(data, str):
        # surrogatepass: a lone surrogate becomes bytes that are not UTF-8, so orjson refuses it
        # below as every bad input is refused, instead of a UnicodeEncodeError escaping here.
        raw: bytes | bytearray = data.encode("utf-8", "surrogatepass")
    elif isinstance(data, memoryview):
        raw = data.tobytes()  # len() of a view counts items, which may be wider than a byte
    elif isinstance(data, (bytes, bytearray)):
        raw = data
    else:
        raise EnvelopeDecodeError(f"$: expected bytes, got {type(data).__name__}")
    size = len(raw)
    if size > max_size:
        raise EnvelopeDecodeError(f"$: envelope of {size} bytes exceeds the limit of {max_size}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        code = (
            ReasonCode.VALIDATION_EMPTY_DOCUMENT if size == 0 else ReasonCode.VALIDATION_ERROR
        )
        raise EnvelopeDecodeError(f"$: not valid JSON: {exc}", code=code) from None
    if not isinstance(obj, dict):
        raise EnvelopeDecodeError(f"$: expected object, got {_type_name(obj)}")
    fast = None
    # Only what LIME would read as a command: with a content or an event it is another kind.
    if "method" in obj and "content" not in obj and "event" not in obj:
        fast = _fast_command(obj)
        # Without a resource every value the fast path took is a string: one level deep, no
        # number to check, so the scans below have nothing to find.
        if fast is not None and fast.resource is None:
            return fast
    # Both checks are C-speed scans of the bytes; the tree is walked only when it could be deep.
    too_deep = _may_be_deep(raw, max_depth) and _too_deep(obj, max_depth)
    long_digits = _LONG_DIGITS.search(raw) is not None
    if fast is not None and not too_deep and not long_digits:
        return fast
    # The id is read before anything can fail, so every error below can carry it back; one
    # that is not a non-empty string cannot be echoed and is left out.
    raw_id = obj.get("id")
    envelope_id = raw_id if isinstance(raw_id, str) and raw_id else None
    # The first telling key, in LIME's order, decides the kind (see _KINDS).
    kind_key = next((entry for entry in _KINDS if entry[0] in obj), None)
    if kind_key is None:
        raise _error(
            "$: not an envelope (none of content, event, method, state is present)",
            obj, envelope_id, None,
        )
    key, kind, decoder = kind_key
    if too_deep:
        raise _error(f"$: nesting deeper than {max_depth} levels", obj, envelope_id, kind)
    if obj[key] is None:
        raise _error(f"$.{key}: must not be null", obj, envelope_id, kind)
    reader = _Reader(obj, "$", envelope_id, kind)
    try:
        envelope = decoder(reader)
    except EnvelopeValidationError as exc:
        # A constructor's rule broke. Its WireFault names the wire key and the LIME code, so
        # the error reads as if the codec had checked the rule itself; an error without one
        # (a rule about the whole envelope) is reported at the root.
        fault = wire_fault(exc)
        if fault is None:
            raise _error(f"$: {exc}", obj, envelope_id, kind) from None
        raise _error(f"$.{fault.key}: {fault.detail}", obj, envelope_id, kind, fault.code) from None
    if long_digits:  # after the fields, so a field's own error keeps its path
        _check_integer_range(raw, obj, envelope_id, kind)
    return envelope


# orjson reads integers beyond 64 bits as floats, silently losing digits. They are rare, so
# only input with a long run of digits is read a second time, exactly, to refuse them.
# 19 digits is the shortest run that can exceed 64 bits (2**63 has 19): fewer always fit.
_LONG_DIGITS = re.compile(rb"\d{19,}")
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def _check_integer_range(
    raw: bytes | bytearray, obj: dict[str, Any], envelope_id: str | None, kind: EnvelopeKind
) -> None:
    """Refuse the frame when an integer in it does not fit 64 bits (signed below zero,
    unsigned above), read exactly by the standard library's parser; the digits may as well
    sit in a string, in which case nothing is found and nothing is refused."""

    def exact(text: str) -> int:
        value = int(text)
        if not _INT_MIN <= value <= _INT_MAX:
            raise ValueError(text)
        return value

    try:
        json.loads(raw, parse_int=exact)
    except ValueError:
        raise _error(
            "$: integer beyond 64 bits (it cannot be represented exactly)", obj, envelope_id, kind
        ) from None



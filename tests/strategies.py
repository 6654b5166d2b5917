"""Hypothesis strategies for RAIN envelopes, shared by the test suites.

Everything drawn here is something a correct peer may send: each envelope satisfies the LIME rules
the codec enforces (a command request has a uri and, unless it is ``observe``, an id; a failure has
a reason; a resource has a media type; ...), and its content is JSON that survives a round trip
exactly (no NaN, integers within 64 bits, strings without lone surrogates).

``near_envelopes()`` draws wire objects (dicts) made by mutating valid ones: the input for tests
that compare the codec with the published JSON Schema, or that fuzz a live peer.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from rain_envelopes.codec import to_json_object
from rain_envelopes.envelopes import (
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
from rain_envelopes.node import Node

__all__ = [
    "ENUM_VALUES",
    "KIND_KEYS",
    "WIRE_KEYS",
    "commands",
    "envelopes",
    "extras",
    "json_values",
    "messages",
    "near_envelopes",
    "nodes",
    "notifications",
    "reasons",
    "sessions",
    "text",
    "wire_objects",
]

INT64_MIN = -(2**63)
UINT64_MAX = 2**64 - 1

#: Every key the codec reads, for any kind. Extras are drawn outside this set.
WIRE_KEYS = frozenset({
    "id", "from", "to", "pp", "metadata",
    "content", "type",
    "event", "reason",
    "method", "uri", "resource", "status",
    "state", "encryptionOptions", "encryption", "compressionOptions", "compression",
    "schemeOptions", "scheme", "authentication",
})

#: The keys that decide the kind, in LIME's order of precedence.
KIND_KEYS = ("content", "event", "method", "state")

#: Wire values of every enum, by the key that carries it.
ENUM_VALUES: dict[str, tuple[str, ...]] = {
    "event": tuple(member.value for member in NotificationEvent),
    "method": tuple(member.value for member in CommandMethod),
    "status": tuple(member.value for member in CommandStatus),
    "state": tuple(member.value for member in SessionState),
    "encryption": tuple(member.value for member in SessionEncryption),
    "compression": tuple(member.value for member in SessionCompression),
    "scheme": tuple(member.value for member in AuthenticationScheme),
}

# Any Unicode scalar value that UTF-8 can carry (no lone surrogates).
_CHARS = st.characters(codec="utf-8")


def text(min_size: int = 0, max_size: int = 16) -> st.SearchStrategy[str]:
    """Strings that survive JSON unchanged."""
    return st.text(_CHARS, min_size=min_size, max_size=max_size)


_SCALARS: st.SearchStrategy[Any] = (
    st.none()
    | st.booleans()
    | st.integers(INT64_MIN, UINT64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text()
)


def json_values(max_leaves: int = 8, *, allow_null: bool = True) -> st.SearchStrategy[Any]:
    """Any JSON value that round-trips exactly; ``allow_null=False`` excludes a top-level null."""
    values = st.recursive(
        _SCALARS,
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(text(max_size=8), children, max_size=4),
        max_leaves=max_leaves,
    )
    return values if allow_null else values.filter(lambda value: value is not None)


# Node parts: no whitespace LIME forbids, and no separator where it would change the parse.
_PART_CHARS = st.characters(codec="utf-8", exclude_characters="@/\x00\t\n\r ")
_PART = st.text(_PART_CHARS, min_size=1, max_size=10)
_INSTANCE_CHARS = st.characters(codec="utf-8", exclude_characters="\x00\t\n\r ")


@st.composite
def nodes(draw: st.DrawFn) -> Node:
    """A Node whose text form parses back to an equal Node."""
    name = draw(st.none() | _PART)
    domain = draw(st.none() | _PART)
    if domain is None:
        # Without a domain an '@' in the instance would be read as the name/domain separator.
        instance = draw(st.none() | st.text(_PART_CHARS | st.just("/"), min_size=1, max_size=10))
    else:
        instance = draw(st.none() | st.text(_INSTANCE_CHARS, min_size=1, max_size=10))
    if name is None and domain is None and instance is None:
        name = draw(_PART)
    return Node(name, domain, instance)


_IDS = text(min_size=1, max_size=24)
_METADATA = st.dictionaries(
    st.one_of(text(max_size=8), text(max_size=8).map(lambda key: "#" + key)),
    text(max_size=12),
    max_size=3,
)


def extras() -> st.SearchStrategy[dict[str, Any]]:
    """Unknown wire keys with non-null JSON values (a relayed envelope keeps them)."""
    keys = text(min_size=1, max_size=10).filter(lambda key: key not in WIRE_KEYS)
    return st.dictionaries(keys, json_values(4, allow_null=False), min_size=1, max_size=3)


def reasons() -> st.SearchStrategy[Reason]:
    codes = st.sampled_from(list(ReasonCode)) | st.integers(INT64_MIN, UINT64_MAX)
    return st.builds(Reason, codes, st.none() | text(max_size=40))


def _common() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "id": _IDS,
            "from_": nodes(),
            "to": nodes(),
            "pp": nodes(),
            "metadata": _METADATA,
            "extras": extras(),
        },
    )


_JSON_TYPES = (
    "application/json",
    "application/vnd.lime.collection+json",
    "application/vnd.rain.sample+json",
    "application/vnd.lime.ping+json",
    "application/json; charset=utf-8",
)
_TEXT_TYPES = ("text/plain", "application/octet-stream", "image/png", "application/x-unknown")


@st.composite
def _typed_content(draw: st.DrawFn) -> tuple[str, Any]:
    """A media type and a value of that type: any JSON for JSON types, a string otherwise."""
    if draw(st.booleans()):
        return draw(st.sampled_from(_JSON_TYPES)), draw(json_values(allow_null=False))
    return draw(st.sampled_from(_TEXT_TYPES)), draw(text(max_size=40))


@st.composite
def messages(draw: st.DrawFn) -> Message:
    media_type, content = draw(_typed_content())
    return Message(media_type, content, **draw(_common()))


@st.composite
def notifications(draw: st.DrawFn) -> Notification:
    event = draw(st.sampled_from(list(NotificationEvent)))
    failed = event is NotificationEvent.FAILED
    reason = draw(reasons()) if failed else draw(st.none() | reasons())
    return Notification(event, reason, **draw(_common()))


_URIS = st.one_of(
    st.sampled_from(["/ping", "/params", "/params/temp", "/params/temp?x=1", "/a/b/"]),
    text(min_size=1, max_size=12).map(lambda path: "/" + path),
    st.builds(lambda node, path: f"lime://{node.identity}/{path}", nodes(), text(max_size=8)),
)


@st.composite
def commands(draw: st.DrawFn) -> Command:
    method = draw(st.sampled_from(list(CommandMethod)))
    status = draw(st.none() | st.sampled_from(list(CommandStatus)))
    common = draw(_common())
    if status is None:
        uri = draw(_URIS)
        if method is not CommandMethod.OBSERVE:
            common["id"] = common.get("id") or draw(_IDS)
    else:
        uri = draw(st.none() | _URIS)
    reason = draw(reasons()) if status is CommandStatus.FAILURE else draw(st.none() | reasons())
    media_type: str | None = None
    resource: Any = None
    if draw(st.booleans()):
        media_type, resource = draw(_typed_content())
    elif draw(st.booleans()):
        media_type = draw(st.sampled_from(_JSON_TYPES))
    return Command(
        method, uri, type=media_type, resource=resource, status=status, reason=reason, **common
    )


def _options(enum: Any) -> st.SearchStrategy[tuple[Any, ...] | None]:
    return st.none() | st.lists(st.sampled_from(list(enum)), max_size=3).map(tuple)


@st.composite
def sessions(draw: st.DrawFn) -> Session:
    state = draw(st.sampled_from(list(SessionState)))
    reason = draw(reasons()) if state is SessionState.FAILED else draw(st.none() | reasons())
    authentication = draw(
        st.none() | st.dictionaries(text(max_size=10), json_values(4), max_size=3)
    )
    return Session(
        state,
        encryption_options=draw(_options(SessionEncryption)),
        encryption=draw(st.none() | st.sampled_from(list(SessionEncryption))),
        compression_options=draw(_options(SessionCompression)),
        compression=draw(st.none() | st.sampled_from(list(SessionCompression))),
        scheme_options=draw(_options(AuthenticationScheme)),
        scheme=draw(st.none() | st.sampled_from(list(AuthenticationScheme))),
        authentication=authentication,
        reason=reason,
        **draw(_common()),
    )


def envelopes() -> st.SearchStrategy[Envelope]:
    """Any valid envelope, of any kind."""
    return st.one_of(messages(), notifications(), commands(), sessions())


def wire_objects() -> st.SearchStrategy[dict[str, Any]]:
    """Valid envelopes as the JSON objects they are on the wire."""
    return envelopes().map(to_json_object)


# ------------------------------------------------------------------------- near-valid objects

# Values that are close to what a field expects, wrong in one small way, or right.
_NEAR_VALUES: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(sorted({value for values in ENUM_VALUES.values() for value in values})),
    st.sampled_from([
        None, "", " ", "a b", "x", "/x", "alice@irf/lab", "@", "a\tb", "a\x00b", "lime://a@b/c",
        "application/json", 0, 1, -1, 13, 2**63, 2**64 - 1, True, False, [], {}, ["none"],
        ["gzip", "bogus"], [1], {"code": 1}, {"code": "1"}, {"code": 1, "description": 5},
        {"code": True}, {"description": "x"}, {"a": "b"}, {"a": 1}, 1.5,
    ]),
    json_values(4),
)


@st.composite
def near_envelopes(draw: st.DrawFn) -> dict[str, Any]:
    """A valid envelope's wire object with one to three random mutations."""
    obj: dict[str, Any] = dict(draw(wire_objects()))
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["delete", "set", "set", "inner"]))
        if action == "delete" and obj:
            del obj[draw(st.sampled_from(sorted(obj)))]
        elif action == "set":
            key = draw(st.sampled_from(sorted(WIRE_KEYS)) | text(min_size=1, max_size=6))
            obj[key] = draw(_NEAR_VALUES)
        else:
            key = draw(st.sampled_from(["reason", "metadata", "encryptionOptions",
                                        "compressionOptions", "schemeOptions"]))
            value = obj.get(key)
            if isinstance(value, dict):
                inner = dict(value)
                inner_key = draw(st.sampled_from(["code", "description", "k", *sorted(inner)]))
                if draw(st.booleans()):
                    inner.pop(inner_key, None)
                else:
                    inner[inner_key] = draw(_NEAR_VALUES)
                obj[key] = inner
            elif isinstance(value, list) and value:
                items = list(value)
                items[draw(st.integers(0, len(items) - 1))] = draw(_NEAR_VALUES)
                obj[key] = items
            else:
                obj[key] = draw(_NEAR_VALUES)
    return obj

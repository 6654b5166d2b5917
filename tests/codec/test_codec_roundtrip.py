"""encode -> decode gives back the same envelope, for every kind, and encode writes LIME's shape.

Equality of envelopes ignores ``extras`` (it is not a compared field), so every round trip also
compares ``extras`` on its own.
"""

from __future__ import annotations

import math
import re
import string
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rain_envelopes.codec import decode, encode, to_json_object
from rain_envelopes.envelopes import (
    Command,
    CommandMethod,
    Envelope,
    Message,
    Notification,
    Reason,
    Session,
    SessionState,
)
from rain_envelopes.errors import EnvelopeDecodeError, EnvelopeValidationError
from rain_envelopes.node import Node
from tests import strategies as rs

EXAMPLES = settings(max_examples=100, deadline=None)
CAMEL_CASE = re.compile(r"^[a-z]+(?:[A-Z][a-z]*)*$")


def assert_round_trip(envelope: Envelope) -> Envelope:
    data = encode(envelope)
    assert isinstance(data, bytes)
    back = decode(data)
    assert type(back) is type(envelope)
    assert back == envelope
    assert back.extras == (envelope.extras or None)
    # A second pass is byte-for-byte stable.
    assert encode(back) == data
    return back


@pytest.mark.parametrize(
    "strategy",
    [rs.messages(), rs.notifications(), rs.commands(), rs.sessions()],
    ids=["message", "notification", "command", "session"],
)
@EXAMPLES
@given(data=st.data())
def test_every_kind_round_trips(strategy: st.SearchStrategy[Envelope], data: st.DataObject) -> None:
    assert_round_trip(data.draw(strategy))


@EXAMPLES
@given(rs.envelopes())
def test_encoded_object_has_lime_shape(envelope: Envelope) -> None:
    obj = orjson.loads(encode(envelope))
    assert obj == to_json_object(envelope)
    extras = set(envelope.extras or ())
    known = set(obj) - extras
    assert known <= rs.WIRE_KEYS
    for key in known:
        assert CAMEL_CASE.match(key), key
    # Absent fields are omitted, never written as null.
    for key in known:
        assert obj[key] is not None, key
    assert "from_" not in obj
    assert ("from" in obj) == (envelope.from_ is not None)
    if envelope.from_ is not None:
        assert obj["from"] == str(envelope.from_)
    # Ids are written exactly when the envelope has one: never invented, never dropped.
    assert ("id" in obj) == (envelope.id is not None)
    reason = getattr(envelope, "reason", None)
    if reason is not None:
        assert obj["reason"] == {"code": reason.code, **(
            {"description": reason.description} if reason.description is not None else {}
        )}
    # The kind key that decides the kind is the first one present.
    kind_key = next(key for key in rs.KIND_KEYS if key in obj)
    expected = {Message: "content", Notification: "event", Command: "method", Session: "state"}
    assert kind_key == expected[type(envelope)]


def _ascii_case(flip: str) -> Any:
    table = {
        "upper": str.maketrans(string.ascii_lowercase, string.ascii_uppercase),
        "lower": str.maketrans(string.ascii_uppercase, string.ascii_lowercase),
        "swap": str.maketrans(
            string.ascii_letters, string.ascii_lowercase.upper() + string.ascii_uppercase.lower()
        ),
    }[flip]
    return lambda text: text.translate(table)


@EXAMPLES
@given(rs.envelopes(), st.sampled_from(["upper", "lower", "swap"]))
def test_node_case_does_not_matter(envelope: Envelope, flip: str) -> None:
    obj = to_json_object(envelope)
    for key in ("from", "to", "pp"):
        if key in obj:
            obj[key] = _ascii_case(flip)(obj[key])
    back = decode(orjson.dumps(obj))
    assert back == envelope
    for name in ("from_", "to", "pp"):
        original, decoded = getattr(envelope, name), getattr(back, name)
        assert (decoded is None) == (original is None)
        if original is not None:
            assert decoded == original
            assert hash(decoded) == hash(original)
            assert decoded.same_identity(original)


def test_node_comparison_is_per_part_and_case_insensitive() -> None:
    assert Node.parse("Alice@IRF/Lab") == Node.parse("alice@irf/lab")
    assert Node.parse("Alice@IRF/Lab") != Node.parse("alice@irf/lab2")
    assert Node.parse("alice@irf/a/b") == Node("alice", "irf", "a/b")
    assert Node.parse("alice@irf/a").same_identity(Node.parse("ALICE@irf/b"))
    message = decode(b'{"content":1,"type":"a","from":"ALICE@Irf/X"}')
    assert message.from_ == Node("alice", "irf", "x")


def test_from_is_written_as_from() -> None:
    data = encode(Message("text/plain", "hi", from_="alice@irf/lab"))
    assert orjson.loads(data) == {"type": "text/plain", "content": "hi", "from": "alice@irf/lab"}


def test_session_keys_are_camel_case() -> None:
    session = Session(
        SessionState.NEGOTIATING, id="S1", encryption_options=["none", "curve"],
        compression_options=["none", "gzip"], scheme_options=["transport", "keypair"],
    )
    obj = orjson.loads(encode(session))
    assert obj == {
        "id": "S1", "state": "negotiating", "encryptionOptions": ["none", "curve"],
        "compressionOptions": ["none", "gzip"], "schemeOptions": ["transport", "keypair"],
    }


@pytest.mark.parametrize(
    "envelope",
    [
        Notification("failed", Reason(13, "bad key")),
        Command("get", "/x", id="1").failure(Reason(67, "no such thing")),
        Session("failed", id="S1", reason=Reason(11)),
    ],
    ids=["notification", "command", "session"],
)
def test_reason_is_always_an_object(envelope: Envelope) -> None:
    obj = orjson.loads(encode(envelope))
    assert isinstance(obj["reason"], dict)
    assert isinstance(obj["reason"]["code"], int)
    reason = envelope.reason  # type: ignore[attr-defined]
    if reason.description is None:
        assert obj["reason"] == {"code": reason.code}
    else:
        assert obj["reason"] == {"code": reason.code, "description": reason.description}


def test_ids_are_never_invented() -> None:
    # The client's `new` carries no id: the server assigns it.
    assert orjson.loads(encode(Session("new"))) == {"state": "new"}
    # A fire-and-forget message has none, and none appears on decode either.
    assert "id" not in orjson.loads(encode(Message("text/plain", "x")))
    assert decode(b'{"type":"text/plain","content":"x"}').id is None
    assert decode(b'{"state":"new"}').id is None
    # An observe may go without one.
    assert "id" not in orjson.loads(encode(Command("observe", "/params/t")))
    # A response reuses the request's id.
    request = Command("get", "/params/t", id="c-1", from_="alice@irf/lab")
    response = request.success({"v": 1})
    assert response.id == "c-1"
    assert orjson.loads(encode(response))["id"] == "c-1"


def test_a_request_without_id_is_not_valid_on_the_wire() -> None:
    # Channels give a request its id before sending; one that reaches the wire without is refused.
    data = encode(Command("get", "/x"))
    with pytest.raises(EnvelopeDecodeError, match=r"^\$\.id: "):
        decode(data)


def test_unknown_keys_survive_a_relay() -> None:
    raw = b'{"id":"m1","type":"text/plain","content":"x","x-trace":[1,{"a":2}],"priority":5}'
    message = decode(raw)
    assert message.extras == {"x-trace": [1, {"a": 2}], "priority": 5}
    assert orjson.loads(encode(message)) == orjson.loads(raw)


def test_unknown_keys_include_other_kinds_keys() -> None:
    # `content` wins, so `event` and `method` are unknown keys of a message, kept verbatim.
    message = decode(b'{"content":1,"type":"a","event":"received","method":"get"}')
    assert isinstance(message, Message)
    assert message.extras == {"event": "received", "method": "get"}
    assert isinstance(decode(encode(message)), Message)


def test_enum_values_are_read_in_any_ascii_case_and_written_lowercase() -> None:
    command = decode(b'{"id":"1","method":"GET","uri":"/x"}')
    assert command.method is CommandMethod.GET
    assert orjson.loads(encode(command))["method"] == "get"


def test_json_content_of_every_shape_round_trips() -> None:
    for content in [0, -1, 2**64 - 1, -(2**63), 1.5, -0.0, 1e-300, "", "é\u2028😀", True, False,
                    [], {}, [None], {"": None}, {"a": [1, {"b": [None, 2.5]}]}]:
        back = decode(encode(Message("application/json", content)))
        assert back.content == content
        assert type(back.content) is type(content)


@given(rs.json_values(allow_null=False))
@settings(max_examples=100, deadline=None)
def test_any_json_content_round_trips(content: Any) -> None:
    assert decode(encode(Message("application/json", content))).content == content


def test_encode_refuses_what_json_cannot_carry() -> None:
    with pytest.raises(EnvelopeValidationError):
        encode(Message("application/json", {"big": 2**70}))
    with pytest.raises(EnvelopeValidationError):
        encode(Message("text/plain", "\ud800"))
    with pytest.raises(EnvelopeValidationError):
        encode(Message("application/json", {1: "non-string key"}))


# ------------------------------------------------------------------ known bugs (see the report)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_encode_refuses_non_finite_numbers(value: float) -> None:
    # orjson silently writes a non-finite float as null: the data changes (or, at the top of
    # `content`, becomes an envelope our own decoder rejects). It must raise instead.
    with pytest.raises(EnvelopeValidationError):
        encode(Message("application/json", {"v": value}))


@pytest.mark.parametrize(
    "envelope",
    [
        Message("text/plain", "x", extras={"id": "invented"}),
        Command("get", "/x", id="1", extras={"content": "hijack"}),
        Session("new", extras={"method": "get"}),
        Notification("received", extras={"reason": "a string"}),
    ],
    ids=["message-id", "command-content", "session-method", "notification-reason"],
)
def test_extras_cannot_shadow_wire_keys(envelope: Envelope) -> None:
    # Either construction/encoding refuses the shadowing key, or the envelope round-trips.
    try:
        data = encode(envelope)
    except EnvelopeValidationError:
        return
    back = decode(data)
    assert type(back) is type(envelope)
    assert back == envelope


def test_relayed_null_unknown_key_is_dropped() -> None:
    message = decode(b'{"type":"a","content":1,"x":null}')
    assert b"null" not in encode(message)


@pytest.mark.parametrize("text", ["@", "/", "@/"])
def test_empty_node_decodes_stably(text: str) -> None:
    raw = orjson.dumps({"type": "a", "content": 1, "from": text})
    try:
        first = decode(raw)
    except EnvelopeDecodeError:
        return  # refusing it (code 25) is a fix too
    again = decode(encode(first))
    assert again.from_ == first.from_


@pytest.mark.parametrize(
    "parts",
    [(None, None, "x@y"), ("a/b", None, None), ("a", None, "x@y")],
    ids=["instance-with-at", "name-with-slash", "no-domain-instance-with-at"],
)
def test_node_text_form_parses_back(parts: tuple[str | None, str | None, str | None]) -> None:
    try:
        node = Node(*parts)
    except EnvelopeValidationError:
        return
    assert Node.parse(str(node)) == node

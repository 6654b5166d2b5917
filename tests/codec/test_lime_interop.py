"""Interoperability of our codec with lime-python 2.0.13, a LIME implementation we did not write.

Both ways: what lime-python writes (its ``Serializable.__str__``, i.e. ``json.dumps(to_json())``,
or what its channel hands its transport) decodes with our codec; what we encode decodes with its
classes, for the fields it handles correctly. Where its output breaks LIME, our codec must refuse
it with EnvelopeDecodeError naming the field, not misread it. The bugs of lime-python listed in
PROTOCOL.md are pinned here as facts about it, next to a check that our side does not share them.

Driving its ClientChannel against our ServerChannel is a separate test; here its channel only
talks to a transport that records what it sends.
"""

from __future__ import annotations

import json
from typing import Any

import lime_python as lime
import orjson
import pytest
from hypothesis import given, settings

from rain_envelopes.codec import decode, encode
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
    Session,
    SessionCompression,
    SessionEncryption,
    SessionState,
)
from rain_envelopes.errors import EnvelopeDecodeError
from rain_envelopes.node import Node
from tests import strategies as rs


def wire(envelope: Any) -> bytes:
    """lime-python's own serialisation of one of its envelopes."""
    return str(envelope).encode("utf-8")


def ours(envelope: Any) -> Envelope:
    return decode(wire(envelope))


def refused(data: bytes) -> EnvelopeDecodeError:
    with pytest.raises(EnvelopeDecodeError) as info:
        decode(data)
    return info.value


class RecordingTransport(lime.Transport):  # type: ignore[misc]
    """A lime-python transport that keeps what its channel sends, as JSON text."""

    def __init__(self) -> None:
        super().__init__("none", "none")
        self.sent: list[bytes] = []

    async def open_async(self, uri: str | None = None) -> None:
        return None

    async def close_async(self) -> None:
        return None

    def send(self, envelope: dict[str, Any]) -> None:
        self.sent.append(json.dumps(envelope).encode("utf-8"))

    def get_supported_compression(self) -> list[str]:
        return ["none"]

    def set_compression(self, compression: str) -> None:
        self.compression = compression

    def get_supported_encryption(self) -> list[str]:
        return ["none"]

    def set_encryption(self, encryption: str) -> None:
        self.encryption = encryption

    def on_envelope(self, envelope: Any) -> None:  # replaced by the channel
        return None


def established_channel(local: str = "alice@irf/lab") -> tuple[Any, RecordingTransport]:
    transport = RecordingTransport()
    channel = lime.ClientChannel(transport)
    channel.state = lime.SessionState.ESTABLISHED
    channel.local_node = local
    channel.remote_node = "srv@irf/n1"
    return channel, transport


# ------------------------------------------------------------------------- theirs -> ours


@pytest.mark.parametrize(
    ("kwargs", "content"),
    [
        ({"id": "m1"}, "hello"),
        ({}, "fire and forget"),
        ({"id": "m2", "from_n": "alice@irf/lab", "to": "bob@irf", "pp": "carol@irf/x"}, "x"),
        ({"id": "m3", "metadata": {"#expires": "2026-01-01T00:00:00Z", "k": "v"}}, "x"),
    ],
)
def test_its_text_messages_decode(kwargs: dict[str, Any], content: str) -> None:
    message = ours(lime.Message(type_n="text/plain", content=content, **kwargs))
    assert isinstance(message, Message)
    assert message.type == "text/plain"
    assert message.content == content
    assert message.id == kwargs.get("id")
    assert message.metadata == kwargs.get("metadata")
    for theirs, mine in (("from_n", "from_"), ("to", "to"), ("pp", "pp")):
        expected = kwargs.get(theirs)
        assert getattr(message, mine) == (None if expected is None else Node.parse(expected))
    assert message.extras is None


@pytest.mark.parametrize(
    "content",
    [{"value": 21.5, "seq": 17, "epoch": "e1"}, [1, "two", None, True], 0, False, "text",
     {"nested": {"deep": ["\u00e9", "\U0001f600"]}}],
)
def test_its_json_messages_decode(content: Any) -> None:
    message = ours(lime.Message(type_n="application/json", content=content, id="m"))
    assert message.content == content  # type: ignore[attr-defined]


@pytest.mark.parametrize("event", ["accepted", "dispatched", "received", "consumed"])
def test_its_notifications_decode(event: str) -> None:
    notification = ours(lime.Notification(event, id="m1", to="bob@irf/lab"))
    assert isinstance(notification, Notification)
    assert notification.event == NotificationEvent(event)
    assert notification.id == "m1"
    assert notification.to == Node("bob", "irf", "lab")


@pytest.mark.parametrize(
    ("kwargs", "check"),
    [
        ({"method": "get", "uri": "/params/temp", "id": "c1"},
         {"method": CommandMethod.GET, "uri": "/params/temp", "status": None}),
        ({"method": "set", "uri": "/params/temp", "id": "c2", "type_n": "application/json",
          "resource": {"value": 3}},
         {"type": "application/json", "resource": {"value": 3}}),
        ({"method": "observe", "uri": "/params/temp", "type_n": "application/json",
          "resource": 4},
         {"id": None, "method": CommandMethod.OBSERVE}),
        ({"method": "get", "id": "c1", "status": "success", "type_n": "application/json",
          "resource": [1, 2]},
         {"status": CommandStatus.SUCCESS, "uri": None, "resource": [1, 2]}),
        ({"method": "subscribe", "uri": "lime://srv@irf/params/temp", "id": "c3"},
         {"uri": "lime://srv@irf/params/temp"}),
    ],
)
def test_its_commands_decode(kwargs: dict[str, Any], check: dict[str, Any]) -> None:
    command = ours(lime.Command(**kwargs))
    assert isinstance(command, Command)
    for field, value in check.items():
        assert getattr(command, field) == value, field


@pytest.mark.parametrize(
    ("state", "kwargs"),
    [
        ("new", {}),
        ("negotiating", {"id": "S1", "compression_options": ["none", "gzip"],
                         "encryption_options": ["none", "tls"]}),
        ("negotiating", {"id": "S1", "compression": "gzip", "encryption": "none"}),
        ("authenticating", {"id": "S1", "scheme_options": ["guest", "plain", "transport"]}),
        ("established", {"id": "S1", "from_n": "srv@irf/n1", "to": "alice@irf/lab"}),
        ("finishing", {"id": "S1"}),
        ("finished", {"id": "S1"}),
    ],
)
def test_its_sessions_decode(state: str, kwargs: dict[str, Any]) -> None:
    session = ours(lime.Session(state, **kwargs))
    assert isinstance(session, Session)
    assert session.state == SessionState(state)
    assert session.id == kwargs.get("id")
    if "compression_options" in kwargs:
        assert session.compression_options == tuple(
            SessionCompression(value) for value in kwargs["compression_options"]
        )
        assert session.encryption_options == tuple(
            SessionEncryption(value) for value in kwargs["encryption_options"]
        )
    if "scheme_options" in kwargs:
        assert session.scheme_options == tuple(
            AuthenticationScheme(value) for value in kwargs["scheme_options"]
        )
    if "compression" in kwargs:
        assert session.compression is SessionCompression.GZIP
    if state == "established":
        assert session.from_ == Node.parse("srv@irf/n1")
        assert session.to == Node.parse("alice@irf/lab")


@pytest.mark.parametrize(
    ("authentication", "scheme", "fields"),
    [
        (lime.GuestAuthentication(), AuthenticationScheme.GUEST, {}),
        (lime.TransportAuthentication(), AuthenticationScheme.TRANSPORT, {}),
        (lime.PlainAuthentication("cGFzcw=="), AuthenticationScheme.PLAIN,
         {"password": "cGFzcw=="}),
        (lime.KeyAuthentication("a2V5"), AuthenticationScheme.KEY, {"key": "a2V5"}),
        (lime.ExternalAuthentication("tok", "issuer.example"), AuthenticationScheme.EXTERNAL,
         {"token": "tok", "issuer": "issuer.example"}),
    ],
)
def test_its_authentication_decodes(
    authentication: Any, scheme: AuthenticationScheme, fields: dict[str, str]
) -> None:
    envelope = lime.Session(
        "authenticating", scheme=authentication.scheme, authentication=authentication, id="S1",
        from_n="alice@irf/lab",
    )
    session = ours(envelope)
    assert session.scheme is scheme  # type: ignore[attr-defined]
    # Fact: lime-python also writes the scheme inside the authentication object. We keep the
    # object as it came (its shape belongs to the scheme).
    assert session.authentication == {"scheme": scheme.value, **fields}  # type: ignore[attr-defined]


async def test_its_channel_output_decodes() -> None:
    transport = RecordingTransport()
    channel = lime.ClientChannel(transport)
    pending = channel.start_new_session_async()
    try:
        (sent,) = transport.sent
        new = decode(sent)
        assert isinstance(new, Session)
        assert new.state is SessionState.NEW
    finally:
        pending.cancel()


async def test_its_ping_reply_decodes() -> None:
    # Our ping request, read by its channel, answered by it, read back by us.
    channel, transport = established_channel()
    request = Command("get", "/ping", id="p1", from_="srv@irf/n1")
    channel.on_envelope(json.loads(encode(request)))
    (sent,) = transport.sent
    reply = decode(sent)
    assert isinstance(reply, Command)
    assert reply.id == "p1"
    assert (reply.method, reply.status) == (CommandMethod.GET, CommandStatus.SUCCESS)
    assert reply.type == "application/vnd.lime.ping+json"
    assert reply.resource == {}
    assert reply.to == Node.parse("srv@irf/n1")


# ------------------------------------------------- its output that breaks LIME: refused, named


@pytest.mark.parametrize(
    ("envelope", "kind"),
    [
        (lime.Notification("failed", lime.Reason(42, "destination not found"), id="m1"),
         "notification"),
        (lime.Command(method="get", id="c1", status="failure", reason=lime.Reason(67, "nope")),
         "command"),
        (lime.Session("failed", id="S1", reason=lime.Reason(13, "bad credentials")), "session"),
    ],
    ids=["notification", "command", "session"],
)
def test_its_reason_is_a_string_and_we_refuse_it(envelope: Any, kind: str) -> None:
    raw = json.loads(wire(envelope))
    # Fact: lime-python writes a Reason it built as "description (Code n)", not an object.
    assert isinstance(raw["reason"], str)
    assert raw["reason"].endswith(f"(Code {envelope.reason.code})")
    error = refused(wire(envelope))
    assert str(error).startswith("$.reason: expected object, got string")
    assert error.kind == kind
    assert error.envelope_id == envelope.id


def test_a_reason_it_parsed_stays_an_object_when_it_relays() -> None:
    # Fact: from_json keeps a received reason as a plain dict, so relaying it keeps the object.
    ours_failed = Notification("failed", Reason(42, "destination not found"), id="m1")
    relayed = lime.Notification.from_json(json.loads(encode(ours_failed)))
    assert decode(wire(relayed)) == ours_failed


def test_its_unknown_scheme_is_refused() -> None:
    # Its authenticate_session_async sends scheme "unknown" when the Authentication has none.
    envelope = lime.Session(
        "authenticating", scheme="unknown", authentication=lime.Authentication()
    )
    error = refused(wire(envelope))
    assert str(error).startswith("$.scheme: unknown value 'unknown'")
    assert error.code == 13


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_its_non_finite_numbers_are_refused(value: float) -> None:
    # Fact: json.dumps writes NaN/Infinity, which is not JSON.
    data = wire(lime.Message(type_n="application/json", content={"v": value}, id="m1"))
    assert b"NaN" in data or b"Infinity" in data
    assert str(refused(data)).startswith("$: not valid JSON")


def test_its_lone_surrogates_are_refused() -> None:
    data = wire(lime.Message(type_n="text/plain", content="a\ud800b", id="m1"))
    assert b"\\ud800" in data
    assert str(refused(data)).startswith("$: not valid JSON")


# ----------------------------------------------------------------------------- ours -> theirs

_LIME_CLASS = (
    ("content", lime.Message), ("event", lime.Notification), ("method", lime.Command),
    ("state", lime.Session),
)

# Our field, its attribute, how our value appears there.
_COMMON = (("id", "id"), ("from_", "from_n"), ("to", "to"), ("pp", "pp"), ("metadata", "metadata"))


def _theirs(envelope: Envelope) -> Any:
    raw = orjson.loads(encode(envelope))
    cls = next(cls for key, cls in _LIME_CLASS if key in raw)
    return cls.from_json(raw)


def _text(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, tuple):
        return [str(item) for item in value]
    return str(value)


def _reason(reason: Reason | None) -> Any:
    if reason is None:
        return None
    out: dict[str, Any] = {"code": reason.code}
    if reason.description is not None:
        out["description"] = reason.description
    return out


def _expected_fields(envelope: Envelope) -> dict[str, Any]:
    expected = {
        theirs: (_text(getattr(envelope, mine)) if mine != "metadata" else envelope.metadata)
        for mine, theirs in _COMMON
    }
    if isinstance(envelope, Message):
        expected.update(type_n=envelope.type, content=envelope.content)
    elif isinstance(envelope, Notification):
        expected.update(event=envelope.event.value, reason=_reason(envelope.reason))
    elif isinstance(envelope, Command):
        expected.update(
            method=envelope.method.value, uri=envelope.uri, type_n=envelope.type,
            resource=envelope.resource, status=_text(envelope.status),
            reason=_reason(envelope.reason),
        )
    elif isinstance(envelope, Session):
        expected.update(
            state=envelope.state.value,
            encryption_options=_text(envelope.encryption_options),
            encryption=_text(envelope.encryption),
            compression_options=_text(envelope.compression_options),
            compression=_text(envelope.compression),
            scheme_options=_text(envelope.scheme_options),
            scheme=_text(envelope.scheme),
            authentication=envelope.authentication,
            reason=_reason(envelope.reason),
        )
    return expected


def _without_extras(envelope: Envelope) -> Envelope:
    # lime-python drops keys it does not know (its constructors swallow **kwargs).
    return envelope.replace(extras=None)


@settings(max_examples=100, deadline=None)
@given(rs.envelopes().map(_without_extras))
def test_ours_decode_with_its_classes(envelope: Envelope) -> None:
    theirs = _theirs(envelope)
    for attribute, value in _expected_fields(envelope).items():
        assert getattr(theirs, attribute) == value, attribute


@settings(max_examples=100, deadline=None)
@given(rs.envelopes().map(_without_extras))
def test_ours_survive_a_relay_through_it(envelope: Envelope) -> None:
    # Read by lime-python, written again by it, read by us: nothing changed.
    assert decode(wire(_theirs(envelope))) == envelope


def test_it_drops_unknown_keys() -> None:
    message = Message("text/plain", "x", id="m1", extras={"x-trace": "t1"})
    relayed = decode(wire(_theirs(message)))
    assert relayed == message
    assert relayed.extras is None  # fact: lime-python loses it; we keep it (see round-trip tests)
    assert decode(encode(message)).extras == {"x-trace": "t1"}


def test_it_reads_method_and_state_in_another_order() -> None:
    # LIME tells the kind by content > event > method > state. lime-python's channel checks
    # state before method: an object with both is a session to it, a command to us.
    raw = {"id": "c1", "method": "get", "uri": "/x", "state": "finishing"}
    assert isinstance(decode(orjson.dumps(raw)), Command)
    seen: list[str] = []

    class Spy(lime.ClientChannel):  # type: ignore[misc]
        def on_session(self, session: Any) -> None:
            seen.append("session")

        def on_command(self, command: Any) -> None:
            seen.append("command")

    Spy(RecordingTransport()).on_envelope(raw)
    assert seen == ["session"]


# ------------------------------------------------------- its bugs, and our side not sharing them


async def test_it_gives_every_envelope_an_id_and_we_do_not() -> None:
    transport = RecordingTransport()
    pending = lime.ClientChannel(transport).start_new_session_async()
    pending.cancel()
    (new,) = transport.sent
    # Fact: its `new` carries an id it made up, though the server is the one to assign it.
    assert "id" in json.loads(new)
    assert "id" not in orjson.loads(encode(Session("new")))

    channel, transport = established_channel()
    channel.send_message(lime.Message(type_n="text/plain", content="fire and forget"))
    (message,) = transport.sent
    # Fact: a fire-and-forget message gets an id too, so its receivers send receipts for it.
    assert "id" in json.loads(message)
    assert "id" not in orjson.loads(encode(Message("text/plain", "fire and forget")))


async def test_its_receipts_go_to_itself() -> None:
    channel, transport = established_channel("alice@irf/lab")
    message = Message("text/plain", "hi", id="m9", from_="bob@irf/desk", to="alice@irf/lab")
    channel.on_envelope(json.loads(encode(message)))
    (sent,) = transport.sent
    receipt = decode(sent)  # its receipt is valid LIME ...
    assert isinstance(receipt, Notification)
    assert receipt.event is NotificationEvent.RECEIVED
    assert receipt.id == "m9"
    # ... but (fact) addressed to the message's `to`, its own node, not the sender.
    assert receipt.to == Node.parse("alice@irf/lab")
    assert receipt.to != message.sender


def test_it_strips_n_from_names_and_we_do_not() -> None:
    class NonceAuthentication(lime.Authentication):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__("keypair")
            self.signing_nonce = "abc"
            self.key_name = "lab-1"

    written = json.loads(wire(lime.Session("authenticating", id="S1",
                                           authentication=NonceAuthentication())))
    # Fact: every "_n" is removed before camel-casing, so the names change.
    assert set(written["authentication"]) == {"scheme", "signingonce", "keyame"}
    # Our codec keeps the keys of opaque objects and unknown fields exactly as given.
    session = Session("authenticating", id="S1", scheme="keypair",
                      authentication={"signing_nonce": "abc", "key_name": "lab-1"},
                      extras={"x_node": 1})
    obj = orjson.loads(encode(session))
    assert obj["authentication"] == {"signing_nonce": "abc", "key_name": "lab-1"}
    assert obj["x_node"] == 1
    assert decode(encode(session)).authentication == session.authentication


def test_it_writes_reason_as_string_and_we_write_an_object() -> None:
    theirs = json.loads(wire(lime.Notification("failed", lime.Reason(13, "no"), id="m1")))
    mine = orjson.loads(encode(Notification("failed", Reason(13, "no"), id="m1")))
    assert theirs["reason"] == "no (Code 13)"
    assert mine["reason"] == {"code": 13, "description": "no"}


"""Envelope constructors validate and normalise; Node parses LIME addresses."""

from __future__ import annotations

import dataclasses

import pytest

from rain_envelopes import (
    AuthenticationScheme,
    Command,
    CommandMethod,
    CommandStatus,
    EnvelopeValidationError,
    Message,
    Node,
    Notification,
    Reason,
    Session,
    SessionCompression,
)


def test_method_is_normalised() -> None:
    command = Command("GET", "/params/temp")
    assert command.method is CommandMethod.GET
    assert command.id is None  # the channel assigns one when it sends


def test_unknown_method_names_the_allowed_ones() -> None:
    with pytest.raises(EnvelopeValidationError) as caught:
        Command("fly", "/x")
    message = str(caught.value)
    for allowed in ("get", "set", "delete", "merge", "subscribe", "unsubscribe", "observe"):
        assert allowed in message
    assert "'fly'" in message


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: Command("get", None), "uri"),
        (lambda: Command("get", "/x", status="failure"), "reason"),
        (lambda: Command("get", "/x", resource={"a": 1}), "media type"),
        (lambda: Command("get", "/x", status="bogus"), "status"),
        (lambda: Message("", "x"), "type"),
        (lambda: Message("text/plain", None), "content"),
        (lambda: Notification("failed", id="1"), "reason"),
        (lambda: Notification("exploded", id="1"), "event"),
        (lambda: Session("failed"), "reason"),
        (lambda: Session("new", compression="brotli"), "compression"),
        (lambda: Session("new", scheme_options="guest"), "list"),
        (lambda: Command("get", "/x", id=""), "id"),
        (lambda: Command("get", "/x", metadata={"a": 1}), "metadata"),
        (lambda: Reason("1"), "integer"),  # type: ignore[arg-type]
        (lambda: Reason(True), "integer"),
    ],
)
def test_bad_fields_raise_clear_errors(build: object, fragment: str) -> None:
    with pytest.raises(EnvelopeValidationError, match=fragment):
        build()  # type: ignore[operator]


def test_envelopes_are_frozen_and_slotted() -> None:
    command = Command("get", "/x", id="1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        command.uri = "/y"  # type: ignore[misc]
    assert not hasattr(command, "__dict__")


def test_node_fields_accept_strings() -> None:
    message = Message("text/plain", "hi", from_="Alice@IRF/lab", pp="relay@irf")
    assert message.from_ == Node("alice", "irf", "lab")
    assert message.sender == Node.parse("relay@irf")


def test_replies_echo_id_and_method_and_go_back_to_the_sender() -> None:
    request = Command("set", "/params/x", id="7", from_="alice@irf/lab", resource=1,
                      type="application/json")
    ok = request.success({"value": 1})
    assert (ok.id, ok.method, ok.status, ok.to) == ("7", CommandMethod.SET,
                                                    CommandStatus.SUCCESS, request.from_)
    bad = request.failure(64, "out of range")
    assert bad.reason == Reason(64, "out of range")
    assert bad.status is CommandStatus.FAILURE


def test_session_options_become_enum_tuples() -> None:
    session = Session("negotiating", compression_options=["none", "GZIP"])
    assert session.compression_options == (SessionCompression.NONE, SessionCompression.GZIP)


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("alice@irf/lab", ("alice", "irf", "lab")),
        ("alice@irf", ("alice", "irf", None)),
        ("alice@irf/a/b", ("alice", "irf", "a/b")),
        ("@irf", (None, "irf", None)),
        ("alice", ("alice", None, None)),
        ("a@b@c/d", ("a", "b@c", "d")),
    ],
)
def test_node_parsing(text: str, parts: tuple[str | None, ...]) -> None:
    node = Node.parse(text)
    assert (node.name, node.domain, node.instance) == parts
    assert Node.parse(str(node)) == node


def test_node_comparison_is_case_insensitive_per_part() -> None:
    assert Node.parse("Alice@IRF/Lab") == Node.parse("alice@irf/lab")
    assert hash(Node.parse("Alice@IRF")) == hash(Node.parse("alice@irf"))
    assert Node.parse("alice@irf/a") != Node.parse("alice@irf/b")
    assert Node.parse("alice@irf/a").same_identity(Node.parse("ALICE@irf/b"))
    assert Node.parse("alice@irf/lab").identity == "alice@irf"


@pytest.mark.parametrize("bad", ["al ice@irf", "a@b\n", "x" * 2000])
def test_bad_nodes_are_refused(bad: str) -> None:
    with pytest.raises(EnvelopeValidationError):
        Node.parse(bad)


def _all_fields(command: Command) -> None:
    # Commands fill their slots by hand (no dataclass __init__); a field added to Command but
    # not to the filling would be left unset, an AttributeError on a slotted class.
    for field in dataclasses.fields(Command):
        getattr(command, field.name)
    assert type(command) is Command


def test_every_way_of_building_a_command_sets_every_field() -> None:
    request = Command("get", "/x", id="1", from_="alice@irf", metadata={"k": "v"})
    parsed = Command(CommandMethod.GET, "/x", id="1", _parsed=True)
    for command in (request, parsed, request.success(1), request.failure(64),
                    dataclasses.replace(request, uri="/y")):
        _all_fields(command)
    assert parsed == Command("get", "/x", id="1")
    assert request.success(1).to == Node.parse("alice@irf")


def test_the_trusted_path_still_applies_the_rules() -> None:
    # _parsed skips only the type checks and enum parsing the codec did; value rules still run.
    with pytest.raises(EnvelopeValidationError, match="uri"):
        Command(CommandMethod.GET, None, _parsed=True)
    with pytest.raises(EnvelopeValidationError, match="empty"):
        Command(CommandMethod.GET, "", _parsed=True)
    with pytest.raises(EnvelopeValidationError, match="media type"):
        Command(CommandMethod.SET, "/x", resource=1, _parsed=True)
    with pytest.raises(EnvelopeValidationError, match="reason"):
        Command(CommandMethod.GET, "/x", status=CommandStatus.FAILURE, _parsed=True)


def test_a_subclass_of_command_is_filled_the_general_way() -> None:
    class Tagged(Command):
        __slots__ = ("tag",)

    command = Tagged("get", "/x", id="1")
    assert type(command) is Tagged
    assert (command.method, command.uri, command.id) == (CommandMethod.GET, "/x", "1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        command.uri = "/y"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("build", "field"),
    [
        # Full-Unicode lower-casing reads the Kelvin sign (U+212A) as "k"; LIME values are ASCII.
        (lambda: Session("authenticating", scheme="\u212aEY"), "scheme"),
        (lambda: Command("\u212aet", "/x"), "method"),  # not "set"... nor anything else
        (lambda: Session("new", compression_options=["gz\u0130p"]), "compressionOptions"),
    ],
)
def test_enum_values_fold_ascii_only(build: object, field: str) -> None:
    with pytest.raises(EnvelopeValidationError, match=field):
        build()  # type: ignore[operator]


def test_enum_values_in_any_ascii_case_are_read() -> None:
    assert Session("NeW", scheme="KeyPair").scheme is AuthenticationScheme.KEYPAIR

"""Every family of bad input gives EnvelopeDecodeError, and only that, naming the JSON path.

The path is the start of the message: ``$`` for the input as a whole, ``$.reason.code`` for a
field. Other exception types reaching the caller would be a bug: a server answers an
EnvelopeDecodeError with a coded failure, anything else with a traceback.
"""

from __future__ import annotations

import array
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rain_envelopes import codec
from rain_envelopes.codec import MAX_DEPTH, MAX_ENVELOPE_SIZE, decode
from rain_envelopes.errors import (
    EnvelopeDecodeError,
    EnvelopeKind,
    ProtocolError,
    RemoteProtocolError,
)
from tests import strategies as rs

MESSAGE: dict[str, Any] = {"id": "m1", "type": "text/plain", "content": "hi"}
NOTIFICATION: dict[str, Any] = {"id": "n1", "event": "failed", "reason": {"code": 1}}
COMMAND: dict[str, Any] = {
    "id": "c1", "method": "set", "uri": "/x", "type": "application/json", "resource": 1,
}
RESPONSE: dict[str, Any] = {
    "id": "c2", "method": "get", "status": "failure", "reason": {"code": 67},
}
SESSION: dict[str, Any] = {
    "id": "s1", "state": "failed", "reason": {"code": 11, "description": "x"},
    "encryptionOptions": ["none"], "encryption": "none", "compressionOptions": ["gzip"],
    "compression": "gzip", "schemeOptions": ["keypair"], "scheme": "keypair",
    "authentication": {},
}
BASES = {
    "message": MESSAGE, "notification": NOTIFICATION, "command": COMMAND, "response": RESPONSE,
    "session": SESSION,
}


def decode_error(data: Any, **kwargs: Any) -> EnvelopeDecodeError:
    """Decode ``data`` expecting EnvelopeDecodeError (any other exception fails the test)."""
    with pytest.raises(EnvelopeDecodeError) as info:
        decode(data, **kwargs)
    assert type(info.value) is EnvelopeDecodeError
    return info.value


def with_field(base: dict[str, Any], path: str, value: Any) -> bytes:
    obj = json.loads(json.dumps(base))
    target = obj
    *parents, last = path.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[last] = value
    return orjson.dumps(obj)


def test_bases_are_valid() -> None:
    for base in BASES.values():
        decode(orjson.dumps(base))


def test_the_error_is_a_remote_protocol_error() -> None:
    error = decode_error(b"{")
    assert isinstance(error, RemoteProtocolError)
    assert isinstance(error, ProtocolError)
    assert error.code == 21


# ------------------------------------------------------------------------------- not JSON


@pytest.mark.parametrize(
    "data",
    [
        b"{", b"}", b"{'a': 1}", b'{"content":1,"type":"a",}', b'{"content":1 "type":"a"}',
        b"{content: 1}", b'{"content":1,"type":"a"} {}', b'{"content":1,"type":"a"}x',
        b"/* c */ {}", b"\x00", b"\xff\xfe{\x00}\x00", b"<xml/>", b"\x1f\x8b\x08\x00",
        b'{"content":True,"type":"a"}', b'{"content":None,"type":"a"}', b'{"a":"\x01"}',
        b'{"content":01,"type":"a"}', b'{"content":.5,"type":"a"}', b'{"content":+1,"type":"a"}',
        b'\xef\xbb\xbf{"content":1,"type":"a"}', "{".encode("utf-16"),
    ],
)
def test_not_json(data: bytes) -> None:
    error = decode_error(data)
    assert str(error).startswith("$: not valid JSON")
    assert error.envelope_id is None


@pytest.mark.parametrize("data", [b"", "", b" ", b"\n\t ", bytearray(), memoryview(b"")])
def test_empty_input(data: Any) -> None:
    error = decode_error(data)
    assert str(error).startswith("$: ")
    if len(data) == 0:
        assert error.code == 22  # LIME: empty document


@pytest.mark.parametrize("data", [None, 42, 1.5, ["{}"], {"content": 1}, object()])
def test_input_of_the_wrong_python_type(data: Any) -> None:
    assert str(decode_error(data)).startswith("$: expected bytes")


# ------------------------------------------------------------------------ wrong top level


@pytest.mark.parametrize(
    ("data", "got"),
    [
        (b"[]", "array"), (b'[{"state":"new"}]', "array"), (b'"state"', "string"),
        (b"1", "integer"),
        (b"1.5", "number"), (b"null", "null"), (b"true", "boolean"), (b"false", "boolean"),
    ],
)
def test_wrong_top_level_type(data: bytes, got: str) -> None:
    assert str(decode_error(data)) == f"$: expected object, got {got}"


@pytest.mark.parametrize(
    "obj",
    [{}, {"id": "x"}, {"type": "text/plain"}, {"Content": 1, "type": "a"}, {"kind": "message"},
     {"STATE": "new"}, {"uri": "/x", "id": "1"}],
)
def test_no_kind_key(obj: dict[str, Any]) -> None:
    error = decode_error(orjson.dumps(obj))
    assert str(error).startswith("$: not an envelope")
    assert error.envelope_id == obj.get("id")


@pytest.mark.parametrize("key", rs.KIND_KEYS)
def test_kind_key_set_to_null(key: str) -> None:
    error = decode_error(orjson.dumps({"id": "k", key: None, "type": "a"}))
    assert str(error).startswith(f"$.{key}: ")
    assert error.envelope_id == "k"


# ---------------------------------------------------------------------- wrong field types

_NOT_STRING = [1, 1.5, True, [], {}, ["a"]]
_NOT_OBJECT = [1, "x", True, [], [{}]]
_NOT_ARRAY = [1, "none", True, {}, {"0": "none"}]
_NOT_INTEGER = ["1", 1.5, 1.0, True, None, [], {}]

WRONG_TYPES: list[tuple[str, str, Any]] = [
    *[(kind, field, bad) for kind in BASES for field in ("id", "from", "to", "pp")
      for bad in _NOT_STRING],
    *[(kind, "metadata", bad) for kind in BASES for bad in _NOT_OBJECT],
    *[(kind, "metadata.k", bad) for kind in BASES for bad in [1, None, True, [], {}]],
    *[("message", "type", bad) for bad in _NOT_STRING],
    *[("notification", "event", bad) for bad in _NOT_STRING],
    *[("notification", "reason", bad) for bad in [*_NOT_OBJECT, "13: bad key"]],
    *[("notification", "reason.code", bad) for bad in _NOT_INTEGER],
    *[("notification", "reason.description", bad) for bad in [1, True, [], {}]],
    *[("command", field, bad) for field in ("method", "uri", "type") for bad in _NOT_STRING],
    *[("response", "status", bad) for bad in _NOT_STRING],
    *[("response", "reason", bad) for bad in [*_NOT_OBJECT, "Not found (Code 67)"]],
    *[("response", "reason.code", bad) for bad in _NOT_INTEGER],
    *[("session", field, bad) for field in ("state", "encryption", "compression", "scheme")
      for bad in _NOT_STRING],
    *[("session", field, bad)
      for field in ("encryptionOptions", "compressionOptions", "schemeOptions")
      for bad in _NOT_ARRAY],
    *[("session", "authentication", bad) for bad in [1, "x", True, [], [{}]]],
    *[("session", "reason", bad) for bad in [*_NOT_OBJECT, "session error"]],
    *[("session", "reason.code", bad) for bad in _NOT_INTEGER],
]


@pytest.mark.parametrize(("kind", "path", "bad"), WRONG_TYPES)
def test_wrong_field_type(kind: str, path: str, bad: Any) -> None:
    base = BASES[kind]
    error = decode_error(with_field(base, path, bad))
    assert str(error).startswith(f"$.{path}: "), str(error)
    assert error.envelope_id == (None if path == "id" else base["id"])
    expected_kind = "command" if kind == "response" else kind
    assert error.kind == expected_kind


@pytest.mark.parametrize(
    ("field", "bad", "path"),
    [
        ("encryptionOptions", ["none", 1], "encryptionOptions[1]"),
        ("compressionOptions", [None], "compressionOptions[0]"),
        ("schemeOptions", ["keypair", "transport", ["guest"]], "schemeOptions[2]"),
    ],
)
def test_wrong_type_inside_an_option_list(field: str, bad: list[Any], path: str) -> None:
    assert str(decode_error(with_field(SESSION, field, bad))).startswith(f"$.{path}: ")


# ------------------------------------------------------------------------ unknown enum values


@pytest.mark.parametrize(
    ("kind", "field", "value", "code"),
    [
        ("notification", "event", "read", 21),
        ("notification", "event", "", 21),
        ("command", "method", "fly", 27),
        ("command", "method", "get ", 27),
        ("command", "method", "pending", 27),
        ("response", "status", "ok", 24),
        ("response", "status", "failed", 24),
        ("session", "state", "open", 15),
        ("session", "state", "success", 15),
        ("session", "encryption", "ssl", 17),
        ("session", "compression", "brotli", 17),
        ("session", "scheme", "oauth", 13),
        ("session", "encryptionOptions", ["none", "rot13"], 21),
        ("session", "compressionOptions", ["zstd"], 21),
        ("session", "schemeOptions", ["unknown"], 21),
    ],
)
def test_unknown_enum_value(kind: str, field: str, value: Any, code: int) -> None:
    error = decode_error(with_field(BASES[kind], field, value))
    assert str(error).startswith(f"$.{field}")
    assert "unknown value" in str(error) or "must not be empty" in str(error) or (
        "required" in str(error)
    )
    assert error.code == code


# ------------------------------------------------------------------- missing required fields


@pytest.mark.parametrize(
    ("obj", "path"),
    [
        ({"content": "x"}, "$.type"),
        ({"content": "x", "type": None}, "$.type"),
        ({"content": "x", "type": ""}, "$.type"),
        ({"id": "1", "method": "get"}, "$.uri"),
        ({"id": "1", "method": "get", "uri": None}, "$.uri"),
        ({"method": "get", "uri": "/x"}, "$.id"),
        ({"method": "set", "uri": "/x", "id": None}, "$.id"),
        ({"id": "1", "method": "get", "status": "failure"}, "$.reason"),
        ({"id": "1", "method": "set", "uri": "/x", "resource": {"v": 1}}, "$.type"),
        ({"id": "1", "method": "get", "status": "success", "resource": 1}, "$.type"),
        ({"state": "failed"}, "$.reason"),
        ({"state": "failed", "reason": None}, "$.reason"),
        ({"event": "failed", "reason": {}}, "$.reason.code"),
        ({"state": "failed", "reason": {"description": "x"}}, "$.reason.code"),
    ],
)
def test_missing_required_field(obj: dict[str, Any], path: str) -> None:
    assert str(decode_error(orjson.dumps(obj))).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("obj", "path"),
    [
        ({"content": 1, "type": "a", "from": "alice smith@irf"}, "$.from"),
        ({"content": 1, "type": "a", "to": "alice@irf/lab\n"}, "$.to"),
        ({"content": 1, "type": "a", "pp": "a\u0000b@irf"}, "$.pp"),
        ({"content": 1, "type": "a", "from": "a\t@b"}, "$.from"),
        ({"content": 1, "type": "a", "from": "a@" + "d" * 1100}, "$.from"),
    ],
)
def test_bad_node(obj: dict[str, Any], path: str) -> None:
    error = decode_error(orjson.dumps(obj))
    assert str(error).startswith(f"{path}: ")
    assert error.code == 25


def test_error_codes_follow_lime() -> None:
    assert decode_error(b"").code == 22
    assert decode_error(b'{"id":"1","method":"fly","uri":"/x"}').code == 27
    assert decode_error(b'{"id":"1","method":"set","uri":"/x","resource":1}').code == 23
    assert decode_error(b'{"id":"1","method":"get","status":"meh"}').code == 24


# ------------------------------------------------------------------------- nesting depth


def nested(depth: int, *, kind: str = "list") -> bytes:
    """A message whose content makes the whole object exactly ``depth`` levels deep."""
    inner = depth - 1  # the envelope itself is level 1
    if kind == "list":
        content = b"[" * inner + b"]" * inner
    else:
        content = b'{"a":' * (inner - 1) + b"{}" + b"}" * (inner - 1)
    return b'{"id":"deep","type":"application/json","content":' + content + b"}"


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_nesting_at_the_limit_is_accepted(kind: str) -> None:
    decode(nested(MAX_DEPTH, kind=kind))


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 200, 1023, 1024, 1025, 5000, 100_000])
def test_nesting_deeper_than_the_limit(kind: str, depth: int) -> None:
    error = decode_error(nested(depth, kind=kind))
    assert str(error).startswith("$: ")
    assert "deep" in str(error) or "depth" in str(error)


@pytest.mark.parametrize(
    "key", ["resource", "authentication", "x-extra"],
)
def test_deep_nesting_in_any_field(key: str) -> None:
    base = SESSION if key == "authentication" else COMMAND
    deep: Any = {}
    for _ in range(MAX_DEPTH):
        deep = {"a": deep}
    error = decode_error(with_field(base, key, deep))
    assert "deeper than" in str(error)
    assert error.envelope_id == base["id"]


def test_depth_limit_is_a_parameter() -> None:
    decode(nested(10), max_depth=10)
    assert "deeper than 9" in str(decode_error(nested(10), max_depth=9))


def test_unbalanced_deep_input() -> None:
    decode_error(b"[" * 500_000)
    decode_error(b'{"content":' + b"[" * 100_000)


# --------------------------------------------------------------------- NaN and huge numbers


@pytest.mark.parametrize("literal", [b"NaN", b"nan", b"Infinity", b"-Infinity", b"inf", b"1e400",
                                     b"-1e400", b"1" * 400, b"1" + b"0" * 400 + b".0"])
def test_non_finite_numbers(literal: bytes) -> None:
    error = decode_error(b'{"id":"1","type":"application/json","content":' + literal + b"}")
    assert str(error).startswith("$: not valid JSON")


@pytest.mark.parametrize(
    "code", [b"18446744073709551616", b"-9223372036854775809", b"1" * 30, b"1e3", b"1.0", b"13.5"]
)
def test_reason_code_that_is_no_64_bit_integer(code: bytes) -> None:
    error = decode_error(b'{"id":"n","event":"failed","reason":{"code":' + code + b"}}")
    assert str(error).startswith("$.reason.code: ")
    assert error.envelope_id == "n"


@pytest.mark.parametrize("code", [2**64 - 1, -(2**63), 0, -1, 1000])
def test_reason_code_at_the_64_bit_limits(code: int) -> None:
    notification = decode(orjson.dumps({"event": "failed", "reason": {"code": code}}))
    assert notification.reason.code == code  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "literal", ["18446744073709551617", "-9223372036854775809", "9" * 25, "1" + "0" * 30]
)
def test_integer_beyond_64_bits_is_not_silently_changed(literal: str) -> None:
    data = ('{"id":"1","type":"application/json","content":' + literal + "}").encode()
    try:
        message = decode(data)
    except EnvelopeDecodeError:
        return  # refusing it is fine
    content = message.content  # type: ignore[attr-defined]
    assert isinstance(content, int)
    assert content == int(literal)


# ------------------------------------------------------------------------- unicode traps


@pytest.mark.parametrize(
    "data",
    [
        rb'{"type":"text/plain","content":"\ud800"}',
        rb'{"type":"text/plain","content":"\udfff"}',
        rb'{"type":"text/plain","content":"a\udc00\ud800b"}',
        rb'{"type":"text/plain","content":"\ud800\u0041"}',
        rb'{"type":"text/plain","content":"x","id":"\ud83d"}',
        rb'{"type":"text/plain","content":{"\ud800":1}}',
        rb'{"type":"text/plain","content":"x","from":"\udead@irf"}',
        b'{"type":"text/plain","content":"\xed\xa0\x80"}',  # raw UTF-8 of U+D800
        b'{"type":"text/plain","content":"\xed\xbf\xbf"}',  # raw UTF-8 of U+DFFF
        b'{"type":"text/plain","content":"\xc0\xaf"}',  # overlong '/'
        b'{"type":"text/plain","content":"\xe0\x80\xaf"}',  # overlong '/'
        b'{"type":"text/plain","content":"\xff"}',
        b'{"type":"text/plain","content":"\x80"}',
        b'{"type":"text/plain","content":"\xf4\x90\x80\x80"}',  # beyond U+10FFFF
        b'{"type":"text/plain","content":"\xe2\x82"}',  # truncated sequence
        '{"type":"text/plain","content":"\ud800"}',  # a str holding a lone surrogate
        '{"type":"text/plain","content":"\udfff\ud800"}',
    ],
)
def test_lone_surrogates_and_bad_utf8(data: bytes | str) -> None:
    error = decode_error(data)
    assert str(error).startswith("$: not valid JSON")


def test_valid_surrogate_pair_and_non_ascii_are_fine() -> None:
    message = decode(rb'{"type":"text/plain","content":"\ud83d\ude00 \u00e9","from":"\u00e9@irf"}')
    assert message.content == "\U0001f600 \u00e9"  # type: ignore[attr-defined]
    assert decode('{"type":"text/plain","content":"\U0001f600"}').content == "\U0001f600"  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------- oversize


def test_oversize_input() -> None:
    content = "x" * MAX_ENVELOPE_SIZE
    data = orjson.dumps({"id": "big", "type": "text/plain", "content": content})
    error = decode_error(data)
    assert str(error).startswith("$: envelope of ")
    assert "exceeds" in str(error)
    # The size is checked before parsing: even broken JSON says so.
    assert "exceeds" in str(decode_error(b"{" * (MAX_ENVELOPE_SIZE + 1)))


def test_input_exactly_at_the_limit_is_accepted() -> None:
    overhead = len(orjson.dumps({"type": "text/plain", "content": ""}))
    data = orjson.dumps({"type": "text/plain", "content": "x" * (MAX_ENVELOPE_SIZE - overhead)})
    assert len(data) == MAX_ENVELOPE_SIZE
    decode(data)
    decode_error(data + b" ")


def test_str_input_is_measured_in_utf8_bytes() -> None:
    # 400 two-byte characters are 800 bytes: over a limit of 500 though only 400 characters.
    data = '{"type":"text/plain","content":"' + "\u00e9" * 400 + '"}'
    assert "exceeds" in str(decode_error(data, max_size=500))
    decode(data, max_size=1000)


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_size_limit_applies_to_every_bytes_type(wrap: Any) -> None:
    data = b'{"type":"text/plain","content":"' + b"x" * 100 + b'"}'
    assert "exceeds" in str(decode_error(wrap(data), max_size=50))


def test_size_limit_counts_bytes_of_a_wide_memoryview() -> None:
    data = b'{"type":"text/plain","content":"' + b"x" * 100 + b'"}'
    data += b" " * (-len(data) % 8)
    view = memoryview(data).cast("Q")  # 8-byte items: len() is an eighth of the size
    assert "exceeds" in str(decode_error(view, max_size=50))


def test_non_contiguous_memoryview() -> None:
    decode_error(memoryview(b'{"type":"a","content":1}')[::2])
    decode_error(memoryview(array.array("d", [1.5, 2.5])))


# -------------------------------------------------------------------- duplicate keys and ids


def test_duplicate_keys_last_wins() -> None:
    command = decode(b'{"id":"a","id":"b","method":"get","uri":"/x"}')
    assert command.id == "b"
    error = decode_error(b'{"id":"a","method":"get","uri":"/x","uri":7}')
    assert str(error).startswith("$.uri: ")
    assert error.envelope_id == "a"
    # The id that wins is the one that is echoed.
    assert decode_error(b'{"id":"a","id":"b","method":"fly","uri":"/x"}').envelope_id == "b"
    # An id that ends up null leaves a request without one.
    assert str(decode_error(b'{"id":"a","id":null,"method":"get","uri":"/x"}')).startswith("$.id")


# ---------------------------------------------------------------------- envelope id carried


@pytest.mark.parametrize(
    ("obj", "expected_id", "kind"),
    [
        ({"id": "abc", "method": "fly", "uri": "/x"}, "abc", "command"),
        ({"id": "abc", "method": "get", "uri": 5}, "abc", "command"),
        ({"id": "abc", "method": "get", "status": "failure", "reason": "nope"}, "abc", "command"),
        ({"id": "m", "content": 1}, "m", "message"),
        ({"id": "n", "event": "failed"}, "n", "notification"),
        ({"id": "s", "state": "bogus"}, "s", "session"),
        ({"id": "x"}, "x", None),
        ({"id": 5, "method": "get", "uri": "/x"}, None, "command"),
        ({"id": "", "method": "get", "uri": "/x"}, None, "command"),
        ({"id": ["a"], "state": "new"}, None, "session"),
    ],
)
def test_envelope_id_is_carried_when_readable(
    obj: dict[str, Any], expected_id: str | None, kind: str | None
) -> None:
    error = decode_error(orjson.dumps(obj))
    assert error.envelope_id == expected_id
    assert error.kind == kind
    # The kind is an EnvelopeKind member, which still equals the string of earlier versions.
    assert error.kind is None if kind is None else error.kind is EnvelopeKind(kind)


def test_command_errors_carry_method_and_direction() -> None:
    request = decode_error(b'{"id":"1","method":"GET","uri":7}')
    assert (request.method, request.is_response) == ("get", False)
    response = decode_error(b'{"id":"1","method":"set","status":"failure"}')
    assert (response.method, response.is_response) == ("set", True)
    assert decode_error(b'{"id":"1","method":"fly","uri":"/x"}').method is None


@pytest.mark.parametrize("data", [b"{", b"[]", b"", b"x" * (MAX_ENVELOPE_SIZE + 1)])
def test_no_id_when_nothing_could_be_read(data: bytes) -> None:
    assert decode_error(data).envelope_id is None


# ------------------------------------------------------------- path imprecision (known bugs)


@pytest.mark.parametrize(
    ("obj", "path"),
    [
        ({"id": "", "type": "a", "content": 1}, "$.id"),
        ({"id": "1", "method": "get", "uri": ""}, "$.uri"),
        ({"id": "1", "method": "get", "status": "success", "type": ""}, "$.type"),
        ({"id": "1", "event": "failed"}, "$.reason"),
    ],
    ids=["empty-id", "empty-uri", "empty-command-type", "failed-notification-no-reason"],
)
def test_every_field_error_names_its_field(obj: dict[str, Any], path: str) -> None:
    assert str(decode_error(orjson.dumps(obj))).startswith(f"{path}: ")


@pytest.mark.parametrize(
    "obj",
    [  # KELVIN SIGN (U+212A) lowercases to an ASCII 'k': "\u212aey" reads as scheme "key"
        {"state": "authenticating", "scheme": "\u212aey"},
        {"state": "new", "schemeOptions": ["guest", "\u212aey"]},
    ],
    ids=["scheme", "schemeOptions"],
)
def test_enum_case_folding_is_ascii_only(obj: dict[str, Any]) -> None:
    decode_error(orjson.dumps(obj))


# ------------------------------------------------------------------------------- fuzzing


def _only_decode_errors(data: Any) -> None:
    """Decoding either succeeds or raises EnvelopeDecodeError naming a path; nothing else."""
    error: EnvelopeDecodeError | None = None
    try:
        decode(data)
    except EnvelopeDecodeError as exc:
        error = exc
    if error is not None:
        assert str(error).startswith("$")
        assert error.envelope_id is None or isinstance(error.envelope_id, str)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rs.json_values(max_leaves=12))
def test_any_json_value_gives_only_decode_errors(value: Any) -> None:
    _only_decode_errors(orjson.dumps(value))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(
    st.sampled_from(sorted(rs.WIRE_KEYS)) | rs.text(max_size=4),
    rs.json_values(max_leaves=4),
    max_size=8,
))
def test_any_object_with_envelope_keys_gives_only_decode_errors(obj: dict[str, Any]) -> None:
    _only_decode_errors(orjson.dumps(obj))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
@example(b"\xed\xa0\x80")
@example(b'{"content":"\\ud800","type":"a"}')
def test_any_bytes_give_only_decode_errors(data: bytes) -> None:
    _only_decode_errors(data)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=100))
def test_any_str_gives_only_decode_errors(data: str) -> None:
    # Hypothesis text includes lone surrogates: a str can hold what UTF-8 cannot.
    _only_decode_errors(data)


@settings(max_examples=100, deadline=None)
@given(rs.wire_objects(), st.data())
def test_truncated_or_corrupted_envelopes_give_only_decode_errors(
    obj: dict[str, Any], data: st.DataObject
) -> None:
    raw = orjson.dumps(obj)
    cut = data.draw(st.integers(0, len(raw)))
    _only_decode_errors(raw[:cut])
    position = data.draw(st.integers(0, len(raw) - 1))
    byte = data.draw(st.integers(0, 255))
    _only_decode_errors(raw[:position] + bytes([byte]) + raw[position + 1:])


def test_module_constants_are_documented_limits() -> None:
    assert MAX_ENVELOPE_SIZE == 1024 * 1024
    assert MAX_DEPTH == 64
    assert codec.decode is decode

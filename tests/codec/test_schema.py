"""The published JSON Schema and the codec agree on what an envelope is.

The schema (``docs/schema/envelope.schema.json``) is checked with every validator installed, which
must all give the same verdict: ``fastjsonschema`` (a runtime dependency, always present) and
``jsonschema`` (draft 2020-12; optional, not a project dependency: without it the meta-schema
check skips and fastjsonschema alone judges). The schema keeps to keywords that mean the same in
draft 2020-12 and draft 7, so both read it alike.

Where codec and schema differ, they differ by design, and only in these ways (each has its own
test below, and ``by_design`` excludes it from the agreement tests):

- nesting deeper than ``MAX_DEPTH`` and input over ``MAX_ENVELOPE_SIZE``: a schema cannot say
  either; the codec refuses them;
- an integer written as a float (``1.0``, ``1e3``): JSON Schema counts it as an integer; the codec
  wants an integer literal;
- enum values in another ASCII case (``"GET"``): the codec reads them (be liberal in what you
  accept); the schema, which tells writers what to send, wants lowercase.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from rain_envelopes.codec import MAX_DEPTH, MAX_ENVELOPE_SIZE, decode
from rain_envelopes.errors import EnvelopeDecodeError
from tests import strategies as rs
from tests.codec.corpus import CORPUS

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "schema" / "envelope.schema.json"
SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))

Validator = Callable[[Any], bool]


def _jsonschema() -> Validator | None:
    try:
        import jsonschema
    except ImportError:
        return None
    return jsonschema.Draft202012Validator(SCHEMA).is_valid  # type: ignore[no-any-return]


def _fastjsonschema() -> Validator:
    import fastjsonschema

    validate = fastjsonschema.compile(SCHEMA)

    def is_valid(obj: Any) -> bool:
        try:
            validate(obj)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    return is_valid


_VALIDATORS = {"fastjsonschema": _fastjsonschema(), "jsonschema": _jsonschema()}
VALIDATORS: dict[str, Validator] = {
    name: validator for name, validator in _VALIDATORS.items() if validator is not None
}


def schema_verdict(obj: Any) -> bool:
    """Whether ``obj`` is valid for the schema; every installed validator must say the same."""
    verdicts = {name: validator(obj) for name, validator in VALIDATORS.items()}
    assert len(set(verdicts.values())) == 1, (obj, verdicts)
    return next(iter(verdicts.values()))


def test_schema_is_a_valid_2020_12_schema() -> None:
    jsonschema = pytest.importorskip(
        "jsonschema", reason="jsonschema is not installed: only fastjsonschema checked the schema"
    )
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert "jsonschema" in VALIDATORS


def codec_accepts(obj: Any) -> bool:
    try:
        decode(orjson.dumps(obj))
    except EnvelopeDecodeError:
        return False
    return True


# ------------------------------------------------------------------------ by-design differences

_ENUM_FIELDS = {
    "notification": ("event",),
    "command": ("method", "status"),
    "session": ("state", "encryption", "compression", "scheme"),
}
_ENUM_LISTS = {"encryptionOptions": "encryption", "compressionOptions": "compression",
               "schemeOptions": "scheme"}
_KIND_BY_KEY = dict(zip(rs.KIND_KEYS, ("message", "notification", "command", "session"),
                        strict=True))


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(child) for child in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(child) for child in value), default=0)
    return 0


def _other_case(value: Any, field: str) -> bool:
    return (
        isinstance(value, str) and value != value.lower()
        and value.isascii() and value.lower() in rs.ENUM_VALUES[field]
    )


def by_design(obj: Any) -> str | None:
    """Why codec and schema may legitimately disagree on ``obj``, or None if they must agree."""
    if _depth(obj) > MAX_DEPTH:
        return "nesting deeper than MAX_DEPTH"
    if not isinstance(obj, dict):
        return None
    kind = next((_KIND_BY_KEY[key] for key in rs.KIND_KEYS if key in obj), None)
    reason = obj.get("reason")
    if kind in ("notification", "command", "session") and isinstance(reason, dict):
        code = reason.get("code")
        if isinstance(code, float) and code.is_integer() and -(2**63) <= code <= 2**64 - 1:
            return "integer written as a float"
    for field in _ENUM_FIELDS.get(kind or "", ()):
        if _other_case(obj.get(field), field):
            return "enum value in another case"
    if kind == "session":
        for key, field in _ENUM_LISTS.items():
            items = obj.get(key)
            if isinstance(items, list) and any(_other_case(item, field) for item in items):
                return "enum value in another case"
    return None


def test_schema_documents_the_codec_limits() -> None:
    description = SCHEMA["description"]
    assert f"{MAX_DEPTH} levels" in description
    assert f"{MAX_ENVELOPE_SIZE:,} bytes" in description
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_enums_match_the_codec() -> None:
    defs = SCHEMA["$defs"]
    assert tuple(defs["notification"]["properties"]["event"]["enum"]) == rs.ENUM_VALUES["event"]
    assert tuple(defs["command"]["properties"]["method"]["enum"]) == rs.ENUM_VALUES["method"]
    assert tuple(defs["command"]["properties"]["status"]["enum"][:-1]) == rs.ENUM_VALUES["status"]
    assert tuple(defs["session"]["properties"]["state"]["enum"]) == rs.ENUM_VALUES["state"]
    for name in ("encryption", "compression", "scheme"):
        assert tuple(defs[name]["enum"]) == rs.ENUM_VALUES[name]


# --------------------------------------------------------------------------------- agreement

VALID_EXAMPLES: list[dict[str, Any]] = [
    {"state": "new"},
    {"id": "S1", "from": "srv@d/n", "state": "negotiating", "compressionOptions": ["none", "gzip"],
     "encryptionOptions": ["none"]},
    {"id": "S1", "from": "alice@d/lab", "state": "authenticating", "scheme": "transport",
     "authentication": {}},
    {"id": "S1", "from": "srv@d/n", "to": "alice@d/lab", "state": "established"},
    {"id": "S1", "state": "failed", "reason": {"code": 13, "description": "bad key"}},
    {"id": "1", "method": "get", "uri": "/ping"},
    {"id": "1", "method": "get", "status": "success", "type": "application/vnd.lime.ping+json",
     "resource": {}},
    {"method": "observe", "uri": "/params/temp", "type": "application/vnd.rain.sample+json",
     "resource": {"value": 1, "seq": 17}},
    {"id": "2", "method": "set", "uri": "lime://alice@irf/params/x?y=1",
     "type": "application/json", "resource": 5, "metadata": {"#expires": "2026-01-01T00:00:00Z"}},
    {"id": "2", "method": "set", "status": "failure", "reason": {"code": 1001}},
    {"id": "2", "method": "set", "status": "failure", "reason": {"code": 1, "description": None},
     "uri": None, "type": None, "resource": None},
    {"id": "m", "type": "text/plain", "content": "hi", "to": "bob@irf", "x-unknown": [1]},
    {"type": "application/json", "content": False},
    {"id": "m", "event": "failed", "reason": {"code": 101}, "to": "alice@irf/lab"},
    {"id": "m", "event": "validated"},
    {"id": "m", "event": "received", "from": "", "pp": None, "metadata": None},
]


@pytest.mark.parametrize("obj", VALID_EXAMPLES)
def test_protocol_examples_are_valid_for_both(obj: dict[str, Any]) -> None:
    assert codec_accepts(obj)
    assert schema_verdict(obj)


@settings(max_examples=150, deadline=None)
@given(rs.wire_objects())
def test_generated_envelopes_validate(obj: dict[str, Any]) -> None:
    assert schema_verdict(obj), obj


@settings(max_examples=300, deadline=None)
@given(rs.near_envelopes())
def test_schema_and_codec_agree_on_mutated_envelopes(
    obj: dict[str, Any]
) -> None:
    difference = by_design(obj)
    if difference is not None:
        note(f"excluded: {difference}")
        return
    accepted = codec_accepts(obj)
    assert schema_verdict(obj) == accepted, (obj, "codec accepts" if accepted else "codec refuses")


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(
    st.sampled_from(sorted(rs.WIRE_KEYS)) | rs.text(max_size=3),
    rs.json_values(max_leaves=3),
    max_size=6,
))
def test_schema_and_codec_agree_on_random_objects(
    obj: dict[str, Any]
) -> None:
    if by_design(obj) is None:
        assert schema_verdict(obj) == codec_accepts(obj), obj


# The corpus entries that are JSON objects the schema cannot tell from valid ones, and why.
CORPUS_BY_DESIGN = {
    "deep/resource-list-64": "nesting deeper than MAX_DEPTH",
    "deep/resource-list-74": "nesting deeper than MAX_DEPTH",
    "deep/resource-object-64": "nesting deeper than MAX_DEPTH",
    "deep/message-content": "nesting deeper than MAX_DEPTH",
    "deep/authentication": "nesting deeper than MAX_DEPTH",
    "deep/unknown-key": "nesting deeper than MAX_DEPTH",
    "reason/code-integral-float": "integer written as a float",
    "huge-number/reason-code-exponent": "integer written as a float",
    "huge-number/reason-code-below-int64": "integer written as a float",  # -2**63 - 1 -> -2.0**63
}


def test_corpus_objects_fail_the_schema() -> None:
    excluded: dict[str, str] = {}
    for name, data in CORPUS:
        if len(data) > MAX_ENVELOPE_SIZE:
            continue  # refused for its size before parsing; the schema has no size
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue  # not JSON: nothing for a schema to judge
        assert not codec_accepts(obj), name
        difference = by_design(obj)
        if difference is not None:
            excluded[name] = difference
            continue
        assert not schema_verdict(obj), f"{name}: refused by the codec, valid for the schema"
    assert excluded == CORPUS_BY_DESIGN


# ---------------------------------------------------------------- each by-design difference


def test_depth_is_beyond_the_schema() -> None:
    deep: Any = []
    for _ in range(MAX_DEPTH):
        deep = [deep]
    obj = {"type": "application/json", "content": deep}  # MAX_DEPTH + 1 levels with the envelope
    assert schema_verdict(obj)
    assert not codec_accepts(obj)
    assert by_design(obj) == "nesting deeper than MAX_DEPTH"


def test_integral_float_is_an_integer_only_for_the_schema() -> None:
    obj = {"id": "1", "event": "failed", "reason": {"code": 13.0}}
    assert schema_verdict(obj)
    assert not codec_accepts(obj)
    assert codec_accepts({"id": "1", "event": "failed", "reason": {"code": 13}})


def test_enum_case_is_lenient_only_in_the_codec() -> None:
    for obj in [
        {"id": "1", "method": "GET", "uri": "/x"},
        {"state": "New", "compressionOptions": ["GZIP"]},
        {"id": "1", "event": "Received"},
    ]:
        assert codec_accepts(obj)
        assert not schema_verdict(obj)
        assert by_design(obj) == "enum value in another case"


@pytest.mark.parametrize(
    "obj",
    [
        {"content": 1, "type": "a", "from": "a\nb"},
        {"content": 1, "type": "a", "from": "ab\n"},  # a regex `$` would let this through
        {"content": 1, "type": "a", "to": "a" * 1025},
        {"content": 1, "type": "a", "pp": 5},
    ],
)
def test_bad_nodes_fail_both(obj: dict[str, Any]) -> None:
    assert not codec_accepts(obj)
    assert not schema_verdict(obj)


def test_nodes_at_the_limit_pass_both() -> None:
    for node in ["a" * 1024, "", "@", "x/y", "alice@irf/a/b@c", "\u00e9@\u00e9/\u00e9"]:
        obj = {"content": 1, "type": "a", "from": node}
        assert codec_accepts(obj), node
        assert schema_verdict(obj), node

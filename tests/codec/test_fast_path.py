"""The codec's fast path for plain commands agrees with the full reader, always.

The fast path builds a Command without re-running validation, so its safety rests on one
invariant: for any JSON object, it either declines (returns None) or returns exactly the envelope
the full reader builds. A fast path that accepted something the reader refuses, or built a
different envelope, would fail here.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rain_envelopes.codec import _decode_command, _fast_command, _Reader, decode, encode
from rain_envelopes.envelopes import Command
from rain_envelopes.errors import EnvelopeDecodeError, EnvelopeValidationError

from .. import strategies as rs


def _full_reader(obj: dict[str, Any]) -> Command | None:
    raw_id = obj.get("id")
    envelope_id = raw_id if isinstance(raw_id, str) and raw_id else None
    try:
        return _decode_command(_Reader(obj, "$", envelope_id, "command"))
    except (EnvelopeDecodeError, EnvelopeValidationError):
        return None


def _agrees(obj: dict[str, Any]) -> None:
    fast = _fast_command(obj)
    if fast is None:
        return
    slow = _full_reader(obj)
    assert slow is not None, f"fast path accepted what the reader refuses: {obj!r}"
    assert fast == slow
    assert type(fast) is Command
    assert encode(fast) == encode(slow)


# The commands the fast path exists for. Without this, the checks here would pass just as well
# if the fast path declined everything: every example would then return early, unchecked.
PLAIN_COMMANDS = {
    "get": {"id": "c1", "method": "get", "uri": "/params/temp"},
    "set": {"id": "c2", "method": "set", "uri": "/params/temp", "type": "application/json",
            "resource": 21.5},
    "success": {"id": "c1", "method": "get", "uri": "/params/temp", "status": "success",
                "type": "application/vnd.rain.sample+json",
                "resource": {"value": 21.5, "seq": 3, "epoch": "e"}},
    "pending": {"id": "c3", "method": "set", "status": "pending"},
    "observe": {"method": "observe", "uri": "/params/temp", "type": "application/json",
                "resource": 1},
}


@pytest.mark.parametrize("obj", PLAIN_COMMANDS.values(), ids=PLAIN_COMMANDS.keys())
def test_plain_commands_take_the_fast_path(obj: dict[str, Any]) -> None:
    assert _fast_command(obj) is not None, f"the fast path declined {obj!r}"
    _agrees(obj)
    assert decode(orjson.dumps(obj)) == _fast_command(obj)


@settings(max_examples=300, deadline=None)
@given(rs.commands())
def test_fast_path_builds_what_the_reader_builds(command: Command) -> None:
    obj = orjson.loads(encode(command))
    _agrees(obj)
    assert decode(encode(command)) == command


_FIELD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=6),
    st.sampled_from(["get", "set", "observe", "GET", "success", "failure", "pending", "", "/x"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                         max_size=2),
)


@settings(max_examples=600, deadline=None)
@given(st.dictionaries(
    st.sampled_from(["id", "method", "uri", "type", "resource", "status", "reason", "to"]),
    _FIELD_VALUES,
).filter(lambda obj: "method" in obj))
def test_fast_path_never_accepts_what_the_reader_refuses(obj: dict[str, Any]) -> None:
    _agrees(obj)

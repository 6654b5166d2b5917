"""What encode writes, decode accepts: nothing is sent that a peer would refuse."""

from __future__ import annotations

from typing import Any

import pytest

from rain_envelopes.codec import MAX_DEPTH, check_value, decode, encode
from rain_envelopes.envelopes import Message
from rain_envelopes.errors import EnvelopeValidationError


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def test_encode_refuses_nesting_decode_would_refuse() -> None:
    # The message object is one level, so content may add MAX_DEPTH - 1 more.
    fits = Message("application/json", _nested(MAX_DEPTH - 1))
    assert decode(encode(fits)) == fits
    with pytest.raises(EnvelopeValidationError, match="nested deeper"):
        encode(Message("application/json", _nested(MAX_DEPTH)))


@pytest.mark.parametrize(
    "value", [float("nan"), {"a": [float("inf")]}, _nested(MAX_DEPTH), {1, 2}, 2**70]
)
def test_check_value_refuses_what_cannot_travel(value: Any) -> None:
    with pytest.raises(EnvelopeValidationError):
        check_value(value)


@pytest.mark.parametrize("value", [None, 0, 1.5, "x", {"a": [1, None]}, _nested(10)])
def test_check_value_accepts_what_can(value: Any) -> None:
    check_value(value)

"""Every entry of the malformed-envelope corpus is refused with EnvelopeDecodeError, quickly."""

from __future__ import annotations

import time

import orjson
import pytest

from rain_envelopes.codec import MAX_ENVELOPE_SIZE, decode
from rain_envelopes.errors import EnvelopeDecodeError
from tests.codec.corpus import CORPUS, FAMILIES

LIMIT_SECONDS = 0.1



def test_corpus_is_large_and_covers_every_family() -> None:
    assert len(CORPUS) >= 150
    names = [name for name, _ in CORPUS]
    assert len(names) == len(set(names)), "corpus names must be unique"
    assert all(isinstance(data, bytes) for _, data in CORPUS)
    assert {
        "not-json", "top-level", "wrong-type", "unknown-kind", "unknown-value", "bad-uri",
        "unicode", "huge-number", "deep", "duplicate", "reason", "missing", "bad-node",
        "oversize",
    } <= FAMILIES


@pytest.mark.parametrize(("name", "data"), CORPUS, ids=[name for name, _ in CORPUS])
def test_corpus_entry_is_refused_quickly(name: str, data: bytes) -> None:
    start = time.perf_counter()
    with pytest.raises(EnvelopeDecodeError) as info:
        decode(data)
    elapsed = time.perf_counter() - start
    assert type(info.value) is EnvelopeDecodeError
    assert elapsed < LIMIT_SECONDS, f"{name} took {elapsed * 1000:.1f} ms"
    message = str(info.value)
    assert message.startswith("$"), message
    assert info.value.envelope_id == _readable_id(data), message


def _readable_id(data: bytes) -> str | None:
    """The id a reply can echo: that of a parseable object whose id is a non-empty string."""
    if len(data) > MAX_ENVELOPE_SIZE:
        return None  # refused before parsing, on purpose
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None  # nesting past orjson's own limit (1024) lands here too
    if isinstance(obj, dict) and isinstance(obj.get("id"), str) and obj["id"]:
        return obj["id"]
    return None


def test_most_entries_carry_an_id_to_echo() -> None:
    # A server answers a command it can identify with a failure carrying the same id; make sure
    # the corpus exercises that path and not only the anonymous one.
    with_id = sum(1 for _, data in CORPUS if _readable_id(data) is not None)
    assert with_id >= 100

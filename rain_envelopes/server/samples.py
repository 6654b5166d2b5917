"""Media types and the sample document that carries a parameter value on the wire.

A sample is ``{"value": <JSON>, "timestamp": "2026-01-01T00:00:00.000Z", "seq": 17,
"epoch": "<server start id>"}`` (PROTOCOL.md, RAIN extensions). Invariants:

- ``timestamp`` is UTC, ISO-8601 with exactly millisecond precision and a ``Z`` suffix;
- ``seq`` counts the samples of one parameter within one ``epoch`` and never goes backwards;
- ``epoch`` changes every time a server starts, so a client that sees a new epoch knows its
  subscriptions were lost and its ``seq`` bookkeeping must restart.

An ``observe`` push may add ``"dropped": n``: how many samples of this subscription were dropped
(queue full) since the previous push. Pure: no I/O.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "COLLECTION_TYPE",
    "JSON_TYPE",
    "PARAMETER_TYPE",
    "SAMPLE_TYPE",
    "Sample",
    "collection",
    "format_timestamp",
    "new_epoch",
    "utc_now",
]

SAMPLE_TYPE = "application/vnd.rain.sample+json"
PARAMETER_TYPE = "application/vnd.rain.parameter+json"
COLLECTION_TYPE = "application/vnd.lime.collection+json"
JSON_TYPE = "application/json"


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_timestamp(moment: datetime) -> str:
    """``2026-01-01T00:00:00.000Z``: UTC, milliseconds, ``Z``. Naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def new_epoch(moment: datetime | None = None) -> str:
    """A server start id: readable start time plus random bits, unique across restarts."""
    moment = moment or utc_now()
    return moment.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(4)


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of one parameter, as read or set at ``timestamp``."""

    value: Any
    timestamp: str
    seq: int
    epoch: str

    def document(self, *, dropped: int = 0) -> dict[str, Any]:
        """The wire document; ``dropped`` is added only when something was dropped."""
        doc: dict[str, Any] = {
            "value": self.value,
            "timestamp": self.timestamp,
            "seq": self.seq,
            "epoch": self.epoch,
        }
        if dropped:
            doc["dropped"] = dropped
        return doc

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Sample:
        """Read a sample document (client side). Raises ValueError when it is not one."""
        try:
            return cls(doc["value"], str(doc["timestamp"]), int(doc["seq"]), str(doc["epoch"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a sample document: {exc}") from None


def collection(item_type: str, items: list[Any]) -> dict[str, Any]:
    """A LIME collection document."""
    return {"total": len(items), "itemType": item_type, "items": items}

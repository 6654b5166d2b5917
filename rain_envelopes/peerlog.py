"""Aggregated, rate-limited logging for everything a peer can make us log.

Theory of operation. A remote peer must never decide how much we write to disk: an attacker
that sends 7,000 refused handshakes or bad frames a second would otherwise write 7,000 log
lines a second. So every log line a peer can trigger goes through a :class:`PeerLog`, keyed by
``(kind, peer)``, where *kind* is a short fixed string chosen by our code (``"bad-frame"``,
``"handshake-refused"``) and *peer* is what we know of the sender (an identity, an address).

- The first event of a key in an interval is logged at once, as written.
- Further events of that key in the same interval are only counted.
- When the interval is over, the next call of any kind (or :meth:`PeerLog.flush`) writes one
  summary line per key that had suppressed events: ``"... 6999 more like this from PEER in
  the last 10 s"``. So the log shows every kind of trouble from every peer, promptly, at a
  cost of at most two lines per key per interval.
- The number of keys tracked is bounded (``max_keys``); past it, new peers are counted under
  the peer ``"(others)"``, so a flood of distinct peers cannot grow memory or the log either.

The clock is injectable and nothing here awaits or starts threads: the owner (a server, a
listener) calls :meth:`PeerLog.flush` from its own timer so summaries do not wait for the next
event. Thread-safe: the ZAP thread and the event loop may share one instance.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["OTHERS", "PeerLog"]

#: The peer name under which events are counted once ``max_keys`` keys are tracked.
OTHERS = "(others)"


@dataclass(slots=True)
class _Bucket:
    level: int
    started: float
    suppressed: int = 0
    message: str = ""


class PeerLog:
    """Rate-limited logging of peer-triggered events: one line per (kind, peer) per interval.

    ``interval`` seconds per window; ``max_keys`` distinct (kind, peer) keys tracked at most.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = 10.0,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._lock = threading.Lock()
        #: Events seen, logged or not, by kind (for tests and metrics).
        self.counts: dict[str, int] = {}

    def event(self, level: int, kind: str, peer: str | None, message: str, *args: object) -> None:
        """Record one event; log it now if it is the first of its key in this interval.

        ``message % args`` is only formatted when the line is written.
        """
        now = self._clock()
        who = peer or "unknown peer"
        emit: list[tuple[int, str, tuple[object, ...]]] = []
        with self._lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self._expire(now, emit)
            key = (kind, who)
            bucket = self._buckets.get(key)
            if bucket is None and len(self._buckets) >= self.max_keys:
                key = (kind, OTHERS)
                bucket = self._buckets.get(key)
                who = OTHERS
            if bucket is None:
                self._buckets[key] = _Bucket(level, now)
                emit.append((level, message, args))
            else:
                bucket.suppressed += 1
                bucket.level = max(bucket.level, level)
                if not bucket.message:
                    bucket.message = message % args if args else message
        self._write(emit)

    def flush(self) -> None:
        """Write the summaries of every interval that is over."""
        emit: list[tuple[int, str, tuple[object, ...]]] = []
        with self._lock:
            self._expire(self._clock(), emit)
        self._write(emit)

    def _expire(self, now: float, emit: list[tuple[int, str, tuple[object, ...]]]) -> None:
        done = [k for k, b in self._buckets.items() if now - b.started >= self.interval]
        for key in done:
            bucket = self._buckets.pop(key)
            if bucket.suppressed:
                kind, who = key
                emit.append((
                    bucket.level,
                    "%d more %s events from %s in the last %.0f s (first: %s)",
                    (bucket.suppressed, kind, who, now - bucket.started, bucket.message),
                ))

    def _write(self, emit: list[tuple[int, str, tuple[object, ...]]]) -> None:
        for level, message, args in emit:
            self.logger.log(level, message, *args)

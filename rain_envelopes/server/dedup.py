"""The window of recent ``set`` commands, kept per identity, that makes a retried set safe.

Theory of operation. A client that lost the answer to a ``set`` sends it again with the same
command id. The server remembers, for each authenticated identity, the last ``size`` set ids it
handled with a fingerprint of what was asked and the (future) answer; a repeat is answered from
here instead of being applied again.

Invariants:

- one window per identity: an identity's own sets are the only thing that can push its entries
  out, so one client (or an attacker holding one valid key) cannot make another client's retry
  apply twice by sending many sets of its own;
- each window holds at most ``size`` entries, oldest evicted first, and an answered entry older
  than ``max_age`` seconds is forgotten (the same bounds the state file keeps: store.py);
- at most ``max_identities`` windows are kept. Identities are authenticated names, so in
  practice the authorised-keys table (plus ``guest``) bounds them; the cap is a safety net for
  a table that churns across reloads, and evicts the window used least recently;
- a fingerprint is a 16-byte digest of the request, not the request: a window of large values
  costs the answers, not a second copy of every value.

With a state file (store.py) this window is the fast path in front of the stored one: it holds
the sets still running, whose waiters share the first outcome, and recent answers; a miss here is
looked up in the file.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import orjson

from ..envelopes import Command

__all__ = ["SetWindow", "fingerprint"]


def fingerprint(command: Command) -> bytes:
    """A digest of what a set asks for: the same id reused for another request differs."""
    data = orjson.dumps(
        [command.uri, command.type, command.resource], option=orjson.OPT_SORT_KEYS
    )
    return hashlib.blake2b(data, digest_size=16).digest()


@dataclass(slots=True)
class Entry:
    """One remembered set: what it asked for and its answer (done once it has one)."""

    fingerprint: bytes
    answer: asyncio.Future[Command]
    #: When it was remembered (the window's clock).
    created: float = field(default=0.0)


class SetWindow:
    """Recent set ids per identity. Not thread-safe: used from the event loop only."""

    def __init__(
        self,
        size: int,
        *,
        max_age: float = float("inf"),
        max_identities: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if size < 1 or max_identities < 1:
            raise ValueError("size and max_identities must be at least 1")
        if not max_age > 0:
            raise ValueError("max_age must be positive")
        self.size = size
        self.max_age = max_age
        self.max_identities = max_identities
        self._clock = clock
        self._windows: OrderedDict[str, OrderedDict[str, Entry]] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(window) for window in self._windows.values())

    def lookup(self, identity: str, command_id: str) -> Entry | None:
        window = self._windows.get(identity)
        entry = None if window is None else window.get(command_id)
        if entry is not None and self._stale(entry, self._clock()):
            self.forget(identity, command_id)
            return None
        return entry

    def _stale(self, entry: Entry, now: float) -> bool:
        # A set still running is never aged out: its waiters need its answer.
        return entry.answer.done() and now - entry.created > self.max_age

    def remember(self, identity: str, command_id: str, entry: Entry) -> None:
        """Add an entry, evicting this identity's oldest beyond ``size`` (their waiters are
        cancelled) and the least recently used identity beyond ``max_identities``."""
        window = self._windows.get(identity)
        if window is None:
            window = self._windows[identity] = OrderedDict()
            while len(self._windows) > self.max_identities:
                _, evicted = self._windows.popitem(last=False)
                _cancel(evicted.values())
        else:
            self._windows.move_to_end(identity)
        now = self._clock()
        entry.created = now
        window[command_id] = entry
        while len(window) > self.size:
            _, old = window.popitem(last=False)
            _cancel([old])
        for old_id, old in list(window.items()):  # oldest first: stop at the first fresh one
            if not self._stale(old, now):
                break
            del window[old_id]

    def forget(self, identity: str, command_id: str) -> None:
        window = self._windows.get(identity)
        if window is not None:
            window.pop(command_id, None)
            if not window:
                del self._windows[identity]

    def clear(self) -> None:
        """Forget everything; answers still awaited are cancelled."""
        for window in self._windows.values():
            _cancel(window.values())
        self._windows.clear()

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for identity, window in self._windows.items():
            for command_id in window:
                yield identity, command_id


def _cancel(entries: Iterable[Entry]) -> None:
    for entry in entries:
        if not entry.answer.done():
            entry.answer.cancel()

"""An adapter that lets lime-python's ``ClientChannel`` talk to a RAIN transport unchanged.

lime-python 2.0.13 ships no transport of its own that we could point at a RAIN server, only the
abstract ``lime_python.Transport``: the channel hands it each envelope as the dict its own
``Serializable.to_json()`` made (a synchronous ``send``), and expects the transport to call
``on_envelope(dict)`` for each envelope that arrives. :class:`LimeAdapterTransport` implements
that interface on top of one end of a RAIN :class:`~rain_envelopes.transport.Transport` (in the
tests, the client end of ``memory_transport_pair()``):

- outgoing: lime's dict -> ``json.dumps`` (what lime's own ``Serializable.__str__`` does) -> UTF-8
  bytes -> a writer task -> ``transport.send``. lime's ``send`` is synchronous, so frames go
  through a FIFO queue drained by one task: the order lime sent them in is the order on the wire;
- incoming: a reader task -> ``transport.receive`` -> ``json.loads`` -> ``on_envelope(dict)``,
  exactly the dict lime's ``Channel.on_envelope`` decodes with its own ``from_json``.

Nothing of lime-python is patched or re-implemented: what crosses the link is lime's own
serialisation, bugs included, so the tests see what a real lime-python peer would send.

Observability for the tests: every dict lime sent is kept in :attr:`sent` and every dict
delivered to lime in :attr:`received`. An exception lime's ``on_envelope`` raises, and a frame
that is not JSON at all (:class:`UnreadableFrame`), is kept in :attr:`errors` and the reader goes
on, as a network transport's read loop would, so a test can assert that there were none, or
exactly which. :meth:`wait_received` and :meth:`wait_until` wait on a condition the reader
notifies after every frame, never on a timer.

Only compression ``none`` and encryption ``none`` are supported: the adapter refuses to be told
to apply anything else rather than silently send frames the peer cannot read.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from lime_python import Transport as LimeTransport

from rain_envelopes.errors import TransportClosed, TransportError
from rain_envelopes.transport import Transport

__all__ = ["LimeAdapterTransport", "UnreadableFrame"]

log = logging.getLogger("tests.interop.lime_adapter")

_NONE = "none"
_STOP = None


class UnreadableFrame(ValueError):
    """A frame that is not UTF-8 JSON (e.g. gzip that lime-python never agreed to read)."""

    def __init__(self, data: bytes, error: ValueError) -> None:
        super().__init__(f"frame of {len(data)} bytes is not UTF-8 JSON: {error}")
        self.data = data


class LimeAdapterTransport(LimeTransport):
    """lime-python's Transport interface over a RAIN transport (see the module docstring)."""

    def __init__(self, link: Transport) -> None:
        super().__init__(compression=_NONE, encryption=_NONE)
        self.link = link
        #: Every envelope lime-python sent, as the dict it handed to ``send``.
        self.sent: list[dict[str, Any]] = []
        #: Every envelope delivered to lime-python, as the dict handed to ``on_envelope``.
        self.received: list[dict[str, Any]] = []
        #: What went wrong per frame, in order: exceptions lime-python's ``on_envelope`` raised
        #: and UnreadableFrame for frames that are not JSON. The reader went on after each.
        self.errors: list[Exception] = []
        #: Set once the link has ended (closed by either side).
        self.link_closed = asyncio.Event()
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    # ------------------------------------------------------------- lime_python.Transport API

    def on_envelope(self, envelope: dict[str, Any]) -> None:
        """Replaced by lime's ``Channel.__init__`` (``transport.on_envelope = ...``)."""
        raise RuntimeError("no lime-python channel is attached to this transport")

    async def open_async(self, uri: str | None = None) -> None:
        """Open the RAIN link and start pumping; ``uri`` is ignored (the link is given)."""
        if self._reader is not None:
            return
        await self.link.open()
        self._reader = asyncio.create_task(self._read_loop(), name="lime-adapter-reader")
        self._writer = asyncio.create_task(self._write_loop(), name="lime-adapter-writer")

    async def close_async(self) -> None:
        """Close the link and stop both pumps. Idempotent; lime calls it on finished/failed."""
        if self._closing:
            return
        self._closing = True
        self._outbox.put_nowait(_STOP)
        current = asyncio.current_task()
        for task in (self._reader, self._writer):
            if task is not None and task is not current and not task.done():
                task.cancel()
        await self.link.close()
        await self._mark_closed()

    def send(self, envelope: dict[str, Any]) -> None:
        """Queue one of lime's envelope dicts; the writer task puts it on the link in order."""
        if self._closing or self.link_closed.is_set():
            raise ConnectionError("the adapter transport is closed")
        data = json.dumps(envelope).encode("utf-8")
        self.sent.append(json.loads(data))  # what actually crossed, not lime's live dict
        self._outbox.put_nowait(data)

    def get_supported_compression(self) -> list[str]:
        return [_NONE]

    def set_compression(self, compression: str | None) -> None:
        # lime calls this with the server's `compression` field when negotiation is skipped;
        # a RAIN server leaves it out then, so None means "unchanged" (none).
        if compression not in (None, _NONE):
            raise ValueError(f"the adapter applies no compression (asked for {compression!r})")

    def get_supported_encryption(self) -> list[str]:
        return [_NONE]

    def set_encryption(self, encryption: str | None) -> None:
        if encryption not in (None, _NONE):
            raise ValueError(f"the adapter applies no encryption (asked for {encryption!r})")

    # ------------------------------------------------------------------ for the tests

    async def wait_received(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first envelope delivered to lime that matches ``predicate``.

        Waits on a condition the reader notifies after each frame (no polling). Raises
        ConnectionError when the link ends before one arrives. Bound it with a timeout.
        """
        found: list[dict[str, Any]] = []

        def matched() -> bool:
            found.extend(e for e in self.received if predicate(e))
            return bool(found)

        await self.wait_until(matched)
        return found[0]

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds, re-checked after each frame the reader handles.

        Raises ConnectionError when the link ends first. Bound it with a timeout.
        """
        async with self._changed:
            while not condition():
                if self.link_closed.is_set():
                    raise ConnectionError("the link ended before the condition held")
                await self._changed.wait()

    # ------------------------------------------------------------------ pumps

    async def _write_loop(self) -> None:
        while True:
            data = await self._outbox.get()
            if data is _STOP:
                return
            try:
                await self.link.send(data)
            except TransportError as exc:  # TransportClosed included: the peer went away
                log.debug("adapter: frame not sent: %s", exc)
                return

    async def _read_loop(self) -> None:
        try:
            while True:
                try:
                    data = await self.link.receive()
                except TransportClosed:
                    return
                async with self._changed:
                    self._deliver(data)
                    self._changed.notify_all()
        finally:
            if not self._closing:
                await self._mark_closed()

    def _deliver(self, data: bytes) -> None:
        try:
            envelope = json.loads(data)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
            log.debug("adapter: unreadable frame: %s", exc)
            self.errors.append(UnreadableFrame(data, exc))
            return
        self.received.append(envelope)
        try:
            self.on_envelope(envelope)
        except Exception as exc:  # lime-python's bug, not ours: keep it and read on
            log.debug("adapter: lime-python's on_envelope raised %r", exc)
            self.errors.append(exc)

    async def _mark_closed(self) -> None:
        self.link_closed.set()
        async with self._changed:
            self._changed.notify_all()

"""Helpers for the core tests: sans-I/O protocols wired back to back, with no sockets.

``pump(client, server)`` does what two channels and a perfect link would do, with plain lists:
it moves each side's ``data_to_send()`` into the other's ``receive_data()`` until neither has
anything left to say, answering protocol errors with ``reply_to_error`` as a channel does. It
returns every frame that crossed, in order, so a test can assert the exact envelope sequence or
look at the raw bytes (gzip or plain JSON).
"""

from __future__ import annotations

import collections
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from rain_envelopes.codec import decode
from rain_envelopes.envelopes import Envelope, Session, SessionState
from rain_envelopes.errors import EnvelopeDecodeError, RemoteProtocolError
from rain_envelopes.protocol import ClientProtocol, ServerProtocol

GZIP_MAGIC = b"\x1f\x8b"

CLIENT = "client"
SERVER = "server"


def decode_frame(data: bytes) -> Envelope:
    """Decode one wire frame, gunzipping it first when it carries the gzip magic."""
    if data.startswith(GZIP_MAGIC):
        data = zlib.decompress(data, 31)
    return decode(data)


def _readable(data: bytes) -> Envelope | None:
    try:
        return decode_frame(data)
    except (EnvelopeDecodeError, zlib.error):
        return None


@dataclass(frozen=True)
class Frame:
    """One frame that crossed the link: who sent it, its bytes, and what they decode to."""

    sender: str
    data: bytes
    #: None when the bytes are no valid envelope (a test fed garbage on purpose).
    envelope: Envelope | None = field(compare=False)
    #: True when the receiver had already closed, so the frame went nowhere.
    dropped: bool = False
    #: The protocol error ``receive_data`` raised for this frame, if any.
    error: RemoteProtocolError | None = field(default=None, compare=False)

    @property
    def gzipped(self) -> bool:
        return self.data.startswith(GZIP_MAGIC)


class Link:
    """A perfect link between a client and a server protocol, delivering one frame at a time.

    Frames wait in one queue in the order they were queued; ``step`` delivers the oldest.
    ``run`` delivers until quiet, or until ``until(next_frame)`` is true (that frame is then
    left waiting, so a test can look at it or ``replace_next`` it before delivering).
    """

    def __init__(self, client: ClientProtocol, server: ServerProtocol) -> None:
        self.client = client
        self.server = server
        self.queue: collections.deque[tuple[str, bytes]] = collections.deque()
        self.frames: list[Frame] = []

    def _collect(self) -> None:
        self.queue.extend((CLIENT, data) for data in self.client.data_to_send())
        self.queue.extend((SERVER, data) for data in self.server.data_to_send())

    def peek(self) -> Frame | None:
        """The next frame to be delivered, undelivered, or None when quiet."""
        self._collect()
        if not self.queue:
            return None
        sender, data = self.queue[0]
        return Frame(sender, data, _readable(data))

    def replace_next(self, data: bytes) -> None:
        """Put ``data`` on the wire instead of the next frame (same sender)."""
        self._collect()
        sender, _ = self.queue.popleft()
        self.queue.appendleft((sender, data))

    def inject(self, sender: str, data: bytes) -> None:
        """Put ``data`` on the wire before anything queued, as sent by ``sender``."""
        self.queue.appendleft((sender, data))

    def step(self) -> Frame:
        self._collect()
        sender, data = self.queue.popleft()
        frame = deliver(sender, data, self.server if sender == CLIENT else self.client)
        self.frames.append(frame)
        return frame

    def run(self, until: Callable[[Frame], bool] | None = None, *, limit: int = 200) -> list[Frame]:
        """Deliver until quiet (or ``until``); return the frames delivered by this call."""
        start = len(self.frames)
        for _ in range(limit):
            upcoming = self.peek()
            if upcoming is None:
                return self.frames[start:]
            if until is not None and until(upcoming):
                return self.frames[start:]
            self.step()
        raise AssertionError(f"client and server still talking after {limit} frames")

    def run_until(self, until: Callable[[Frame], bool]) -> Frame:
        """Deliver until the next frame matches ``until``; return that frame, undelivered."""
        self.run(until)
        upcoming = self.peek()
        assert upcoming is not None, "the awaited frame was never sent"
        assert until(upcoming)
        return upcoming


def pump(client: ClientProtocol, server: ServerProtocol) -> list[Frame]:
    """Move frames both ways until quiet; return every frame that crossed, in order.

    A receiver whose session has ended gets nothing more (the link is closed): such frames are
    recorded with ``dropped=True``. Raises AssertionError when the two never go quiet.
    """
    return Link(client, server).run()


def deliver(sender: str, data: bytes, target: ClientProtocol | ServerProtocol) -> Frame:
    """Feed one frame to ``target`` as a channel would; return what happened as a Frame."""
    envelope = _readable(data)
    if target.closed:
        return Frame(sender, data, envelope, dropped=True)
    try:
        target.receive_data(data)
    except RemoteProtocolError as exc:
        target.reply_to_error(exc)
        return Frame(sender, data, envelope, error=exc)
    return Frame(sender, data, envelope)


def session_steps(frames: list[Frame]) -> list[tuple[str, SessionState]]:
    """``(sender, state)`` of every session envelope among ``frames``."""
    return [
        (frame.sender, frame.envelope.state)
        for frame in frames
        if isinstance(frame.envelope, Session)
    ]


def last_session(frames: list[Frame], sender: str) -> Session:
    """The last session envelope ``sender`` sent."""
    for frame in reversed(frames):
        if frame.sender == sender and isinstance(frame.envelope, Session):
            return frame.envelope
    raise AssertionError(f"the {sender} sent no session envelope")

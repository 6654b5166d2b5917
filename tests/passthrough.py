"""A transport that hands everything to the transport it wraps.

Tests subclass it to meddle with one thing (drop sends, stop reading, refuse a frame) and keep
the rest of the link exactly as it was, including what a channel reads off a transport: the
proven peer key, the address, the encryption and the compressions on offer.
"""

from __future__ import annotations

from rain_envelopes.envelopes import SessionEncryption
from rain_envelopes.transport import Transport


class PassThroughTransport(Transport):
    """Forwards every call and attribute to ``inner``; override what a test changes."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner

    @property  # type: ignore[override]
    def peer_identity(self) -> str | None:
        return self.inner.peer_identity

    @property  # type: ignore[override]
    def peer_address(self) -> str | None:
        return self.inner.peer_address

    @property  # type: ignore[override]
    def encryption(self) -> SessionEncryption:
        return self.inner.encryption

    async def open(self) -> None:
        await self.inner.open()

    async def send(self, data: bytes) -> None:
        await self.inner.send(data)

    async def receive(self) -> bytes:
        return await self.inner.receive()

    async def close(self) -> None:
        await self.inner.close()

    @property
    def closed(self) -> bool:
        return self.inner.closed

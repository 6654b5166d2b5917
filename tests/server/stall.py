"""A transport wrapper whose reading can be stopped: a client that never reads again."""

from __future__ import annotations

import asyncio

from rain_envelopes.envelopes import SessionCompression, SessionEncryption
from rain_envelopes.transport import Transport


class StallableTransport(Transport):
    """Passes everything through until ``stall()``; then ``receive`` never returns."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self._stalled = False
        self._never = asyncio.Event()

    @property  # type: ignore[override]
    def encryption(self) -> SessionEncryption:
        return self.inner.encryption

    @property  # type: ignore[override]
    def compression_options(self) -> tuple[SessionCompression, ...]:
        return self.inner.compression_options

    def stall(self) -> None:
        self._stalled = True

    async def open(self) -> None:
        await self.inner.open()

    async def send(self, data: bytes) -> None:
        await self.inner.send(data)

    async def receive(self) -> bytes:
        if self._stalled:
            await self._never.wait()
        data = await self.inner.receive()
        if self._stalled:
            await self._never.wait()
        return data

    async def close(self) -> None:
        self._never.set()
        await self.inner.close()

    @property
    def closed(self) -> bool:
        return self.inner.closed

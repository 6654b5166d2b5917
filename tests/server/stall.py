"""A transport wrapper whose reading can be stopped: a client that never reads again."""

from __future__ import annotations

import asyncio

from rain_envelopes.transport import Transport
from tests.passthrough import PassThroughTransport


class StallableTransport(PassThroughTransport):
    """Passes everything through until ``stall()``; then ``receive`` never returns."""

    def __init__(self, inner: Transport) -> None:
        super().__init__(inner)
        self._stalled = False
        self._never = asyncio.Event()

    def stall(self) -> None:
        self._stalled = True

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

"""Establishing a session over a long link: a real ZeroMQ connect through a delay (issue 8).

A satellite or radio link has a round trip time (RTT) of 0.6-2 s, so what an establishment costs
is best counted in round trips. The fault proxy (tests/faultproxy.py) delays every byte by a
fixed one-way delay in each direction; everything else runs on 127.0.0.1, where a round trip
costs next to nothing, so ``elapsed / RTT`` is the number of round trips.

Through the proxy (whose own TCP connect is local, so TCP's handshake is not counted), measured:

- the ZMTP greeting and CURVE handshake: about 3.5 round trips (libzmq sends its greeting in
  three stages, each waiting for the peer's previous one, then HELLO/WELCOME/INITIATE/READY);
- the LIME part: 3 round trips with the plain exchange (negotiation, authentication, verdict),
  1 with the shortcut (a proposal on ``new`` answered by ``established``);
- so ``connect()``: about 6.6 before, about 4.6 after.

The bounds leave half a round trip of slack for a loaded machine and still fail on the plain
exchange. The exact per-stage counts, without timing, are in tests/core/test_protocol.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from rain_envelopes import (
    AuthorizedKeys,
    ClientChannel,
    ClientSecurity,
    Identity,
    ServerAuthenticator,
    ServerChannel,
    ServerSecurity,
    connect,
    transport_factory,
)

from .faultproxy import FaultProxy

ONE_WAY = 0.3  # seconds each way
RTT = 2 * ONE_WAY
LIMIT = 9.0  # seconds: every test body runs under this


@asynccontextmanager
async def station(keys: AuthorizedKeys, identity: Identity) -> AsyncIterator[FaultProxy]:
    """A session server behind a fault proxy with ``ONE_WAY`` delay; yields the proxy."""
    listener = transport_factory("tcp://127.0.0.1:0").listen(
        ["tcp://127.0.0.1:0"], ServerSecurity(identity=identity, authorized_keys=keys)
    )
    channels: list[ServerChannel] = []
    tasks: list[asyncio.Task[ServerChannel]] = []

    async def accept_all() -> None:
        async for transport in listener:
            channel = ServerChannel(
                transport, node="station@irf/main", authenticator=ServerAuthenticator(keys)
            )
            channels.append(channel)
            tasks.append(asyncio.create_task(channel.establish_session()))

    await listener.start()
    acceptor = asyncio.create_task(accept_all())
    port = int(listener.endpoints[0].rsplit(":", 1)[1])
    try:
        async with FaultProxy(("127.0.0.1", port)) as proxy:
            proxy.latency(ONE_WAY)
            yield proxy
    finally:
        for task in (acceptor, *tasks):
            task.cancel()
        await asyncio.gather(acceptor, *tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()
        await listener.close()


async def test_connect_over_a_long_link_takes_about_four_and_a_half_round_trips() -> None:
    alice, server = Identity.generate(), Identity.generate()
    keys = AuthorizedKeys({alice.public_key: "alice@irf"})
    async with asyncio.timeout(LIMIT), station(keys, server) as proxy:
        started = time.perf_counter()
        channel = await connect(
            proxy.endpoint, identity=alice, server_key=server.public_key, node="alice@irf/lab",
            establish_timeout=LIMIT,
        )
        elapsed = time.perf_counter() - started
        try:
            assert channel.local_node is not None
            assert str(channel.local_node) == "alice@irf/lab"
        finally:
            await channel.close()
    # CURVE ~3.5 + LIME 1 (the plain exchange made it ~6.6).
    assert elapsed <= 5.0 * RTT + 0.3, f"{elapsed / RTT:.2f} round trips"


async def test_the_lime_part_of_an_establishment_is_one_round_trip() -> None:
    alice, server = Identity.generate(), Identity.generate()
    keys = AuthorizedKeys({alice.public_key: "alice@irf"})
    async with asyncio.timeout(LIMIT), station(keys, server) as proxy:
        transport = transport_factory(proxy.endpoint).connect(
            proxy.endpoint, ClientSecurity(identity=alice, server_key=server.public_key), None
        )
        try:
            opened = time.perf_counter()
            await transport.open()
            handshake = time.perf_counter() - opened
            channel = ClientChannel(
                transport, node="alice@irf/lab", identity=alice, establish_timeout=LIMIT
            )
            started = time.perf_counter()
            await channel.establish_session()
            lime = time.perf_counter() - started
            await channel.close()
        finally:
            await transport.close()
    # The transport's handshake cannot be quicker than the round trips it needs.
    assert handshake >= 3.0 * RTT, f"handshake {handshake / RTT:.2f} round trips"
    # One round trip, where the plain exchange took three.
    assert RTT <= lime <= 1.5 * RTT, f"LIME {lime / RTT:.2f} round trips"

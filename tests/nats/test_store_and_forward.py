"""Store-and-forward across a WAN outage (issue 11, item 4), against real nats-servers: a hub
(JetStream domain ``hub``) and a site leaf node (domain ``site``) whose leaf connection runs
through a TCP fault proxy. The instrument's server archives a parameter declared
``archive=True`` into the leaf's site stream; the hub's archive stream sources it; a durable
reader on the hub must get every sample, in order, once, after the outage.

The outage is the proxy in ``reset`` mode: the leaf connection is cut and every reconnection
refused until the link is back (the leaf keeps retrying, as over a dead WAN). The hub does not
advertise its leafnode address (``no_advertise``): a leaf that learnt it would reconnect around
the proxy, as it would around a broken WAN path to a hub with several addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest

from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.server import Parameter, Server
from rain_transport_nats.archive import (
    ArchivedSample,
    Archiver,
    archive_subject,
    hub_stream_config,
    read_archive,
    site_stream_config,
)
from rain_transport_nats.config import NatsUser, ServerGrant, nats_users, render
from rain_transport_nats.nkey import user_nkey, user_seed

from ..faultproxy import FaultProxy
from .broker import NatsServer


def jetstream(domain: str, folder: Path) -> str:
    return f'jetstream {{ domain: "{domain}", store_dir: "{folder / domain}" }}'


@contextlib.asynccontextmanager
async def site_and_hub(
    tmp_path: Path, authorization: str
) -> AsyncIterator[tuple[NatsServer, NatsServer, FaultProxy]]:
    # no_advertise: the hub must not tell the leaf its real leafnode address, or the leaf would
    # reconnect around the proxy.
    hub = NatsServer(tmp_path, "hub", extra=jetstream("hub", tmp_path)
                     + "\nleafnodes { listen: 127.0.0.1:-1, no_advertise: true }")
    await asyncio.to_thread(hub.start)
    try:
        async with FaultProxy(("127.0.0.1", hub.ports["leafnode"])) as proxy:
            leaf = NatsServer(tmp_path, "leaf", extra=jetstream("site", tmp_path),
                              leaf_remotes=[f"nats-leaf://127.0.0.1:{proxy.port}"],
                              authorization=authorization)
            await asyncio.to_thread(leaf.start)
            try:
                linked = await asyncio.to_thread(hub.wait_for_log, "Leafnode connection created")
                assert linked, hub.log
                yield hub, leaf, proxy
            finally:
                await asyncio.to_thread(leaf.stop)
    finally:
        await asyncio.to_thread(hub.stop)


async def until(condition: object, timeout: float, why: object = None) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in time{why() if callable(why) else ''}")
        await asyncio.sleep(0.02)


async def only_the_station_may_archive(leaf: NatsServer, station: Identity,
                                       alice: Identity) -> None:
    """The broker refuses a client that publishes on the station's archive subject."""
    errors: list[Exception] = []

    async def on_error(error: Exception) -> None:
        errors.append(error)

    client = await nats.connect(f"nats://127.0.0.1:{leaf.port}", error_cb=on_error,
                                nkeys_seed_str=user_seed(alice))
    try:
        await client.publish(archive_subject(user_nkey(station.public_key), "wx.temp"), b"{}")
        for _ in range(2):  # the PING may overtake the PUB (see fanout.py)
            await client.flush()
    finally:
        await client.close()
    assert any("permissions violation" in str(e).lower() for e in errors), errors


async def outage(tmp_path: Path, seconds: float, samples: int, catch_up: float) -> float:
    """Run the outage; return the seconds from the link's return until the hub reader had
    every sample."""
    station, alice, admin = Identity.generate(), Identity.generate(), Identity.generate()
    temp = Parameter("wx.temp", value=0, archive=True)
    other = Parameter("knob", value=0)  # not archived
    server = Server([temp, other], node="station@site", identity=station,
                    authorized_keys=AuthorizedKeys.from_mapping({}))
    # The leaf's users are nats-config's (the station, and alice as its client), plus an
    # administrator who creates the site stream.
    users = nats_users([ServerGrant(station.public_key, "station@site",
                                    {alice.public_key: "alice@site"})])
    users.append(NatsUser(user_nkey(admin.public_key), [">"], [">"], ["admin"]))
    async with site_and_hub(tmp_path, render(users)) as (hub, leaf, proxy), server:
        operator = await nats.connect(f"nats://127.0.0.1:{leaf.port}",
                                      nkeys_seed_str=user_seed(admin))
        await operator.jetstream().add_stream(site_stream_config("RAIN_SITE"))
        await operator.close()
        await only_the_station_may_archive(leaf, station, alice)
        archiver = await Archiver(leaf.url, station, stream="RAIN_SITE", domain="site").start()
        assert archiver.attach(server) == ["wx.temp"]
        reader = await nats.connect(f"nats://127.0.0.1:{hub.port}")
        received: list[ArchivedSample] = []

        async def read() -> None:
            async for sample in read_archive(reader, "RAIN_ARCHIVE", "archive-reader",
                                             wait=0.5):
                received.append(sample)

        reading: asyncio.Task[None] | None = None
        try:
            js = reader.jetstream()
            await js.add_stream(hub_stream_config("RAIN_ARCHIVE", [("RAIN_SITE", "site")]))
            reading = asyncio.create_task(read())
            # The link works: a first sample crosses at once.
            temp.publish(-1)
            other.publish(99)
            await until(lambda: len(received) == 1, 20)

            mark = hub.mark()
            proxy.reset()  # the WAN goes down: the leaf's connection is cut, retries refused
            assert await asyncio.to_thread(hub.wait_for_log, "Leafnode connection closed",
                                           10.0, after=mark), hub.log
            started = time.monotonic()
            for value in range(samples):
                temp.publish(value)
                # Spread over the outage, at a fixed rate (not a synchronisation).
                await asyncio.sleep(max(0.0, started + (value + 1) * seconds / samples
                                        - time.monotonic()))
            assert await archiver.drain(10.0)  # all kept by the site stream
            assert archiver.stored == samples + 1
            assert len(received) == 1  # and none crossed the dead link

            proxy.pass_through()  # the link returns
            returned = time.monotonic()
            await until(lambda: len(received) == samples + 1, catch_up, lambda: (
                f": {len(received)} of {samples + 1} at the hub\n--- hub:\n{hub.log[-4000:]}"
                f"\n--- leaf:\n{leaf.log[-4000:]}"))
            caught_up = time.monotonic() - returned
        finally:
            if reading is not None:
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
            await reader.close()
            await archiver.close()

        assert [s.value for s in received] == [-1, *range(samples)]
        seqs = [s.seq for s in received]
        assert seqs == list(range(seqs[0], seqs[0] + samples + 1))  # in order, no gap
        assert len({s.stream_seq for s in received}) == len(received)  # no duplicate
        assert {s.parameter for s in received} == {"wx.temp"}
        assert archiver.dropped == 0
        print(f"{samples} samples over a {seconds:g} s outage: at the hub {caught_up:.1f} s after"
              f" the link returned, {archiver.retried} publications retried")
        return caught_up


# The hub resumes its source on nats-server's own retry schedule (seen here: 0.1 to 41 s after
# the link returned; after 5 s outages about a second), hence the generous bounds.
@pytest.mark.timeout(120)
async def test_a_short_outage_loses_and_repeats_nothing(tmp_path: Path) -> None:
    await outage(tmp_path, seconds=5.0, samples=200, catch_up=90)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_minute_long_outage_with_a_thousand_samples(tmp_path: Path) -> None:
    await outage(tmp_path, seconds=60.0, samples=1000, catch_up=200)



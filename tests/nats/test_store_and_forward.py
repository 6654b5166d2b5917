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
import orjson
import pytest

from rain_envelopes.errors import ConfigError
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.server import Parameter, Server
from rain_envelopes.server.config import parse_config
from rain_transport_nats.archive import (
    MSG_ID,
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
from ..serverprocess import ServerProcess
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




ARCHIVED_PLUGIN = """
from rain_envelopes.server import parameter

count = 0


@parameter(interval=0.05, archive=True)
def ticks() -> int:
    global count
    count += 1
    return count


@parameter(interval=0.05)
def not_archived() -> int:
    return 0
"""

ARCHIVED_CONFIG = """
identity = "station@site"
listen = ["tcp://127.0.0.1:0"]
key_file = "station.key"
authorized_keys = "authorized_keys"
plugins = "plugins"

[archive]
endpoint = "{endpoint}"
stream = "RAIN_SITE"
domain = "site"
"""


@pytest.mark.timeout(60)
async def test_rain_serve_archives_the_parameters_its_plugins_mark(tmp_path: Path) -> None:
    """`rain serve` with an [archive] table publishes the samples of archive=True parameters
    (and only those) to the site stream, as the server's own NATS user."""
    station, admin = Identity.generate(), Identity.generate()
    station.save(tmp_path / "station.key")
    AuthorizedKeys.from_mapping({}).save(tmp_path / "authorized_keys")
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "site.py").write_text(ARCHIVED_PLUGIN)
    users = nats_users([ServerGrant(station.public_key, "station@site", {})])
    users.append(NatsUser(user_nkey(admin.public_key), [">"], [">"], ["admin"]))
    leaf = NatsServer(tmp_path / "nats", "leaf", authorization=render(users),
                      extra=jetstream("site", tmp_path))
    await asyncio.to_thread(leaf.start)
    try:
        operator = await nats.connect(f"nats://127.0.0.1:{leaf.port}",
                                      nkeys_seed_str=user_seed(admin))
        js = operator.jetstream()
        await js.add_stream(site_stream_config("RAIN_SITE"))
        config = tmp_path / "rain.toml"
        config.write_text(ARCHIVED_CONFIG.format(endpoint=leaf.url))
        server = await asyncio.to_thread(ServerProcess, config, tmp_path / "server.log")
        try:
            async def stored() -> int:
                return (await js.stream_info("RAIN_SITE")).state.messages or 0

            deadline = time.monotonic() + 20
            while await stored() < 10:
                assert time.monotonic() < deadline, server.log_text()
                await asyncio.sleep(0.05)
        finally:
            await asyncio.to_thread(server.stop)
        reader = await js.pull_subscribe("", stream="RAIN_SITE")
        messages = await reader.fetch(10, timeout=5)
        await operator.close()
    finally:
        await asyncio.to_thread(leaf.stop)
    station_nkey = user_nkey(station.public_key)
    assert {m.subject for m in messages} == {archive_subject(station_nkey, "ticks")}
    samples = [orjson.loads(m.data) for m in messages]
    seqs = [s["seq"] for s in samples]
    assert seqs == list(range(seqs[0], seqs[0] + 10))
    assert [m.headers[MSG_ID] for m in messages if m.headers] == [
        f"{s['epoch']}:{s['seq']}" for s in samples]
    assert "archiving ticks to stream RAIN_SITE" in server.log_text()


@pytest.mark.parametrize(("table", "key"), [
    ({"endpoint": "tcp://127.0.0.1:4505"}, "archive.endpoint"),
    ({"endpoint": "nats://127.0.0.1:4222", "stream": "RAIN.SITE"}, "archive.stream"),
    ({"endpoint": "nats://127.0.0.1:4222", "domain": "site 1"}, "archive.domain"),
    ({"endpoint": "nats://127.0.0.1:4222", "streem": "RAIN_SITE"}, "archive.streem"),
])
def test_a_bad_archive_table_is_refused_naming_the_key(
    tmp_path: Path, table: dict[str, str], key: str
) -> None:
    raw = {"identity": "station@site", "listen": ["memory://site"], "allow_guest": True,
           "archive": table}
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(raw, base=tmp_path)
    good = parse_config({**raw, "archive": {"endpoint": "nats://127.0.0.1:4222"}}, base=tmp_path)
    assert good.archive.endpoint == "nats://127.0.0.1:4222"
    assert good.archive.stream == "RAIN_SITE"

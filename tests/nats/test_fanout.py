"""Fan-out through the broker (issue 11, item 3): a published sample leaves the instrument's
server once, whatever the number of subscribers, and each subscriber still gets its snapshot,
then every sample exactly once and in order.

The server publishes on one 3-node cluster node, the subscribers are spread over all three
(so the broker's routes carry the copies). "Once" is counted where it is sent: the server's own
NATS connection's out-message counter, and the fan-out group's ``published``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from rain_envelopes.auth import ServerAuthenticator
from rain_envelopes.channel import ClientChannel, connect
from rain_envelopes.envelopes import Command, CommandMethod, SessionCompression
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.server import AccessRule, Parameter, Server
from rain_envelopes.transport import ServerSecurity
from rain_transport_nats.config import ServerGrant, authorization_block, grant_for
from rain_transport_nats.fanout import observe_subject
from rain_transport_nats.transport import NatsTransportListener

from .broker import NatsServer, start_cluster

# Heartbeats only on links idle for a minute: the counts below are then the samples alone.
QUIET = {"heartbeat_interval": 60.0, "heartbeat_timeout": 180.0}


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait (bounded) until ``condition()`` holds, checking every 10 ms."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def people() -> dict[str, Identity]:
    return {name: Identity.generate() for name in ("station", "a", "b", "c", "d", "guest")}


def authorized(people: dict[str, Identity]) -> AuthorizedKeys:
    return AuthorizedKeys.from_mapping(
        {people[n].public_key: "guest@visitors" if n == "guest" else f"{n}@lab"
         for n in ("a", "b", "c", "d", "guest")}
    )


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, people: dict[str, Identity]
) -> Iterator[list[NatsServer]]:
    rules = [AccessRule("*@lab", "/params/*"), AccessRule("guest@visitors", "/params/wx.temp")]
    grant = grant_for(people["station"].public_key, "station@lab", authorized(people), rules)
    servers = start_cluster(tmp_path_factory.mktemp("fanout"), 3,
                            authorization=authorization_block([grant]))
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


@contextlib.asynccontextmanager
async def serving(
    people: dict[str, Identity], broker: NatsServer, *parameters: Parameter
) -> AsyncIterator[tuple[Server, NatsTransportListener]]:
    keys = authorized(people)
    server = Server(parameters, node="station@lab", authenticator=ServerAuthenticator(keys),
                    identity=people["station"], authorized_keys=keys)
    async with server:
        [listener] = await server.listen(
            [broker.url],
            security=ServerSecurity(identity=people["station"], authorized_keys=keys),
            options=QUIET,
        )
        assert isinstance(listener, NatsTransportListener)
        yield server, listener


async def session(people: dict[str, Identity], who: str, broker: NatsServer) -> ClientChannel:
    return await connect(broker.url, identity=people[who], server_key=people["station"].public_key,
                         establish_timeout=10.0, command_timeout=10.0, transport_options=QUIET)


def observes() -> tuple[list[dict[str, Any]], Callable[[Command], None]]:
    seen: list[dict[str, Any]] = []

    def on_observe(command: Command) -> None:
        assert command.method is CommandMethod.OBSERVE
        assert isinstance(command.resource, dict)
        seen.append(command.resource)

    return seen, on_observe


@pytest.mark.timeout(60)
async def test_every_subscriber_gets_every_sample_that_the_server_sent_once(
    cluster: list[NatsServer], people: dict[str, Identity]
) -> None:
    wx = Parameter("wx.temp", value=0)  # a dot in the name: one subject token all the same
    async with serving(people, cluster[0], wx) as (server, listener):
        clients: list[ClientChannel] = []
        seen: list[list[dict[str, Any]]] = []
        for index in range(12):
            channel = await session(people, "abcd"[index % 4], cluster[index % 3])
            clients.append(channel)
            received, on_observe = observes()
            seen.append(received)
            snapshot = await channel.subscribe("/params/wx.temp", on_observe)
            assert snapshot.resource is not None
            assert snapshot.resource["value"] == 0
        subject = observe_subject(listener.server_nkey, "wx.temp", "/params/wx.temp")
        group = listener.fanouts.groups[subject]
        await until(lambda: group.members == 12)
        assert listener._nc is not None
        sent_before, published_before = listener._nc.stats["out_msgs"], group.published

        for value in range(1, 201):
            wx.publish(value)
        await until(lambda: all(len(received) == 200 for received in seen), timeout=30)

        # Each sample left the server once: 200 publications for 12 subscribers.
        assert group.published - published_before == 200
        assert listener._nc.stats["out_msgs"] - sent_before == 200
        for received in seen:
            assert [sample["value"] for sample in received] == list(range(1, 201))
            seqs = [sample["seq"] for sample in received]
            assert seqs == list(range(seqs[0], seqs[0] + 200))
            assert all("dropped" not in sample for sample in received)

        # Unsubscribing leaves the group; ending the sessions leaves nothing behind.
        live = server._live["wx.temp"]
        assert len(live.observes.fanned) == 12
        await clients[0].unsubscribe("/params/wx.temp")
        await until(lambda: group.members == 11 and len(live.observes.fanned) == 11)
        wx.publish(201)
        await until(lambda: all(len(received) == 201 for received in seen[1:]))
        assert len(seen[0]) == 200
        for channel in clients:
            await channel.finish()
        await until(lambda: group.members == 0 and not live.observes.fanned)
        wx.publish(202)
        assert group.published - published_before == 201  # nobody left to publish to


@pytest.mark.timeout(60)
async def test_joining_while_samples_flow_loses_and_repeats_nothing(
    cluster: list[NatsServer], people: dict[str, Identity]
) -> None:
    """Subscribers join while a fast publisher runs: each sees a snapshot, then consecutive
    seq numbers up to the last sample, none twice, through the hand-over from direct sends to
    the group."""
    ticker = Parameter("ticker", value=0)
    async with serving(people, cluster[0], ticker) as (server, listener):
        stop = asyncio.Event()

        async def publish() -> None:
            value = 0
            while not stop.is_set():
                value += 1
                ticker.publish(value)
                await asyncio.sleep(0.002)

        publisher = asyncio.create_task(publish())
        try:
            clients, snapshots, seen = [], [], []
            for index in range(6):
                channel = await session(people, "abcd"[index % 4], cluster[index % 3])
                received, on_observe = observes()
                snapshot = await channel.subscribe("/params/ticker", on_observe)
                assert snapshot.resource is not None
                clients.append(channel)
                snapshots.append(snapshot.resource["seq"])
                seen.append(received)
            group = next(iter(listener.fanouts.groups.values()))
            await until(lambda: group.members == 6)
            mark = group.published
            await until(lambda: group.published >= mark + 50)
        finally:
            stop.set()
            await publisher
        last = server._live["ticker"].seq
        await until(lambda: all(r and r[-1]["seq"] == last for r in seen), timeout=20)
        for first, received in zip(snapshots, seen, strict=True):
            assert [s["seq"] for s in received] == list(range(first + 1, last + 1))
        for channel in clients:
            await channel.finish()


@pytest.mark.timeout(60)
async def test_the_broker_keeps_parameters_from_those_the_rules_do_not_let_subscribe(
    cluster: list[NatsServer], people: dict[str, Identity]
) -> None:
    """guest@visitors may subscribe only to wx.temp: the broker lets it join that topic, and refuses
    it another parameter's subject (the server then sends to it directly: it still gets every
    sample, just not through the group)."""
    wx, ticker = Parameter("wx.temp", value=0), Parameter("ticker", value=0)
    async with serving(people, cluster[0], wx, ticker) as (server, listener):
        guest = await session(people, "guest", cluster[1])
        wx_seen, on_wx = observes()
        ticker_seen, on_ticker = observes()
        await guest.subscribe("/params/wx.temp", on_wx)
        await guest.subscribe("/params/ticker", on_ticker)  # allowed by the RAIN server's
        # own (default) policy, but nats-config granted the guest only wx.temp on the broker
        groups = listener.fanouts.groups
        wx_group = groups[observe_subject(listener.server_nkey, "wx.temp", "/params/wx.temp")]
        ticker_group = groups[observe_subject(listener.server_nkey, "ticker", "/params/ticker")]
        await until(lambda: wx_group.members == 1)
        [subscription] = [s for s in server._live["ticker"].subscriptions]
        await until(lambda: subscription._joining is not None and subscription._joining.done())
        assert ticker_group.members == 0
        assert not subscription.fanned_out
        for value in range(1, 21):
            wx.publish(value)
            ticker.publish(value)
        await until(lambda: len(wx_seen) == 20 and len(ticker_seen) == 20)
        assert [s["value"] for s in ticker_seen] == list(range(1, 21))
        assert wx_group.published == 20
        assert ticker_group.published == 0
        await guest.finish()


def test_nats_config_grants_observe_subjects_by_access_rules(people: dict[str, Identity]) -> None:
    from rain_transport_nats.nkey import user_nkey

    station = user_nkey(people["station"].public_key)
    rules = [AccessRule("a@lab", "/params/*"), AccessRule("b@lab", "/params/wx.temp"),
             AccessRule("c@lab", "/params/wx*"), AccessRule("d@lab", "/params/x", {"get"})]
    grant = grant_for(people["station"].public_key, "station@lab", authorized(people), rules)
    block = authorization_block([grant])
    assert f'"rain.{station}.obs.>"' in block  # the server publishes; a@lab hears all
    by_user = {n: user_nkey(people[n].public_key) for n in "abcd"}
    users = block.split("nkey: ")
    hears = {n: next(u for u in users if u.startswith(f'"{k}"')) for n, k in by_user.items()}
    assert f'"rain.{station}.obs.>"' in hears["a"]
    assert f'"rain.{station}.obs.wx~temp.*"' in hears["b"]
    assert ".obs." not in hears["c"]  # a glob the broker cannot express: served directly
    assert ".obs." not in hears["d"]  # get only
    # No rules at all: every authorised client hears every parameter.
    open_grant = ServerGrant(people["station"].public_key, "station@lab",
                             dict(authorized(people).items()))
    assert authorization_block([open_grant]).count(f'"rain.{station}.obs.>"') == 6


@pytest.mark.timeout(60)
async def test_a_compressed_session_is_sent_to_directly_beside_the_group(
    cluster: list[NatsServer], people: dict[str, Identity]
) -> None:
    """gzip sessions cannot share bytes: the server never asks them to join, sends them each
    sample itself, and fans out to the others."""
    wx = Parameter("wx.temp", value=0)
    async with serving(people, cluster[0], wx) as (server, listener):
        plain = await session(people, "a", cluster[1])
        zipped = await connect(cluster[2].url, identity=people["b"],
                               server_key=people["station"].public_key,
                               establish_timeout=10.0, command_timeout=10.0,
                               transport_options=QUIET, compression=SessionCompression.GZIP)
        assert zipped.compression is SessionCompression.GZIP
        plain_seen, on_plain = observes()
        zipped_seen, on_zipped = observes()
        await plain.subscribe("/params/wx.temp", on_plain)
        await zipped.subscribe("/params/wx.temp", on_zipped)
        group = listener.fanouts.groups[
            observe_subject(listener.server_nkey, "wx.temp", "/params/wx.temp")]
        await until(lambda: group.members == 1)
        direct = [s for s in server._live["wx.temp"].subscriptions if not s.fanned_out]
        assert len(direct) == 1
        assert direct[0]._joining is None  # never asked to join
        for value in range(1, 31):
            wx.publish(value)
        await until(lambda: len(plain_seen) == 30 and len(zipped_seen) == 30)
        assert [s["value"] for s in zipped_seen] == [s["value"] for s in plain_seen]
        assert group.published == 30
        await plain.finish()
        await zipped.finish()

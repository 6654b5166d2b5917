"""The reconnecting client over the memory transport: state changes, reconnection, waiting for
the link, giving up, bounded delivery, re-subscription with restart detection."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from rain_envelopes import Command, Reason, ReasonCode
from rain_envelopes.auth import ServerAuthenticator
from rain_envelopes.client import Backoff, Client, ClientState, StateChange, Update
from rain_envelopes.errors import (
    ClientClosed,
    CommandFailed,
    ConfigError,
    Disconnected,
    NotDone,
    ResponseTimeout,
)
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.server import Parameter, Server

FAST = Backoff(initial=0.01, maximum=0.05)


class Station:
    """A server on one memory endpoint that can be stopped and started again (a restart)."""

    def __init__(self) -> None:
        self.endpoint = f"memory://client-{secrets.token_hex(6)}"
        self.alice = Identity.generate()
        self.keys = AuthorizedKeys.from_mapping({self.alice.public_key_text: "alice@irf"})
        self.server: Server | None = None
        self.applied: list[object] = []
        self.value = 1

    def parameters(self) -> list[Parameter]:
        temp = Parameter("temp", value=20.0)
        station = self

        def write(value: object) -> object:
            station.applied.append(value)
            return value

        setting = Parameter("setting", value=0, setter=write)
        return [temp, setting]

    async def start(self) -> Server:
        server = Server(
            self.parameters(),
            node="station@irf",
            authenticator=ServerAuthenticator(self.keys),
        )
        await server.start()
        await server.listen([self.endpoint])
        self.server = server
        return server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None

    def client(self, **options: object) -> Client:
        options.setdefault("backoff", FAST)
        options.setdefault("command_timeout", 5.0)
        return Client(self.endpoint, identity=self.alice, **options)  # type: ignore[arg-type]


@pytest.fixture
async def station() -> AsyncIterator[Station]:
    station = Station()
    await station.start()
    try:
        yield station
    finally:
        await station.stop()


async def _until(changes: AsyncIterator[StateChange], state: ClientState) -> StateChange:
    async with asyncio.timeout(5):
        async for change in changes:
            if change.state is state:
                return change
    raise AssertionError(f"changes ended before {state}")


async def test_get_set_and_the_first_state_changes(station: Station) -> None:
    seen: list[ClientState] = []
    client = station.client(on_state=lambda change: seen.append(change.state))
    async with client:
        assert client.state is ClientState.ESTABLISHED
        assert (await client.get("/params/temp")).resource["value"] == 20.0
        response = await client.set("/params/setting", 7)
        assert response.resource["value"] == 7
    assert seen == [ClientState.CONNECTING, ClientState.ESTABLISHED, ClientState.CLOSED]
    assert client.close_reason is None
    assert station.applied == [7]


async def test_every_set_carries_an_expiry_and_a_client_wide_id(station: Station) -> None:
    sent = []
    async with station.client() as client:
        assert client.channel is not None
        original = client.channel.send_command

        async def spy(command, **kw):  # type: ignore[no-untyped-def]
            sent.append(command)
            return await original(command, **kw)

        client.channel.send_command = spy  # type: ignore[method-assign]
        await client.set("/params/setting", 1, timeout=3)
        await client.set("/params/setting", 2, expires=60)
    first, second = sent
    assert "#expires" in (first.metadata or {})
    assert "#expires" in (second.metadata or {})
    assert first.id != second.id
    assert first.id.startswith(client.new_id().split("-")[0])


async def test_an_expired_set_is_refused_not_applied(station: Station) -> None:
    async with station.client() as client:
        with pytest.raises(CommandFailed) as failed:
            await client.set("/params/setting", 5, expires=-1)
    assert failed.value.reason.code == ReasonCode.COMMAND_EXPIRED
    assert station.applied == []


async def test_reconnects_after_a_restart_and_subscriptions_come_back(station: Station) -> None:
    updates: asyncio.Queue[Update] = asyncio.Queue()
    async with station.client() as client:
        changes = client.changes()
        await client.subscribe("/params/temp", updates.put_nowait)
        first = await asyncio.wait_for(updates.get(), 5)
        assert first.snapshot
        assert not first.restarted
        await station.stop()
        lost = await _until(changes, ClientState.LOST)
        assert lost.reason is not None
        assert client.state is not ClientState.ESTABLISHED
        await station.start()
        await _until(changes, ClientState.ESTABLISHED)
        again = await asyncio.wait_for(updates.get(), 5)
        assert again.snapshot
        assert again.restarted
        assert again.epoch != first.epoch
        assert (await client.get("/params/temp")).resource["value"] == 20.0


async def test_a_request_made_while_down_waits_for_the_link(station: Station) -> None:
    async with station.client() as client:
        changes = client.changes()
        await station.stop()
        await _until(changes, ClientState.LOST)
        pending = asyncio.ensure_future(client.get("/params/temp", timeout=5))
        await _until(changes, ClientState.RETRYING)
        assert not pending.done()
        await station.start()
        response = await asyncio.wait_for(pending, 5)
        assert response.resource["value"] == 20.0


async def test_a_request_made_while_down_can_fail_at_once(station: Station) -> None:
    async with station.client(wait_for_link=False) as client:
        changes = client.changes()
        await station.stop()
        await _until(changes, ClientState.LOST)
        with pytest.raises(Disconnected) as raised:
            await client.get("/params/temp")
        assert isinstance(raised.value, NotDone)


async def test_waiting_for_the_link_is_bounded_by_the_request_timeout(station: Station) -> None:
    async with station.client() as client:
        changes = client.changes()
        await station.stop()
        await _until(changes, ClientState.LOST)
        with pytest.raises(Disconnected):
            await client.get("/params/temp", timeout=0.2)


async def test_a_refused_key_is_definitive(station: Station) -> None:
    client = Client(station.endpoint, identity=Identity.generate(), backoff=FAST)
    with pytest.raises(ClientClosed) as raised:
        await asyncio.wait_for(client.start(), 5)
    assert client.state is ClientState.CLOSED
    assert client.close_reason is not None
    assert client.close_reason.code == ReasonCode.SESSION_AUTHENTICATION_FAILED
    assert raised.value.cause is not None
    with pytest.raises(ClientClosed):
        await client.get("/params/temp")


async def test_gives_up_after_max_attempts() -> None:
    client = Client(
        f"memory://nobody-{secrets.token_hex(4)}",
        backoff=Backoff(initial=0.01, maximum=0.01, max_attempts=3),
    )
    attempts: list[StateChange] = []
    client.on_state = attempts.append
    with pytest.raises(ClientClosed):
        await asyncio.wait_for(client.start(), 5)
    connecting = [c for c in attempts if c.state is ClientState.CONNECTING]
    assert [c.attempt for c in connecting] == [1, 2, 3]
    retrying = [c for c in attempts if c.state is ClientState.RETRYING]
    assert [c.attempt for c in retrying] == [2, 3]
    assert all(c.delay is not None and c.error is not None for c in retrying)
    assert client.close_reason is not None
    assert "3 attempts" in client.close_reason.description


async def test_start_without_wait_then_timeout_keeps_trying() -> None:
    client = Client(f"memory://nobody-{secrets.token_hex(4)}", backoff=FAST)
    await client.start(wait=False)
    try:
        with pytest.raises(Disconnected):
            await client.wait_established(timeout=0.2)
        assert client.state in (ClientState.CONNECTING, ClientState.RETRYING)
    finally:
        await client.close()
    assert client.state is ClientState.CLOSED
    assert client.close_reason is None


async def test_cancelling_start_leaves_nothing_running() -> None:
    client = Client(f"memory://nobody-{secrets.token_hex(4)}", backoff=FAST)
    task = asyncio.ensure_future(client.start())
    await asyncio.sleep(0)  # let it begin; the cancel below is what is tested
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(client.close(), 5)
    assert client.closed


async def test_the_session_ended_with_13_closes_the_client(station: Station) -> None:
    async with station.client() as client:
        changes = client.changes()
        assert station.server is not None
        (session,) = station.server.sessions
        await session.channel.fail(
            Reason(ReasonCode.SESSION_AUTHENTICATION_FAILED, "key revoked")
        )
        closed = await _until(changes, ClientState.CLOSED)
        assert closed.reason is not None
        assert closed.reason.description == "key revoked"


async def test_a_slow_async_subscriber_is_bounded_and_sees_fresh_data(station: Station) -> None:
    assert station.server is not None
    temp = station.server.parameters["temp"]
    total = 500
    gate, first_seen, last_arrived, last_seen = (asyncio.Event() for _ in range(4))
    seen: list[Update] = []

    async def slow(update: Update) -> None:
        seen.append(update)
        first_seen.set()
        if update.value == float(total - 1):
            last_seen.set()
        if len(seen) == 2:
            await gate.wait()  # hold the consumer while everything arrives

    async with station.client(queue_length=8) as client:
        await client.subscribe("/params/temp", slow)
        subscription = client._subscriptions["/params/temp"]
        put = subscription.put

        def watch(command: Command, snapshot: bool) -> None:
            put(command, snapshot)
            assert len(subscription.queue) <= 8
            if command.resource["value"] == float(total - 1):
                last_arrived.set()

        subscription.put = watch  # type: ignore[method-assign]
        await asyncio.wait_for(first_seen.wait(), 5)
        for i in range(total):
            temp.publish(float(i))
        await asyncio.wait_for(last_arrived.wait(), 5)
        gate.set()
        await asyncio.wait_for(last_seen.wait(), 5)
    delivered_after_snapshot = len(seen) - 1
    dropped = sum(u.dropped for u in seen)
    assert delivered_after_snapshot <= 8 + 2
    assert dropped + delivered_after_snapshot == total  # every sample delivered or counted
    assert seen[-1].value == float(total - 1)  # the latest value arrives


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0, factor=2.0, jitter=0.5)
    import random

    rng = random.Random(1)
    delays = [backoff.delay(n, rng) for n in range(1, 8)]
    bases = [1, 2, 4, 8, 8, 8, 8]
    for delay, base in zip(delays, bases, strict=True):
        assert base * 0.5 <= delay <= base
    assert Backoff(jitter=0).delay(1) == Backoff().initial
    with pytest.raises(ConfigError):
        Backoff(initial=0)
    with pytest.raises(ConfigError):
        Backoff(jitter=2)
    with pytest.raises(ConfigError):
        Backoff(max_attempts=0)


async def test_a_response_timeout_is_not_done(station: Station) -> None:
    assert issubclass(ResponseTimeout, NotDone)
    async with station.client(ping_interval=None) as client:
        assert client.channel is not None
        # A channel that never sends: the request gets no answer.
        client.channel.transport.send = _never  # type: ignore[method-assign]
        client.channel.transport.send_batch = _never_batch  # type: ignore[method-assign]
        with pytest.raises(ResponseTimeout):
            await client.get("/params/temp", timeout=0.2)
        await client.channel.close()  # no polite finish over a link that sends nothing


async def _never(data: bytes) -> None:
    return None


async def _never_batch(frames: list[bytes]) -> None:
    frames.clear()  # "sent": nothing will arrive

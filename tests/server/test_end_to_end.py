"""End to end: real clients against a real server, over memory:// and ZeroMQ with CURVE.

Every wait is on an event or a queue with a timeout; the only sleeping is done by a plugin that
is itself the subject of a test (the slow instrument).
"""

from __future__ import annotations

import asyncio
import logging
import re
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from rain_envelopes.envelopes import Command, CommandMethod, CommandStatus, ReasonCode
from rain_envelopes.errors import CommandFailed
from rain_envelopes.server import (
    SAMPLE_TYPE,
    AccessPolicy,
    AccessRule,
    Limits,
    Parameter,
    parameter,
)

from .conftest import Keys, client, running_server

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Calls:
    """Counts calls of a plugin function, thread-safely, and lets a test wait for them."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._lock = threading.Lock()
        self.started = threading.Event()

    def record(self, value: Any = None) -> None:
        with self._lock:
            self.values.append(value)
        self.started.set()


def station(calls: Calls | None = None) -> dict[str, Parameter]:
    """A fresh set of parameters for one test."""
    calls = calls or Calls()
    temp = Parameter("temp", value=20.0, unit="degC", description="Air", writable=True,
                     schema={"type": "number"})
    knob = Parameter("knob", value=1, schema={"type": "integer", "minimum": 0, "maximum": 10})

    @knob.setter
    def set_knob(value: int) -> None:
        calls.record(value)

    count = 0

    @parameter(interval=0.05)
    def counter() -> int:
        nonlocal count
        count += 1
        return count

    @parameter()
    def broken() -> float:
        raise RuntimeError("sensor on fire\nsecond line that must not leak")

    @parameter()
    def unjsonable() -> object:
        return object()

    return {
        p.name: p
        for p in (
            temp, knob, counter, broken, unjsonable,
            Parameter("alert", value={"level": "none"}),
            Parameter("activity", value=0, writable=True),
            Parameter("activity_level", value=0, writable=True),
        )
    }


def collector() -> tuple[asyncio.Queue[Command], Callable[[Command], None]]:
    queue: asyncio.Queue[Command] = asyncio.Queue()
    return queue, queue.put_nowait


async def next_update(queue: asyncio.Queue[Command], timeout: float = 5.0) -> dict[str, Any]:
    command = await asyncio.wait_for(queue.get(), timeout)
    assert command.method is CommandMethod.OBSERVE
    assert command.type == SAMPLE_TYPE
    assert isinstance(command.resource, dict)
    return command.resource


async def failure(pending: Any) -> CommandFailed:
    with pytest.raises(CommandFailed) as caught:
        await pending
    return caught.value


# ------------------------------------------------------------------------------ basics


async def test_list_get_set(keys: Keys, kind: str) -> None:
    async with running_server(station().values(), keys, kind) as server:
        alice = await client(server, keys, keys.alice)
        listing = await alice.get("/params")
        assert listing.type == "application/vnd.lime.collection+json"
        items = {item["name"]: item for item in listing.resource["items"]}
        assert listing.resource["total"] == len(items) == 8
        assert listing.resource["itemType"] == "application/vnd.rain.parameter+json"
        assert items["temp"] == {
            "name": "temp", "description": "Air", "unit": "degC", "schema": {"type": "number"},
            "methods": ["get", "set", "subscribe"],
        }
        assert items["counter"]["methods"] == ["get", "subscribe"]

        got = await alice.get("/params/temp")
        assert got.type == SAMPLE_TYPE
        sample = got.resource
        assert sample["value"] == 20.0
        assert TIMESTAMP.match(sample["timestamp"])
        assert sample["epoch"] == server.epoch

        reply = await alice.set("/params/temp", 21.5)
        assert reply.status is CommandStatus.SUCCESS
        assert reply.resource["value"] == 21.5
        assert reply.resource["seq"] == sample["seq"] + 1
        assert (await alice.get("/params/temp/")).resource["value"] == 21.5
        # A sample document is accepted as the value too.
        await alice.set("/params/temp", {"value": 3.0}, type=SAMPLE_TYPE)
        assert (await alice.get("/params/temp")).resource["value"] == 3.0
        await alice.finish()


async def test_errors_carry_the_right_codes(keys: Keys, kind: str) -> None:
    async with running_server(station().values(), keys, kind) as server:
        alice = await client(server, keys, keys.alice)
        assert (await failure(alice.get("/params/nope"))).reason.code == 67
        assert (await failure(alice.set("/params/nope", 1))).reason.code == 67
        assert (await failure(alice.get("/elsewhere"))).reason.code == 67
        assert (await failure(alice.delete("/params/temp"))).reason.code == 63
        read_only = await failure(alice.set("/params/counter", 5))
        assert read_only.reason.code == 66
        assert "read-only" in (read_only.reason.description or "")
        expired = Command(
            "set", "/params/temp", id=alice.new_id(), type="application/json", resource=1.0,
            metadata={"#expires": "2020-01-01T00:00:00Z"},
        )
        response = await alice.send_command(expired)
        assert response.reason is not None
        assert response.reason.code == ReasonCode.COMMAND_EXPIRED
        assert (await alice.get("/params/temp")).resource["value"] == 20.0
        await alice.finish()


async def test_schema_refusal_names_the_problem_and_changes_nothing(
    keys: Keys, kind: str
) -> None:
    calls = Calls()
    async with running_server(station(calls).values(), keys, kind) as server:
        alice = await client(server, keys, keys.alice)
        refused = await failure(alice.set("/params/knob", 99))
        assert refused.reason.code == 64
        assert refused.reason.description == (
            "invalid value: knob must be smaller than or equal to 10"
        )
        assert (await failure(alice.set("/params/knob", "high"))).reason.code == 64
        assert calls.values == []
        assert (await alice.get("/params/knob")).resource["value"] == 1
        await alice.set("/params/knob", 7)
        assert calls.values == [7]
        await alice.finish()


async def test_plugin_failure_is_101_without_traceback_and_logged_with_one(
    keys: Keys, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="rain.server")
    async with running_server(station().values(), keys, kind) as server:
        alice = await client(server, keys, keys.alice)
        failed = await failure(alice.get("/params/broken"))
        assert failed.reason.code == ReasonCode.APPLICATION_ERROR
        description = failed.reason.description or ""
        assert description == "getter of broken failed: RuntimeError: sensor on fire"
        assert "Traceback" not in description
        not_json = await failure(alice.get("/params/unjsonable"))
        assert not_json.reason.code == ReasonCode.APPLICATION_ERROR
        # The server keeps serving.
        assert (await alice.get("/params/temp")).resource["value"] == 20.0
        await alice.finish()
    logged = [r for r in caplog.records if "broken" in r.getMessage()]
    assert logged
    assert logged[0].exc_info is not None
    assert "sensor on fire" in caplog.text
    assert "Traceback" in caplog.text


async def test_nan_and_infinity_from_plugin_code_are_101_not_silence(keys: Keys) -> None:
    # orjson writes NaN as null; the codec refuses it, so such a sample could never be sent.
    @parameter()
    def nan() -> float:
        return float("nan")

    level = Parameter("level", value=1.0, writable=True)

    @level.setter
    def set_level(value: float) -> float:
        return float("inf")

    async with running_server([nan, level], keys, "memory") as server:
        alice = await client(server, keys, keys.alice)
        assert (await failure(alice.get("/params/nan"))).reason.code == (
            ReasonCode.APPLICATION_ERROR
        )
        assert (await failure(alice.set("/params/level", 2.0))).reason.code == (
            ReasonCode.APPLICATION_ERROR
        )
        assert (await alice.get("/params/level")).resource["value"] == 1.0
        await alice.finish()


async def test_a_server_fault_in_a_set_is_answered_1_like_any_other_request(
    keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    level = Parameter("level", value=1, writable=True)

    def fault(value: Any) -> None:
        raise RuntimeError("a bug in the server, not in plugin code")

    monkeypatch.setattr(level, "validate", fault)
    async with running_server([level], keys, "memory") as server:
        alice = await client(server, keys, keys.alice)
        # The client gives every set an id, so this one goes through the repeated-set memory.
        refused = await failure(alice.set("/params/level", 2))
        assert (refused.reason.code, refused.reason.description) == (
            ReasonCode.GENERAL_ERROR, "internal server error"
        )
        await alice.finish()


async def test_a_repeated_set_is_applied_once(keys: Keys, kind: str) -> None:
    calls = Calls()
    async with running_server(station(calls).values(), keys, kind) as server:
        alice = await client(server, keys, keys.alice)
        request = Command("set", "/params/knob", id="retry-1", type="application/json",
                          resource=4)
        first = await alice.send_command(request)
        second = await alice.send_command(request)
        assert first.status is second.status is CommandStatus.SUCCESS
        assert first.resource == second.resource
        assert calls.values == [4]
        # The same id reused for another value is refused, not answered with the first result.
        reused = await alice.send_command(request.replace(resource=5))
        assert reused.status is CommandStatus.FAILURE
        assert reused.reason is not None
        assert reused.reason.code == ReasonCode.COMMAND_INVALID_ARGUMENT
        assert calls.values == [4]
        await alice.finish()


# ------------------------------------------------------------------------------ subscriptions


async def test_subscribe_snapshot_then_periodic_and_triggered_updates(
    keys: Keys, kind: str
) -> None:
    params = station()
    async with running_server(params.values(), keys, kind) as server:
        alice = await client(server, keys, keys.alice)
        updates, on_update = collector()
        reply = await alice.subscribe("/params/counter", on_update)
        snapshot = reply.resource
        assert reply.type == SAMPLE_TYPE
        assert snapshot["epoch"] == server.epoch
        first, second = await next_update(updates), await next_update(updates)
        assert snapshot["seq"] < first["seq"] < second["seq"]
        assert first["value"] < second["value"]

        alerts, on_alert = collector()
        assert (await alice.subscribe("/params/alert", on_alert)).resource["value"] == {
            "level": "none"
        }
        # Triggered from plugin code running in another thread.
        worker = threading.Thread(target=params["alert"].publish, args=({"level": "storm"},))
        worker.start()
        worker.join(5)
        assert (await next_update(alerts))["value"] == {"level": "storm"}

        await alice.unsubscribe("/params/counter")
        (session,) = server.sessions
        assert set(session.subscriptions) == {"alert"}
        assert not server._live["counter"].subscriptions
        await alice.finish()
        await asyncio.wait_for(session.ended.wait(), 5)
        assert server.sessions == []
        assert not server._live["alert"].subscriptions


async def test_subscriptions_match_exact_uris(keys: Keys, kind: str) -> None:
    params = station()
    async with running_server(params.values(), keys, kind) as server:
        alice = await client(server, keys, keys.alice)
        updates, on_update = collector()
        await alice.subscribe("/params/activity", on_update)
        for value in range(1, 4):
            await alice.set("/params/activity_level", value)
        params["activity"].publish("only this one")
        update = await next_update(updates)
        assert update["value"] == "only this one"
        assert updates.empty()
        await alice.finish()


async def test_a_set_is_pushed_to_other_subscribers(keys: Keys, kind: str) -> None:
    async with running_server(station().values(), keys, kind) as server:
        alice = await client(server, keys, keys.alice)
        bob = await client(server, keys, keys.bob)
        updates, on_update = collector()
        snapshot = (await bob.subscribe("/params/temp", on_update)).resource
        await alice.set("/params/temp", 25.0)
        update = await next_update(updates)
        assert update["value"] == 25.0
        assert update["seq"] == snapshot["seq"] + 1
        await alice.finish()
        await bob.finish()


# ------------------------------------------------------------------------------ access


RULES = AccessPolicy([
    AccessRule("*@irf", "/params*", frozenset({"get", "subscribe"})),
    AccessRule("alice@irf", "/params/*", frozenset({"set"})),
])


async def test_access_refusal_uses_the_authenticated_identity_and_changes_nothing(
    keys: Keys, kind: str
) -> None:
    calls = Calls()
    async with running_server(station(calls).values(), keys, kind, access=RULES) as server:
        bob = await client(server, keys, keys.bob)
        refused = await failure(bob.set("/params/knob", 5))
        assert refused.reason.code == ReasonCode.AUTHORIZATION_PERMISSION_REQUIRED
        assert calls.values == []
        assert (await bob.get("/params/knob")).resource["value"] == 1
        # Claiming to be alice in `from` changes nothing: the session's identity decides.
        spoofed = Command("set", "/params/knob", id=bob.new_id(), from_="alice@irf/x",
                          type="application/json", resource=5)
        response = await bob.send_command(spoofed)
        assert response.status is CommandStatus.FAILURE
        assert calls.values == []
        listing = (await bob.get("/params")).resource["items"]
        assert all(item["methods"] == ["get", "subscribe"] for item in listing)

        carol = await client(server, keys, keys.carol)
        unknown = await failure(carol.get("/params/temp"))
        assert unknown.reason.code == ReasonCode.AUTHORIZATION_UNAUTHORIZED_SENDER

        alice = await client(server, keys, keys.alice)
        await alice.set("/params/knob", 5)
        assert calls.values == [5]
        for channel in (alice, bob, carol):
            await channel.finish()


# ------------------------------------------------------------------------------ isolation


async def test_a_slow_plugin_does_not_delay_another_clients_get(keys: Keys, kind: str) -> None:
    calls = Calls()

    @parameter()
    def slow() -> str:
        calls.record()
        time.sleep(2.0)  # the slow instrument under test
        return "finally"

    @parameter()
    def fast() -> str:
        return "now"

    params = [slow, fast, Parameter("stored", value=1)]
    async with running_server(params, keys, kind) as server:
        alice = await client(server, keys, keys.alice)
        bob = await client(server, keys, keys.bob)
        slow_gets = [asyncio.ensure_future(alice.get("/params/slow")) for _ in range(3)]
        assert await asyncio.to_thread(calls.started.wait, 5)
        latencies: dict[str, list[float]] = {"/params/fast": [], "/params/stored": []}
        for _ in range(5):
            for uri, measured in latencies.items():
                started = time.perf_counter()
                await bob.get(uri)
                measured.append(time.perf_counter() - started)
        every = [value for measured in latencies.values() for value in measured]
        print(f"\nget latency during a 2 s plugin call ({kind}): "
              f"median {statistics.median(every) * 1000:.1f} ms, max {max(every) * 1000:.1f} ms")
        # No get of bob's waited for the slow call: all were answered while it still ran.
        assert not any(get.done() for get in slow_gets)
        # Issue 4's 50 ms, on the typical get of each kind (a plugin call and a stored value).
        # On a loaded 2-core machine a lone get can lose 100+ ms to the scheduler, which says
        # nothing about the server, so the 50 ms is not asserted on the maximum; a get held up
        # by the plugin would take most of its 2 s, far above the bound on the slowest.
        for uri, measured in latencies.items():
            assert statistics.median(measured) < 0.050, (uri, measured)
        assert max(every) < 0.5
        results = await asyncio.gather(*slow_gets)
        assert {r.resource["value"] for r in results} == {"finally"}
        assert len(calls.values) == 1  # concurrent reads share one call
        await alice.finish()
        await bob.finish()


@pytest.mark.timeout(60)
async def test_a_subscriber_that_never_reads_costs_bounded_memory(keys: Keys, kind: str) -> None:
    """The stalled client stops reading; the server drops its oldest samples, keeps at most
    queue_length of them, and the reading client still gets every update in order."""
    from rain_envelopes.channel import ClientChannel
    from rain_envelopes.transport import (
        ClientSecurity,
        Transport,
        memory_transport_pair,
        transport_factory,
    )

    from .stall import StallableTransport

    queue_length = 16
    feed = Parameter("feed", value=0)
    limits = Limits(queue_length=queue_length)
    async with running_server([feed], keys, kind, limits=limits) as server:
        endpoint = server.endpoints[0]
        inner: Transport
        if kind == "tcp":
            # Small client buffers so the server meets a full peer queue soon.
            options = {"client_rcvhwm": 20, "client_receive_buffer": 20, "tcp_rcvbuf": 65536}
            inner = transport_factory(endpoint).connect(
                endpoint, ClientSecurity(keys.bob, keys.station.public_key), options
            )
        else:
            inner, server_end = memory_transport_pair(max_queue=50)
            handler = asyncio.ensure_future(server.handle(server_end))
        stalled_transport = StallableTransport(inner)
        stalled = await ClientChannel(
            stalled_transport, identity=keys.bob, establish_timeout=5
        ).establish_session()
        await stalled.subscribe("/params/feed", lambda command: None)
        stalled_transport.stall()

        reader = await client(server, keys, keys.alice)
        seen: list[int] = []
        caught_up = asyncio.Event()
        target = 0

        def on_update(command: Command) -> None:
            seen.append(command.resource["seq"])
            if command.resource["seq"] >= target:
                caught_up.set()

        await reader.subscribe("/params/feed", on_update)
        (stalled_session,) = [s for s in server.sessions if s.identity == "bob@irf"]
        subscription = stalled_session.subscriptions["feed"]

        payload = "x" * 16_384  # big samples fill transport buffers sooner
        live = server._live["feed"]
        longest = 0
        for _batch in range(300):
            for _ in range(queue_length // 2):
                feed.publish(payload)
                longest = max(longest, len(subscription))
            target = live.seq
            caught_up.clear()
            await asyncio.wait_for(caught_up.wait(), 10)
        assert longest <= queue_length
        assert subscription.total_drops > 0
        # The reader saw every sample, in order, with no gaps.
        assert seen == list(range(seen[0], live.seq + 1))
        print(f"\nstalled subscriber ({kind}): {live.seq} published, queue max {longest}, "
              f"{subscription.total_drops} dropped, {subscription.delivered} delivered")
        await reader.finish()
        await stalled.close()
        if kind == "memory":
            await asyncio.wait_for(handler, 5)


# ------------------------------------------------------------------------------ life cycle


async def test_clean_shutdown_finishes_sessions_and_leaves_nothing_running(
    keys: Keys, kind: str
) -> None:
    params = station()
    async with running_server(params.values(), keys, kind) as server:
        alice = await client(server, keys, keys.alice)
        bob = await client(server, keys, keys.bob)
        await alice.subscribe("/params/counter", lambda command: None)
        await bob.subscribe("/params/temp", lambda command: None)
        await alice.get("/params/counter")
    # The server closed: clients were told `finished`, not cut off.
    for channel in (alice, bob):
        async with asyncio.timeout(5):
            await channel.wait_closed()
        assert channel.close_reason is None
    assert server.sessions == []
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert others == []
    assert not [t for t in threading.enumerate() if t.name.startswith("rain-plugin")]
    # Parameters are free to be served again.
    async with running_server(params.values(), keys, kind):
        pass


async def test_revoked_key_loses_its_session_within_a_second(
    keys: Keys, kind: str, tmp_path: Any
) -> None:
    from rain_envelopes.keys import AuthorizedKeys, Identity

    # Alice has two keys (say, laptop and lab PC); only the laptop key is revoked.
    alice_lab = Identity.generate()
    path = tmp_path / "authorized_keys"
    keys.authorized.add(alice_lab.public_key, "alice@irf")
    keys.authorized.save(path)
    keys.authorized = AuthorizedKeys.load(path)
    async with running_server(station().values(), keys, kind) as server:
        alice = await client(server, keys, keys.alice)
        alice_at_lab = await client(server, keys, alice_lab)
        bob = await client(server, keys, keys.bob)
        AuthorizedKeys.from_mapping({
            keys.bob.public_key_text: "bob@irf", alice_lab.public_key_text: "alice@irf",
        }).save(path)
        started = time.perf_counter()
        revoked = await server.reload_keys()
        assert "alice@irf" in revoked
        async with asyncio.timeout(1.0):
            await alice.wait_closed()
        print(f"\nrevoked session closed after {(time.perf_counter() - started) * 1000:.1f} ms")
        # The revoked client is told why, not just cut off.
        assert alice.close_reason is not None
        assert alice.close_reason.code == 13
        # Only the session that proved the revoked key ends.
        assert (await alice_at_lab.get("/params/temp")).resource["value"] == 20.0
        assert (await bob.get("/params/temp")).resource["value"] == 20.0
        await alice_at_lab.finish()
        await bob.finish()

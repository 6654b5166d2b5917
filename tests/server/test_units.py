"""Pure parts of the server: samples, parameter declarations, router, access rules, queues."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from rain_envelopes.envelopes import Command, CommandMethod, ReasonCode
from rain_envelopes.errors import QueueFull
from rain_envelopes.node import Node
from rain_envelopes.server import AccessPolicy, AccessRule, Parameter, PluginError, parameter
from rain_envelopes.server.errors import ParameterError
from rain_envelopes.server.router import Router, split_uri
from rain_envelopes.server.samples import Sample, format_timestamp, new_epoch
from rain_envelopes.server.subscriptions import Subscription

# ---------------------------------------------------------------------------- samples


def test_timestamp_is_utc_with_milliseconds_and_z() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 678_901, tzinfo=timezone(timedelta(hours=2)))
    assert format_timestamp(moment) == "2026-01-02T01:04:05.678Z"
    assert format_timestamp(datetime(2026, 1, 1)) == "2026-01-01T00:00:00.000Z"


def test_epochs_differ_between_starts() -> None:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    first, second = new_epoch(moment), new_epoch(moment)
    assert first != second
    assert re.fullmatch(r"20260101T000000Z-[0-9a-f]{8}", first)


def test_sample_document_adds_dropped_only_when_something_was_dropped() -> None:
    sample = Sample(1.5, "2026-01-01T00:00:00.000Z", 3, "e")
    assert sample.document() == {
        "value": 1.5, "timestamp": "2026-01-01T00:00:00.000Z", "seq": 3, "epoch": "e"
    }
    assert sample.document(dropped=2)["dropped"] == 2
    assert Sample.from_document(sample.document()) == sample
    with pytest.raises(ValueError, match="not a sample"):
        Sample.from_document({"value": 1})


# ---------------------------------------------------------------------------- declarations


def test_decorator_declares_a_getter_with_docstring_description() -> None:
    @parameter(unit="degC", interval=1.0)
    def temperature() -> float:
        """Air temperature.

        More text that is not the description."""
        return 1.0

    assert isinstance(temperature, Parameter)
    assert temperature.name == "temperature"
    assert temperature.description == "Air temperature."
    assert temperature.methods == ["get", "subscribe"]
    assert temperature.periodic
    descriptor = temperature.descriptor()
    assert descriptor["unit"] == "degC"
    assert descriptor["interval"] == 1.0


def test_setter_makes_a_parameter_settable_and_returns_it() -> None:
    knob = Parameter("knob", value=1)
    assert knob.methods == ["get", "subscribe"]

    @knob.setter
    def knob_setter(value: int) -> None:
        pass

    assert knob_setter is knob
    assert knob.methods == ["get", "set", "subscribe"]
    assert Parameter("stored", writable=True).settable


def test_bad_declarations_name_the_file_and_line() -> None:
    with pytest.raises(PluginError, match=r"test_units\.py:\d+: .*not valid"):
        Parameter("has space")
    with pytest.raises(PluginError, match=r"test_units\.py:\d+: .*does not compile"):
        Parameter("bad_schema", schema={"type": "no-such-type"})
    with pytest.raises(PluginError, match="positive"):
        Parameter("bad_interval", interval=0)
    with pytest.raises(PluginError, match="neither a getter nor a scan"):
        Parameter("lonely", interval=1.0).check()


def test_schema_is_compiled_once_and_checks_values() -> None:
    knob = Parameter("knob", schema={"type": "integer", "minimum": 0}, writable=True)
    knob.validate(3)
    with pytest.raises(Exception, match="bigger than or equal to 0"):
        knob.validate(-1)


def test_publish_before_serving_only_records_the_value() -> None:
    alert = Parameter("alert")
    alert.publish({"level": "warning"})
    assert alert.value == {"level": "warning"}


def test_interval_can_change_at_run_time_but_stays_valid() -> None:
    @parameter(interval=1.0)
    def reading() -> int:
        return 1

    reading.interval = 0.5
    assert reading.interval == 0.5
    with pytest.raises(ValueError, match="positive"):
        reading.interval = -1


# ---------------------------------------------------------------------------- router


def _router() -> Router[str]:
    router: Router[str] = Router()
    router.add("/params", CommandMethod.GET, "list")
    router.add("/params/{name}", "get", "get")
    router.add("/params/{name}", "set", "set")
    return router


def test_router_matches_whole_paths_only() -> None:
    router = _router()
    found = router.resolve("get", "/params/activity")
    assert (found.handler, found.params) == ("get", {"name": "activity"})
    assert router.resolve("get", "/params/activity_level").params == {"name": "activity_level"}
    assert router.resolve("get", "/params/").handler == "list"  # trailing '/' ignored
    with pytest.raises(ParameterError) as caught:
        router.resolve("get", "/params/activity/extra")
    assert caught.value.code == ReasonCode.COMMAND_RESOURCE_NOT_FOUND


def test_router_reports_unsupported_methods_and_unreadable_uris() -> None:
    router = _router()
    with pytest.raises(ParameterError) as caught:
        router.resolve("delete", "/params/temp")
    assert caught.value.code == ReasonCode.COMMAND_METHOD_NOT_SUPPORTED
    with pytest.raises(ParameterError) as caught:
        router.resolve("get", "params/temp")
    assert caught.value.code == ReasonCode.VALIDATION_INVALID_METHOD


def test_lime_uris_must_name_this_server() -> None:
    owner = Node.parse("station@irf")
    assert split_uri("lime://station@irf/params/t?x=1", owner) == ("/params/t", {"x": ["1"]})
    with pytest.raises(ParameterError) as caught:
        split_uri("lime://other@irf/params/t", owner)
    assert caught.value.code == ReasonCode.COMMAND_RESOURCE_NOT_FOUND


# ---------------------------------------------------------------------------- access


def test_access_rules_grant_by_identity_glob_path_glob_and_method() -> None:
    policy = AccessPolicy([
        AccessRule("*@irf", "/params*", frozenset({"get", "subscribe"})),
        AccessRule("alice@irf", "/params/knob", frozenset({"set"})),
    ])
    assert policy.allows("bob@irf", "get", "/params/temp")
    assert policy.allows("ALICE@IRF", "set", "/params/knob")
    assert not policy.allows("bob@irf", "set", "/params/knob")
    assert not policy.allows("alice@irf", "set", "/params/temp")
    assert policy.allows("eve@elsewhere", "unsubscribe", "/params/temp")
    with pytest.raises(ParameterError) as caught:
        policy.check("eve@elsewhere", "get", "/params/temp")
    assert caught.value.code == ReasonCode.AUTHORIZATION_UNAUTHORIZED_SENDER
    with pytest.raises(ParameterError) as caught:
        policy.check("bob@irf", "set", "/params/knob")
    assert caught.value.code == ReasonCode.AUTHORIZATION_PERMISSION_REQUIRED


def test_no_rules_allow_everyone_but_guests_only_read() -> None:
    policy = AccessPolicy(None)
    assert policy.allows("anyone@x", "set", "/params/a")
    assert policy.allows("guest", "get", "/params/a")
    assert not policy.allows("guest", "set", "/params/a")


def test_access_rule_rejects_unknown_methods() -> None:
    with pytest.raises(ValueError, match="unknown method 'fly'"):
        AccessRule("*", "/params/*", frozenset({"fly"}))
    assert AccessRule("*", "*", frozenset({"*"})).methods >= {"get", "set", "subscribe"}


# ---------------------------------------------------------------------------- subscription queue


async def test_subscription_queue_is_bounded_and_counts_drops() -> None:
    sent: list[Command] = []
    gate = asyncio.Event()
    three = asyncio.Event()

    async def send(command: Command) -> None:
        await gate.wait()
        sent.append(command)
        if len(sent) == 3:
            three.set()

    sub = Subscription("x", "/params/x", send, maxlen=3)
    for seq in range(1, 11):
        sub.offer(Sample(seq, "t", seq, "e"))
    assert len(sub) == 3
    assert sub.total_drops == 7
    sub.start()
    gate.set()
    async with asyncio.timeout(5):
        await three.wait()
    assert [c.resource["seq"] for c in sent] == [8, 9, 10]
    assert sent[0].resource["dropped"] == 7
    assert "dropped" not in sent[1].resource
    assert sent[0].method is CommandMethod.OBSERVE
    assert sent[0].id is None
    sub.close()


async def test_a_full_peer_queue_counts_as_drops_and_backs_off() -> None:
    refused = asyncio.Event()
    delivered: list[Command] = []
    full = True
    done = asyncio.Event()

    async def send(command: Command) -> None:
        if full:
            refused.set()
            raise QueueFull("peer full")
        delivered.append(command)
        done.set()

    sub = Subscription("x", "/params/x", send, maxlen=2)
    sub.start()
    sub.offer(Sample(1, "t", 1, "e"))
    async with asyncio.timeout(5):
        await refused.wait()
    full = False
    sub.offer(Sample(2, "t", 2, "e"))
    async with asyncio.timeout(5):
        await done.wait()
    assert delivered[0].resource["seq"] == 2
    assert delivered[0].resource["dropped"] == 1
    sub.close()


async def test_a_sample_refused_with_queue_full_keeps_the_drop_count_it_carried() -> None:
    # Samples 1-3 are dropped from a queue of one before the first push; the push of sample 4,
    # which carries "dropped": 3, is refused. Those 3 drops and sample 4 itself must reach
    # the client with the next observe that does go out: 4 in all, not 1.
    delivered: list[Command] = []
    refused = asyncio.Event()
    done = asyncio.Event()
    attempts = 0

    async def send(command: Command) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            assert command.resource["dropped"] == 3
            refused.set()
            raise QueueFull("peer full")
        delivered.append(command)
        done.set()

    sub = Subscription("x", "/params/x", send, maxlen=1)
    for seq in range(1, 5):
        sub.offer(Sample(seq, "t", seq, "e"))
    assert sub.total_drops == 3
    sub.start()
    async with asyncio.timeout(5):
        await refused.wait()
    sub.offer(Sample(5, "t", 5, "e"))
    async with asyncio.timeout(5):
        await done.wait()
    assert delivered[0].resource["seq"] == 5
    assert delivered[0].resource["dropped"] == 4
    assert sub.total_drops == 4
    sub.close()


def test_the_server_errors_are_refusals_in_the_one_tree_with_their_codes() -> None:
    from rain_envelopes import errors
    from rain_envelopes.server import InvalidValue, NotAllowed

    # One class each, defined in rain_envelopes.errors and exported by rain_envelopes.server.
    assert ParameterError is errors.ParameterError
    assert PluginError is errors.PluginError
    assert issubclass(ParameterError, errors.CommandRefused)
    assert issubclass(PluginError, errors.RainError)
    # errors.py sits below envelopes, so it writes the codes as numbers: pinned here.
    assert errors.CommandRefused.code == ReasonCode.COMMAND_PROCESSING_ERROR
    assert ParameterError("x").code == ReasonCode.COMMAND_PROCESSING_ERROR
    assert InvalidValue("x").code == ReasonCode.COMMAND_INVALID_ARGUMENT
    assert NotAllowed("x").code == ReasonCode.COMMAND_NOT_ALLOWED
    assert ParameterError("x", code=ReasonCode.APPLICATION_ERROR).reason.code == 101

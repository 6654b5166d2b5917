"""Prometheus metrics of `rain serve`, tested by scraping them over HTTP: sessions, commands by
method and outcome, refusals by code, plugin call latency, refused sessions and handshakes,
subscription drops; and off by default."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from rain_envelopes import ReasonCode
from rain_envelopes.channel import connect
from rain_envelopes.cli import EXIT_USAGE
from rain_envelopes.errors import CommandFailed, RainError
from rain_envelopes.server import AccessPolicy, AccessRule, Parameter
from tests.serverprocess import rain_env
from tests.zmq.helpers import eventually

from .conftest import ZMQ, Keys, running_server

prometheus = pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from rain_envelopes.metrics import ServerMetrics, parse_address  # noqa: E402


def _parameters() -> list[Parameter]:
    def read() -> float:
        return 20.5

    temp = Parameter("temp", getter=read, unit="degC")
    setting = Parameter("setting", value=0, schema={"type": "integer"}, setter=lambda v: v)
    return [temp, setting]


ACCESS = AccessPolicy([
    AccessRule("*@irf", "/params*", frozenset({"get", "subscribe"})),
    AccessRule("alice@irf", "/params/*", frozenset({"set"})),
])


async def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    text = await asyncio.to_thread(get)
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def _value(values: dict[Any, float], name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.skipif(not ZMQ, reason="no ZMQ transport")
async def test_metrics_count_what_the_server_does(keys: Keys) -> None:
    async with running_server(_parameters(), keys, "tcp", access=ACCESS) as server:
        metrics = ServerMetrics(server)  # after start: sessions from now on are counted
        port = await asyncio.to_thread(metrics.serve, "127.0.0.1", 0)
        try:
            before = await _scrape(port)
            handshakes_before = _value(before, "rain_handshakes_refused_total")
            endpoint = server.endpoints[0]
            alice = await connect(endpoint, identity=keys.alice,
                                  server_key=keys.station.public_key, establish_timeout=5)
            bob = await connect(endpoint, identity=keys.bob,
                                server_key=keys.station.public_key, establish_timeout=5)
            # The server counts a session just after the client sees `established`.
            await eventually(lambda: len(server.sessions) == 2, 5.0)
            assert _value(await _scrape(port), "rain_sessions") == 2
            bob_served = next(s for s in server.sessions if s.identity == "bob@irf")
            await alice.get("/params/temp")
            await alice.set("/params/setting", 5)
            with pytest.raises(CommandFailed):
                await alice.set("/params/setting", "five")  # the schema says no: 64
            with pytest.raises(CommandFailed):
                await alice.get("/params/nothing")  # 67
            with pytest.raises(CommandFailed):
                await bob.set("/params/setting", 1)  # the access rules say no: 35
            with pytest.raises((RainError, OSError, TimeoutError)):
                await connect(endpoint, identity=keys.stranger,
                              server_key=keys.station.public_key, establish_timeout=3)
            await bob.finish()
            async with asyncio.timeout(5):
                await bob_served.ended.wait()  # the server has let bob's session go
            values = await _scrape(port)
        finally:
            metrics.close()
        await alice.finish()

    assert _value(values, "rain_sessions") == 1
    assert _value(values, "rain_sessions_established_total") == 2
    assert _value(values, "rain_commands_total", method="get", outcome="success") >= 1
    assert _value(values, "rain_commands_total", method="set", outcome="success") == 1
    assert _value(values, "rain_commands_total", method="set", outcome="refused") == 2
    assert _value(values, "rain_commands_total", method="get", outcome="refused") == 1
    for code in (ReasonCode.COMMAND_INVALID_ARGUMENT, ReasonCode.COMMAND_RESOURCE_NOT_FOUND,
                 ReasonCode.AUTHORIZATION_PERMISSION_REQUIRED):
        assert _value(values, "rain_refusals_total", code=str(int(code))) == 1, code
    # The getter and the setter ran in plugin code, and were timed.
    assert _value(values, "rain_plugin_call_seconds_count", role="getter") >= 1
    assert _value(values, "rain_plugin_call_seconds_count", role="setter") == 1
    # The stranger's key was refused by the transport's authenticator (ZAP).
    assert _value(values, "rain_handshakes_refused_total") == handshakes_before + 1
    assert _value(values, "rain_subscription_drops_total") == 0


async def test_refused_sessions_and_drops_are_counted(keys: Keys) -> None:
    async with running_server(_parameters(), keys, "memory", access=ACCESS) as server:
        metrics = ServerMetrics(server)
        port = await asyncio.to_thread(metrics.serve, "127.0.0.1", 0)
        try:
            endpoint = server.endpoints[0]
            with pytest.raises(RainError):  # memory: no transport keys, the session refuses
                await connect(endpoint, identity=keys.stranger, establish_timeout=3)
            values = await _scrape(port)
            assert _value(values, "rain_sessions_refused_total", reason="authentication") == 1
            # Drops of a live subscription count, and still count once its session ended.
            alice = await connect(endpoint, identity=keys.alice, establish_timeout=5)
            await alice.subscribe("/params/setting", lambda command: None)
            (session,) = server.sessions
            session.subscriptions["setting"].total_drops += 3  # as a slow reader would cause
            assert _value(await _scrape(port), "rain_subscription_drops_total") == 3
            await alice.finish()
            await session.ended.wait()
            assert _value(await _scrape(port), "rain_subscription_drops_total") == 3
        finally:
            metrics.close()


def test_a_session_still_listed_after_its_end_is_counted_once() -> None:
    # The server reports a session's end before it lets the session go; a scrape in between
    # (the HTTP thread may run at any time) must not add its drops twice, or the counter
    # would go down at the next scrape.
    class Subscription:
        total_drops = 3

    class Session:
        subscriptions = {"temp": Subscription()}

    class StandInServer:
        metrics = None
        _listeners: list[Any] = []

        def __init__(self) -> None:
            self.sessions: list[Session] = [Session()]

    server = StandInServer()
    metrics = ServerMetrics(server)  # type: ignore[arg-type]
    assert metrics.subscription_drops() == 3
    metrics.session_ended(server.sessions[0])  # type: ignore[arg-type]
    assert metrics.subscription_drops() == 3
    server.sessions.clear()
    assert metrics.subscription_drops() == 3


async def test_metrics_are_off_by_default_and_cost_a_test(keys: Keys) -> None:
    async with running_server(_parameters(), keys, "memory") as server:
        assert server.metrics is None
        assert server._runtime.on_call is None


def test_addresses_default_to_loopback() -> None:
    assert parse_address("9464") == ("127.0.0.1", 9464)
    assert parse_address(":9464") == ("127.0.0.1", 9464)
    assert parse_address("0.0.0.0:9") == ("0.0.0.0", 9)
    assert parse_address("[::1]:9") == ("::1", 9)
    for bad in ("x", "host:port", "70000"):
        with pytest.raises(ValueError, match=r"(?i)port"):
            parse_address(bad)


def test_serve_checks_the_metrics_extra_and_address_before_plugin_code_runs(
    tmp_path: Path,
) -> None:
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    marker = tmp_path / "plugin-ran"
    (plugins / "probe.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    )
    config = tmp_path / "rain.toml"
    config.write_text('identity = "probe@irf"\ninsecure = true\n'
                      'listen = ["tcp://127.0.0.1:0"]\nplugins = "plugins"\n')
    hide = "import sys; sys.modules['prometheus_client'] = None; "
    for prelude, metrics, expected in ((hide, "0", "pip install 'rain-envelopes[metrics]'"),
                                       ("", "not-a-port", "--metrics")):
        done = subprocess.run(
            [sys.executable, "-c", prelude + "import sys; from rain_envelopes.cli import main;"
             f" sys.exit(main(['serve', {str(config)!r}, '--metrics', {metrics!r}]))"],
            capture_output=True, text=True, timeout=30, env=rain_env(), check=False,
        )
        assert done.returncode == EXIT_USAGE, done.stderr
        assert expected in done.stderr
        assert not marker.exists()

"""Discovery on the LAN (issue 10, item 2), on loopback only: `rain serve --advertise` is found
by `rain discover` and withdrawn on stop; clients connect by name (``rain://name@domain``)
from the CLI and the library; a server whose advertised fingerprint or actual CURVE key is not
the pinned one is refused with both fingerprints named; a missing extra is a clear error.

Every wait is on an mDNS answer or removal, bounded by a deadline; nothing sleeps. Node names
carry a random suffix so that a parallel run on the same machine cannot answer for ours.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from rain_envelopes import Client, sync
from rain_envelopes.channel import connect
from rain_envelopes.cli import main
from rain_envelopes.discovery import (
    DISCOVERY,
    Advertisement,
    Browser,
    DiscoveredServer,
    DiscoveredTransport,
    DiscoveryUnavailable,
    KeyMismatch,
    ServerNotFound,
    _read_info,
    advertised_endpoints,
    format_table,
    key_fingerprint,
    require,
    resolve,
)
from rain_envelopes.errors import ConfigError, SecurityCause
from rain_envelopes.keys import Identity, format_public_key, load_public_key
from rain_envelopes.server.config import parse_config
from rain_envelopes.transport import ClientSecurity, transport_factory
from tests.discovery.conftest import LOOPBACK, skip_without_mdns
from tests.serverprocess import ServerProcess, rain_env

PLUGIN = """
from rain_envelopes.server import Parameter

knob = Parameter("knob", value=7, writable=True, schema={"type": "integer"})
"""

CONFIG = """
identity = "{node}"
listen = ["tcp://127.0.0.1:0"]
key_file = "station.key"
authorized_keys = "authorized_keys"
allow = ["127.0.0.1/32"]
plugins = "plugins"

[discovery]
advertise = true
interfaces = ["127.0.0.1"]
"""

LOCAL = {"discovery_interfaces": [LOOPBACK]}


@dataclass
class Station:
    """A `rain serve` child advertising ``node`` on loopback, and key files to reach it."""

    node: str
    folder: Path
    process: ServerProcess
    station_pub: Path
    alice_key: Path
    other_pub: Path  # a valid key that is not the station's

    def client(self, pub: Path | None = None) -> list[str]:
        return ["-k", str(self.alice_key), "--server-key", str(pub or self.station_pub),
                "-t", "15"]


def _write_site(folder: Path, node: str, plugin: str = PLUGIN) -> Path:
    Identity.generate().save(folder / "station.key")
    alice, other = Identity.generate(), Identity.generate()
    alice.save(folder / "alice.key")
    other.save(folder / "other.key")
    (folder / "authorized_keys").write_text(f"{alice.public_key_text} alice@lab\n")
    (folder / "plugins").mkdir()
    (folder / "plugins" / "lab.py").write_text(plugin)
    config = folder / "rain.toml"
    config.write_text(CONFIG.format(node=node))
    return config


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Station]:
    skip_without_mdns()
    folder = tmp_path_factory.mktemp("discovery")
    node = f"station-{secrets.token_hex(3)}@lab"
    config = _write_site(folder, node)
    process = ServerProcess(config, folder / "serve.log")
    try:
        pub = folder / "station.key.pub"
        # Ready once its advertisement answers (it is made after the "serving" line).
        asyncio.run(resolve(node, server_key=load_public_key(pub), timeout=10,
                            interfaces=[LOOPBACK]))
        yield Station(node, folder, process, pub, folder / "alice.key",
                      folder / "other.key.pub")
    finally:
        process.stop()


# ------------------------------------------------------------------------------ without network


def test_fingerprint_is_the_sha256_of_the_raw_key() -> None:
    key = Identity.generate().public_key
    expected = base64.b64encode(hashlib.sha256(key).digest()).decode().rstrip("=")
    assert key_fingerprint(key) == f"SHA256:{expected}"
    assert DiscoveredServer("a@b", key_fingerprint(key), ("tcp://h:1",)).matches(key)
    with pytest.raises(ValueError, match="32-byte"):
        key_fingerprint(key[:31])


def test_the_table_says_which_advertised_keys_are_pinned() -> None:
    pinned, other = Identity.generate().public_key, Identity.generate().public_key
    servers = [
        DiscoveredServer("a@lab", key_fingerprint(pinned), ("tcp://10.0.0.1:4505",)),
        DiscoveredServer("b@lab", key_fingerprint(other), ("tcp://10.0.0.2:4505",)),
        DiscoveredServer("c@lab", None, ("tcp://10.0.0.3:4505",)),
    ]
    pins = {"a@lab": pinned, "b@lab": pinned}
    lines = format_table(servers, pins.get)
    assert lines[0].split() == ["NODE", "KEY", "FINGERPRINT", "ENDPOINTS", "PINNED", "KEY"]
    assert [line.split()[-1] for line in lines[1:]] == ["pinned", "DIFFERS", "-"]
    assert "(none: insecure)" in lines[3]
    assert all("PINNED" not in line for line in format_table(servers))


def test_wildcards_are_written_out_and_unreachable_endpoints_left_out() -> None:
    endpoints = ["tcp://0.0.0.0:4505", "tcp://*:4506", "ipc:///tmp/rain", "tcp://10.1.2.3:4507",
                 "tcp://[::]:4508"]
    assert advertised_endpoints(endpoints, ["192.168.1.5", "10.0.0.2"]) == [
        "tcp://192.168.1.5:4505", "tcp://10.0.0.2:4505",
        "tcp://192.168.1.5:4506", "tcp://10.0.0.2:4506", "tcp://10.1.2.3:4507",
    ]


class AnsweredService:
    """What zeroconf's AsyncServiceInfo gives _read_info: a TXT record, addresses, a port."""

    def __init__(self, properties: dict[bytes, bytes | None], port: int = 0) -> None:
        self.properties = properties
        self.port = port
        self.name = "station@lab._rain._tcp.local."
        self.server = "host.local."

    def parsed_addresses(self) -> list[str]:
        return ["192.168.1.5"]


def test_an_advertisement_reaches_a_server_only_through_tcp_endpoints() -> None:
    txt = {b"v": b"1", b"node": b"station@lab", b"fp": b"SHA256:x"}
    hostile = [b"rain://station@lab", b"ipc:///run/other.sock", b"memory://station",
               b"tcp://10.1.2.3:4505", b"tcp://10.1.2.3 :4506"]
    props = {**txt, **{f"ep{i}".encode(): ep for i, ep in enumerate(hostile)}}
    server = _read_info(AnsweredService(props))  # type: ignore[arg-type]
    assert server is not None
    assert server.endpoints == ("tcp://10.1.2.3:4505",)
    # Nothing usable in the TXT record, no port: not an advertisement at all.
    only_hostile = {**txt, b"ep0": b"rain://station@lab"}
    assert _read_info(AnsweredService(only_hostile)) is None  # type: ignore[arg-type]
    # No usable ep but an SRV port: the port on each address.
    server = _read_info(AnsweredService(only_hostile, port=4505))  # type: ignore[arg-type]
    assert server is not None
    assert server.endpoints == ("tcp://192.168.1.5:4505",)


def test_discovery_config_is_checked(tmp_path: Path) -> None:
    base = {"identity": "station@lab", "listen": ["tcp://127.0.0.1:0"], "insecure": True}
    config = parse_config(base, base=tmp_path)
    assert config.discovery.advertise is False  # off unless asked for
    config = parse_config({**base, "discovery": {"advertise": True, "interfaces": "10.0.0.2"}},
                          base=tmp_path)
    assert config.discovery.advertise
    assert config.discovery.interfaces == ("10.0.0.2",)
    with pytest.raises(ConfigError, match=r"discovery\.interfaces\[0\]: expected an IPv4"):
        parse_config({**base, "discovery": {"interfaces": ["fe80::1"]}}, base=tmp_path)
    with pytest.raises(ConfigError, match=r"discovery\.advertize: unknown key; did you mean"):
        parse_config({**base, "discovery": {"advertize": True}}, base=tmp_path)


def test_rain_endpoints_need_a_node_name_and_a_pinned_key() -> None:
    assert transport_factory("rain://station@lab") is DISCOVERY
    security = ClientSecurity(identity=Identity.generate())
    with pytest.raises(ConfigError, match="discovery never decides trust") as error:
        DISCOVERY.connect("rain://station@lab", security)
    assert "--server-key" in str(error.value)
    with pytest.raises(ConfigError, match="node name"):
        DISCOVERY.connect("rain://station", security)
    with pytest.raises(ConfigError, match="rain:// names a server to find"):
        DISCOVERY.listen(["rain://station@lab"])
    with pytest.raises(ConfigError, match="discovery_timeout"):
        DiscoveredTransport("rain://station@lab", ClientSecurity(insecure=True),
                            {"discovery_timeout": -1})


def test_missing_extra_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "zeroconf", None)
    monkeypatch.setitem(sys.modules, "zeroconf.asyncio", None)
    with pytest.raises(DiscoveryUnavailable, match=r"rain-envelopes\[discovery\]"):
        require()
    assert main(["discover", "-t", "0.1"]) == 2
    assert "rain-envelopes[discovery]" in capsys.readouterr().err
    pub = tmp_path / "k.pub"
    pub.write_text(Identity.generate().public_key_text + "\n")
    Identity.generate().save(tmp_path / "me.key")
    assert main(["get", "rain://station@lab", "knob", "-k", str(tmp_path / "me.key"),
                 "--server-key", str(pub)]) == 2
    assert "rain-envelopes[discovery]" in capsys.readouterr().err
    # rain serve says so before any plugin code runs: this plugin would leave a file.
    marker = tmp_path / "plugin-ran"
    config = _write_site(tmp_path, "station@lab", f"open({str(marker)!r}, 'w').close()\n")
    done = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.modules['zeroconf'] = None; from rain_envelopes.cli import main;"
         f" sys.exit(main(['serve', {str(config)!r}]))"],
        capture_output=True, text=True, timeout=20, env=rain_env(),
    )
    assert done.returncode == 2, done.stderr
    assert "rain-envelopes[discovery]" in done.stderr
    assert not marker.exists()


# ------------------------------------------------------------------------------ on loopback


def test_discover_lists_the_advertised_server(
    station: Station, mdns: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["discover", "--json", "-t", "1.5"]) == 0
    found = [item for item in orjson.loads(capsys.readouterr().out)
             if item["node"] == station.node]
    assert len(found) == 1, found
    assert found[0]["fingerprint"] == key_fingerprint(load_public_key(station.station_pub))
    assert found[0]["endpoints"] == [station.process.endpoint]


def test_cli_and_blocking_api_get_by_node_name(
    station: Station, mdns: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["get", f"rain://{station.node}", "knob", *station.client()]) == 0
    assert capsys.readouterr().out.strip() == "knob 7"
    # ... with the key pinned in a known-hosts file under the node's name.
    hosts = station.folder / "known_hosts_get"
    hosts.write_text(f"rain://{station.node} {station.station_pub.read_text().split()[0]}\n")
    assert main(["get", f"rain://{station.node}", "knob", "-k", str(station.alice_key),
                 "--known-hosts", str(hosts)]) == 0
    assert capsys.readouterr().out.strip() == "knob 7"
    # ... and from the blocking API, which takes the same endpoint and known-hosts file.
    with sync.connect(f"rain://{station.node}", key=station.alice_key, known_hosts=hosts,
                      timeout=15, transport_options=LOCAL) as client:
        assert client.get("knob") == 7


async def test_connect_and_client_by_node_name(station: Station, mdns: None) -> None:
    alice = Identity.load(station.alice_key)
    server_key = load_public_key(station.station_pub)
    channel = await connect(f"rain://{station.node}", identity=alice, server_key=server_key,
                            transport_options=LOCAL, establish_timeout=15)
    try:
        assert (await channel.get("/params/knob")).resource["value"] == 7
        assert channel.transport.peer_identity == format_public_key(server_key)
    finally:
        await channel.finish()
    async with Client(f"rain://{station.node}", identity=alice, server_key=server_key,
                      transport_options=LOCAL) as client:
        assert (await client.get("/params/knob")).resource["value"] == 7


def test_advertised_fingerprint_mismatch_is_refused(
    station: Station, mdns: None, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["get", f"rain://{station.node}", "knob", *station.client(station.other_pub)])
    error = capsys.readouterr().err
    assert status == 4, error
    advertised = key_fingerprint(load_public_key(station.station_pub))
    pinned = key_fingerprint(load_public_key(station.other_pub))
    assert f"advertises key fingerprint {advertised}" in error
    assert f"pinned server key has fingerprint {pinned}" in error


async def test_advertise_discover_withdraw_and_an_impostor_refused(
    station: Station, mdns: None
) -> None:
    """An in-process advertisement that claims another node with the key fingerprint a client
    pins, pointing at a server that does not hold that key: it is found with what it claims,
    refused at the CURVE handshake (both fingerprints named), and gone once withdrawn."""
    node = f"impostor-{secrets.token_hex(3)}@lab.example"
    claimed = load_public_key(station.other_pub)
    port = station.process.port
    loop = asyncio.get_running_loop()
    async with Browser([LOOPBACK]) as browser:
        advertisement = Advertisement(node, [f"tcp://0.0.0.0:{port}", "ipc:///tmp/none"],
                                      claimed, interfaces=[LOOPBACK])
        await advertisement.start()
        try:
            deadline = loop.time() + 10
            while True:
                change = await browser.next_change(deadline)
                assert change is not None, f"{node} was not found within 10 s"
                if change[1] is not None and change[1].node == node:
                    break
            service, found = change
            assert found.fingerprint == key_fingerprint(claimed)
            assert found.endpoints == (f"tcp://127.0.0.1:{port}",)
            assert service == advertisement.service  # dots replaced: instance labels have none
            assert service.startswith(node.replace(".", "-") + "._rain._tcp")

            alice = Identity.load(station.alice_key)
            with pytest.raises(KeyMismatch) as refused:
                await connect(f"rain://{node}", identity=alice, server_key=claimed,
                              transport_options=LOCAL, establish_timeout=15)
            assert refused.value.cause is SecurityCause.SERVER_KEY
            assert "did not prove" in str(refused.value)
            assert str(refused.value).count(key_fingerprint(claimed)) == 2
        finally:
            await advertisement.close()
        deadline = loop.time() + 10
        while True:
            change = await browser.next_change(deadline)
            assert change is not None, f"{node} was not withdrawn within 10 s"
            if change == (service, None):
                break
    with pytest.raises(ServerNotFound, match="no server named"):
        await resolve(node, server_key=claimed, timeout=0.5, interfaces=[LOOPBACK])


async def test_a_second_server_claiming_the_name_is_passed_over(
    station: Station, mdns: None
) -> None:
    """Someone else advertises the station's own name with another key: the client, which
    pins the station's key, still finds the station (and never the other one)."""
    other = load_public_key(station.other_pub)
    async with Advertisement(station.node, ["tcp://127.0.0.1:9"], other,
                             interfaces=[LOOPBACK], instance=f"squatter-{secrets.token_hex(3)}"):
        # The squatter answers at once (it has just announced itself), the station up to a
        # second later (it answered a moment ago, and mDNS repeats an answer at most once a
        # second): the client must wait for it rather than give up on the first answer.
        found = await resolve(station.node, server_key=load_public_key(station.station_pub),
                              timeout=10, interfaces=[LOOPBACK])
        assert found.endpoints == (station.process.endpoint,)


async def test_serve_withdraws_its_advertisement_on_stop(station: Station, mdns: None) -> None:
    """Last in this module: it stops the shared server."""
    loop = asyncio.get_running_loop()
    async with Browser([LOOPBACK]) as browser:
        deadline = loop.time() + 10
        while True:
            change = await browser.next_change(deadline)
            assert change is not None, f"{station.node} was not found within 10 s"
            if change[1] is not None and change[1].node == station.node:
                break
        service = change[0]
        assert await asyncio.to_thread(station.process.stop) == 0
        deadline = loop.time() + 5
        while True:
            change = await browser.next_change(deadline)
            assert change is not None, f"{station.node} stopped but was not withdrawn in 5 s"
            if change == (service, None):
                break

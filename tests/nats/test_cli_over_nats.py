"""The `rain` command over NATS, as a user would run it: `rain nats-config` writes the broker's
users from the server's config, a real nats-server runs with them, `rain serve` listens on a
``nats://`` endpoint, and `rain get`, `set` and `monitor` reach it by that endpoint with the
same key files as over tcp://. Only the endpoint changed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rain_envelopes.keys import AuthorizedKeys, Identity
from tests.serverprocess import ServerProcess
from tests.test_cli import PLUGIN, rain

from .broker import NatsServer

CONFIG = """
identity = "station@irf"
listen = ["{endpoint}"]
key_file = "station.key"
authorized_keys = "authorized_keys"
plugins = "plugins"

[[access]]
identity = "*@irf"
uri = "/params*"
methods = ["get", "subscribe"]

[[access]]
identity = "alice@irf"
uri = "/params/*"
methods = ["set"]
"""


@dataclass
class NatsSite:
    folder: Path
    broker: NatsServer
    server: ServerProcess

    def client(self, name: str) -> list[str]:
        return [
            "--key", str(self.folder / f"{name}.key"),
            "--server-key", str(self.folder / "station.key.pub"),
            "--timeout", "5",
        ]


@pytest.fixture
def nats_site(tmp_path: Path) -> Iterator[NatsSite]:
    # Keys as `rain keygen` and `rain authorize` make them (in-process, for time).
    keys = {name: Identity.generate() for name in ("station", "alice", "bob", "stranger")}
    for name, identity in keys.items():
        identity.save(tmp_path / f"{name}.key")
    AuthorizedKeys.from_mapping({
        keys["alice"].public_key: "alice@irf", keys["bob"].public_key: "bob@irf",
    }).save(tmp_path / "authorized_keys")
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "lab.py").write_text(PLUGIN)
    # The broker's port is only known once it runs, and its users come from the config: write
    # the config with a placeholder port for nats-config, then the real one for rain serve.
    config = tmp_path / "rain.toml"
    config.write_text(CONFIG.format(endpoint="nats://127.0.0.1:4222"))
    done = rain("nats-config", str(config), "--out", str(tmp_path / "users.conf"))
    assert done.returncode == 0, done.stderr
    assert "3 NATS users for 1 RAIN server(s)" in done.stderr
    broker = NatsServer(tmp_path / "nats", authorization=(tmp_path / "users.conf").read_text())
    broker.start()
    try:
        config.write_text(CONFIG.format(endpoint=broker.url))
        server = ServerProcess(config, tmp_path / "server.log")
        try:
            assert server.endpoint == broker.url
            yield NatsSite(tmp_path, broker, server)
        finally:
            server.stop()
    finally:
        broker.stop()


@pytest.mark.timeout(60)
def test_get_set_monitor_and_refusals_over_nats(nats_site: NatsSite) -> None:
    endpoint = nats_site.broker.url
    alice = nats_site.client("alice")
    done = rain("get", endpoint, "knob", "note", *alice)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["knob", "1", "note"]  # note is the empty string

    done = rain("set", endpoint, "knob", "7", *alice)
    assert done.returncode == 0, done.stderr
    done = rain("get", endpoint, "knob", *alice, "--json")
    assert done.returncode == 0, done.stderr
    assert '"value":7' in done.stdout

    done = rain("monitor", endpoint, "temperature", "-n", "3", *alice)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    assert all("temperature" in line for line in lines)

    # Refusals keep their exit codes (one test with the above: a site costs seconds to set up).
    # bob is authorised but the access rules let him only read: refused by the server (5).
    done = rain("set", endpoint, "knob", "3", *nats_site.client("bob"))
    assert done.returncode == 5, done.stderr
    # The stranger's key is not among the broker's users: refused before any frame (4).
    done = rain("get", endpoint, "knob", *nats_site.client("stranger"))
    assert done.returncode == 4, done.stderr
    assert "refused this key" in done.stderr

"""CLI and config decisions that need no subprocess: key precedence, config refusals."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from rain_envelopes.cli import EXIT_USAGE, _server_key, main
from rain_envelopes.errors import ConfigError
from rain_envelopes.keys import Identity, KnownHosts
from rain_envelopes.server.config import parse_config

ENDPOINT = "tcp://127.0.0.1:4505"


def _args(**options: object) -> argparse.Namespace:
    values: dict[str, object] = {"server_key": None, "known_hosts": None, "endpoint": ENDPOINT}
    values.update(options)
    return argparse.Namespace(**values)


def test_command_line_known_hosts_beats_the_environment_server_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pinned, other = Identity.generate(), Identity.generate()
    hosts = KnownHosts()
    hosts.add(ENDPOINT, pinned.public_key)
    hosts.save(tmp_path / "known_hosts")
    monkeypatch.setenv("RAIN_SERVER_KEY", other.public_key_text)
    assert _server_key(_args(known_hosts=str(tmp_path / "known_hosts"))) == pinned.public_key
    # With nothing on the command line, the environment applies.
    assert _server_key(_args()) == other.public_key
    # An explicit key beats everything.
    assert _server_key(_args(server_key=pinned.public_key_text)) == pinned.public_key


def test_a_secured_listener_without_a_key_file_is_refused_naming_key_file(tmp_path: Path) -> None:
    (tmp_path / "authorized_keys").write_text("")
    raw = {"identity": "station@irf", "listen": [ENDPOINT], "authorized_keys": "authorized_keys"}
    with pytest.raises(ConfigError, match="key_file"):
        parse_config(raw, base=tmp_path)
    # Explicitly insecure (loopback tests) needs no key.
    parse_config({**raw, "insecure": True}, base=tmp_path)


def test_serve_refuses_a_config_without_listen_before_running_plugin_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "plugins").mkdir()
    ran = tmp_path / "plugin-ran"
    (tmp_path / "plugins" / "instrument.py").write_text(
        f"from pathlib import Path\nPath({str(ran)!r}).touch()\n"
    )
    config = tmp_path / "rain.toml"
    config.write_text('identity = "station@irf"\nplugins = "plugins"\ninsecure = true\n')
    assert main(["serve", str(config)]) == EXIT_USAGE
    assert f"{config}: listen: expected at least one endpoint" in capsys.readouterr().err
    assert not ran.exists()


def test_client_commands_do_not_import_the_server() -> None:
    # rain get/set/list/ping/monitor start faster without fastjsonschema, tomllib and the rest.
    check = "import sys, rain_envelopes.cli; assert 'rain_envelopes.server' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], check=True, timeout=60)


def test_the_config_refuses_an_allowlist_entry_the_transport_would_refuse(tmp_path: Path) -> None:
    # 10.0.0.1/8 has host bits set: the listener refuses it, so the config must too, at load.
    (tmp_path / "authorized_keys").write_text("")
    raw = {"identity": "station@irf", "listen": [ENDPOINT], "insecure": True,
           "allow": ["127.0.0.1/32", "10.0.0.1/8"]}
    with pytest.raises(ConfigError, match=r"allow\[1\]"):
        parse_config(raw, base=tmp_path)
    parse_config({**raw, "allow": ["127.0.0.1/32", "10.0.0.0/8", "::1"]}, base=tmp_path)


def test_transports_say_whether_they_need_keys() -> None:
    from rain_envelopes.transport import transport_factory

    assert transport_factory("tcp://127.0.0.1:1").secure
    assert transport_factory("ipc://rain-test").secure
    assert not transport_factory("memory://x").secure


def test_a_config_endpoint_no_transport_handles_is_refused_naming_it(tmp_path: Path) -> None:
    raw = {"identity": "station@irf", "listen": [ENDPOINT, "carrier-pigeon://loft"],
           "insecure": True}
    with pytest.raises(ConfigError, match=r"listen\[1\]"):
        parse_config(raw, base=tmp_path)

"""CLI and config decisions that need no subprocess: key precedence, config refusals."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from rain_envelopes.cli import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    _explain,
    _server_key,
    main,
)
from rain_envelopes.envelopes import Reason, ReasonCode
from rain_envelopes.errors import (
    ClientClosed,
    CommandFailed,
    ConfigError,
    ResponseTimeout,
    TransportSecurityError,
)
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


def _failure(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = main(argv)
    return status, capsys.readouterr().err


def test_a_link_that_opens_but_never_gives_a_session_is_reported_as_such(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A listener that accepts links and never answers: the link opens, the session never comes.
    import asyncio

    from rain_envelopes.transport import MEMORY

    listener = MEMORY.listen(["memory://cli-silent-server"])
    asyncio.run(listener.start())
    try:
        status, err = _failure(
            ["get", "memory://cli-silent-server", "knob", "-t", "0.3"], capsys
        )
    finally:
        asyncio.run(listener.close())
    assert status == EXIT_UNREACHABLE
    assert err == (
        "rain: error: the link to memory://cli-silent-server opened, but no session was"
        " established within 0.3 s: the link is slow or the server is busy; try a longer -t\n"
    )


def _security(message: str, cause: str) -> TransportSecurityError:
    error = TransportSecurityError(message)
    error.cause = cause
    return error


@pytest.mark.parametrize(
    ("error", "status", "says"),
    [
        # ZAP said no: definitive, and the transport's words say why.
        (_security("X refused us (ZAP status 400): our public key is not...", "refused"),
         EXIT_AUTH, "X refused us (ZAP status 400)"),
        # The server closed the connection mid-handshake: a wrong key, or a broken link.
        (_security("CURVE handshake with X failed: the server closed ...", "server-key"),
         EXIT_AUTH, "If the key is right, the link may instead have broken during the"
                    " handshake: try again"),
        (ClientClosed("the client is closed", _security("X refused us", "refused")),
         EXIT_AUTH, "X refused us"),
        (ResponseTimeout("no response to get /params/knob within 5 s"), EXIT_UNREACHABLE,
         "no response to get /params/knob within 5 s (the session was established"),
        (CommandFailed(Reason(ReasonCode.COMMAND_EXPIRED, "command expired at T")),
         EXIT_FAILED, "1001: command expired at T: not applied"),
    ],
)
def test_failures_are_explained_by_what_was_observed(
    error: BaseException, status: int, says: str
) -> None:
    explained = _explain(error, _args(timeout=5.0))
    assert explained.status == status
    assert says in str(explained)


@pytest.mark.parametrize("command", [["get", "k"], ["set", "k", "1"], ["monitor", "k"],
                                     ["list"], ["ping"]])
def test_every_client_command_has_the_dead_link_settings(command: list[str]) -> None:
    from rain_envelopes.cli import PING_INTERVAL, PING_TIMEOUT, build_parser

    name, *operands = command
    args = build_parser().parse_args([name, ENDPOINT, *operands])
    assert (args.ping_interval, args.ping_timeout) == (PING_INTERVAL, PING_TIMEOUT)
    # Noticed within about 6 s by default (issue 8, item 2).
    assert PING_INTERVAL + PING_TIMEOUT <= 6
    args = build_parser().parse_args(
        [name, ENDPOINT, *operands, "--ping-interval", "0", "--ping-timeout", "1.5"]
    )
    assert (args.ping_interval, args.ping_timeout) == (0.0, 1.5)
    for bad in (["--ping-interval", "-1"], ["--ping-timeout", "0"]):
        with pytest.raises(SystemExit) as stopped:
            build_parser().parse_args([name, ENDPOINT, *operands, *bad])
        assert stopped.value.code == EXIT_USAGE

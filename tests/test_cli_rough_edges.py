"""The rough edges a new user hit with `rain` (issue 10, item 5), one test each.

Each test was written against the behaviour the issue describes and failed on it: a missing
public-key file reported as bad base64, a `.pub` given as `--key` told to `chmod 600`, a server
that just stopped blamed on the pinned key, a `rain serve` that never said its process id, a
plugin's `sys.exit()` ending `rain serve` silently, a value that is not JSON reported as a type
error, an unknown schema type left unnamed, `[transport]` options checked only after the plugins
ran, `rain get URL ""` printing the whole list, "the session ended" said twice, and `rain
keygen` on an existing file exiting 2 where the docs say 4.

Most run `main()` in this process; the two that need a real process (`rain serve` and its
pid file, SIGHUP through it) start one on the in-process memory transport, which needs no keys
or ports.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rain_envelopes.cli import EXIT_AUTH, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, _explain, main
from rain_envelopes.errors import ChannelClosed
from rain_envelopes.keys import Identity
from tests.serverprocess import rain_env


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    folder.mkdir()
    Identity.generate().save(folder / "alice.key")
    Identity.generate().save(folder / "station.key")
    return folder


# ------------------------------------------------------------------------------ key arguments


def test_a_server_key_path_that_does_not_exist_is_named_as_a_missing_file(
    keys: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = keys / "station.pub"  # the real one is station.key.pub
    common = ["get", "tcp://127.0.0.1:1", "temperature", "-k", str(keys / "alice.key")]
    status, _, err = _run([*common, "--server-key", str(missing)], capsys)
    assert status == EXIT_AUTH
    assert f"--server-key: public key file {missing} does not exist" in err
    assert "base64" not in err

    monkeypatch.setenv("RAIN_SERVER_KEY", str(missing))
    status, _, err = _run(common, capsys)
    assert status == EXIT_AUTH
    assert f"RAIN_SERVER_KEY: public key file {missing} does not exist" in err

    # Key text still works, with or without the ed25519: prefix; a bad one says what is wrong.
    status, _, err = _run([*common, "--server-key", "ed25519:AAAA"], capsys)
    assert status == EXIT_AUTH
    assert "decodes to 3 bytes" in err


def test_authorize_names_a_public_key_file_that_does_not_exist(
    keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = keys.parent / "authorized_keys"
    status, _, err = _run(["authorize", str(table), str(keys / "alice.pub"), "alice@irf"], capsys)
    assert status == EXIT_AUTH
    assert f"PUBLIC_KEY: public key file {keys / 'alice.pub'} does not exist" in err
    assert not table.exists()


@pytest.mark.parametrize("mode", [0o644, 0o600])
def test_a_public_key_file_given_as_key_is_called_a_public_key(
    keys: Path, capsys: pytest.CaptureFixture[str], mode: int
) -> None:
    public = keys / "alice.key.pub"
    public.chmod(mode)
    status, _, err = _run(
        ["get", "tcp://127.0.0.1:1", "temperature", "-k", str(public),
         "--server-key", str(keys / "station.key.pub")],
        capsys,
    )
    assert status == EXIT_AUTH
    assert f"{public} is a public key file" in err
    assert f"the secret key file is {keys / 'alice.key'}" in err
    assert "chmod" not in err


# ------------------------------------------------------------------------------ connecting


@pytest.fixture
def stopping_server() -> Iterator[int]:
    """A port whose one TCP connection is reset mid-handshake, after which nothing listens:
    what a client sees of a server that stops while it connects."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        listener.close()
        with conn:
            conn.recv(64)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    listener.close()
    thread.join(5)


def test_a_server_that_stopped_during_the_handshake_is_not_blamed_on_the_key(
    keys: Path, stopping_server: int, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"tcp://127.0.0.1:{stopping_server}"
    status, _, err = _run(
        ["get", endpoint, "temperature", "-k", str(keys / "alice.key"),
         "--server-key", str(keys / "station.key.pub"), "-t", "5"],
        capsys,
    )
    assert status == EXIT_UNREACHABLE, err
    assert "closed the connection during the secure handshake" in err
    assert f"nothing listens at 127.0.0.1:{stopping_server} now" in err
    assert "pinned server key" not in err


def test_the_session_ended_is_said_once() -> None:
    args = argparse.Namespace(endpoint="tcp://127.0.0.1:4505", timeout=5.0)
    assert str(_explain(ChannelClosed("the session ended"), args)) == (
        "tcp://127.0.0.1:4505: the session ended"
    )
    explained = str(_explain(ChannelClosed("the session ended: 13: key revoked"), args))
    assert explained == "tcp://127.0.0.1:4505: the session ended: 13: key revoked"


# ------------------------------------------------------------------------------ arguments


@pytest.mark.parametrize("value", ["[1,2", '{"a": 1', '"unclosed'])
def test_a_value_that_is_broken_json_is_reported_as_not_json(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = _run(["set", "memory://rain-nobody", "knob", value], capsys)
    assert status == EXIT_USAGE
    assert f"VALUE {value!r} is not valid JSON" in err
    assert "--string" in err


@pytest.mark.parametrize("command", [["get"], ["monitor"], ["set"]])
def test_an_empty_parameter_name_is_a_usage_error(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    value = ["1"] if command == ["set"] else []
    status, out, err = _run([*command, "memory://rain-nobody", " ", *value], capsys)
    assert status == EXIT_USAGE
    assert "empty parameter name" in err
    assert out == ""


def test_keygen_refusing_to_overwrite_exits_4_as_documented(
    keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = _run(["keygen", "alice@irf", "-o", str(keys / "alice.key")], capsys)
    assert status == EXIT_AUTH
    assert "already exists; pass --force" in err
    cli_md = (Path(__file__).resolve().parents[1] / "docs" / "reference" / "cli.md").read_text()
    assert "existing files are never overwritten (exit status 4)" in cli_md


# ------------------------------------------------------------------------------ serve


def _memory_config(folder: Path, plugin: str, extra: str = "") -> Path:
    (folder / "plugins").mkdir()
    (folder / "plugins" / "instrument.py").write_text(plugin)
    config = folder / "rain.toml"
    config.write_text(
        'identity = "station@irf"\nlisten = ["memory://rain-rough-edges"]\ninsecure = true\n'
        f'plugins = "plugins"\n{extra}'
    )
    return config


@pytest.mark.parametrize(("call", "says"), [
    ("sys.exit(3)", "called sys.exit(3)"),
    ("sys.exit()", "called sys.exit()"),
    ("sys.exit('no hardware')", "called sys.exit('no hardware')"),
])
def test_a_plugin_that_exits_at_import_is_reported_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], call: str, says: str
) -> None:
    config = _memory_config(tmp_path, f"import sys\n\n{call}\n")
    status, _, err = _run(["serve", str(config)], capsys)
    assert status == EXIT_USAGE
    assert f"{tmp_path / 'plugins' / 'instrument.py'}:3" in err
    assert says in err


def test_an_unknown_schema_type_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = (
        "from rain_envelopes.server import Parameter\n"
        "knob = Parameter('knob', value=1, writable=True,\n"
        "                 schema={'type': 'object', 'properties': {'n': {'type': 'integr'}}})\n"
    )
    status, _, err = _run(["serve", str(_memory_config(tmp_path, plugin))], capsys)
    assert status == EXIT_USAGE
    assert "unknown type 'integr' at properties.n.type; did you mean 'integer'?" in err


def test_transport_options_are_checked_before_any_plugin_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = tmp_path / "plugin-ran"
    config = _memory_config(
        tmp_path, f"from pathlib import Path\nPath({str(ran)!r}).touch()\n",
        "[transport]\nbogus = 1\n",
    )
    config.write_text(config.read_text().replace("memory://rain-rough-edges", "tcp://127.0.0.1:0"))
    status, _, err = _run(["serve", str(config)], capsys)
    assert status == EXIT_USAGE
    assert f"{config}: transport: unknown transport option 'bogus'" in err
    assert not ran.exists()


@pytest.mark.timeout(60)
def test_serve_says_its_process_id_and_writes_a_pid_file_that_reload_can_use(
    tmp_path: Path,
) -> None:
    config = _memory_config(tmp_path, "from rain_envelopes.server import Parameter\n"
                                      "knob = Parameter('knob', value=1)\n")
    (tmp_path / "authorized_keys").write_text("")
    pid_file = tmp_path / "run" / "rain.pid"
    process = subprocess.Popen(
        [sys.executable, "-m", "rain_envelopes.cli", "serve", str(config),
         "--pid-file", str(pid_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=rain_env(),
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # bounded by the test's timeout
        assert f"(1 parameter, process {process.pid})" in line, line
        assert pid_file.read_text() == f"{process.pid}\n"
        # What the docs say to do to reload the keys: the server logs the reload and lives on.
        os.kill(int(pid_file.read_text()), signal.SIGHUP)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == EXIT_OK, err
    assert "shutting down" in out
    assert not pid_file.exists()  # removed at a clean exit


def test_serve_refuses_a_pid_file_it_cannot_write_before_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _memory_config(tmp_path, "")
    blocker = tmp_path / "file"
    blocker.write_text("")
    status, out, err = _run(["serve", str(config), "--pid-file", str(blocker / "rain.pid")], capsys)
    assert status == EXIT_USAGE
    assert f"--pid-file: cannot write {blocker / 'rain.pid'}" in err
    assert "serving" not in out


# ------------------------------------------------------------------------------ the checkout


def test_the_files_the_tutorial_makes_are_ignored_by_git() -> None:
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    station = "examples/weather_station"
    made = [f"{station}/keys/station.key", f"{station}/keys/station.key.pub",
            f"{station}/keys/alice.key", f"{station}/authorized_keys", f"{station}/rain.pid",
            f"{station}/state.db", f"{station}/known_hosts"]
    shipped = [f"{station}/rain.toml", f"{station}/plugins/weather.py"]
    done = subprocess.run(["git", "check-ignore", "--no-index", *made, *shipped],
                          cwd=root, capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == made, done.stderr

"""Every example in ``examples/`` runs, against real servers on loopback, as its text says.

Each test works in a scratch copy of the example (so keys and state never land in the
checkout), with fresh keys made by ``rain keygen`` and servers on ephemeral ports of 127.0.0.1:
a config's fixed port is rewritten to port 0 and the port the server reports is used.

- ``two_sites/run.py``: both servers start with their own keys and configs, the monitoring
  client gets updates from each, and Ctrl-C stops everything cleanly (exit 0);
- ``watch_many.py``: a server that is down does not hold up the others, and its updates start
  when it comes up;
- ``weather_station/watch.py`` (the tutorial's): keeps watching through a server restart and
  says the server restarted;
- ``blocking_script.py``: the blocking API against the weather station;
- ``first_session.py`` is run by ``tests/test_docs.py`` (its output is the tutorial's).

:func:`test_every_example_is_run_by_a_test` fails when an example script appears that no test
runs, and :func:`test_every_example_file_ships_in_the_wheel` when pyproject's package-data
patterns would leave one of its files out of ``rain_envelopes.examples``.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from rain_envelopes import AuthorizedKeys, Identity
from tests.outputlines import OutputLines
from tests.serverprocess import ServerProcess, rain_env

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
RUN_TIMEOUT = 90.0

#: Every example script, and the test that runs it.
RUN_BY = {
    "first_session.py": "test_first_session_example_runs_as_the_tutorial_says",
    "watch_many.py": "test_watch_many_waits_for_a_server_that_is_down",
    "blocking_script.py": "test_blocking_script_reads_sets_and_watches",
    "two_sites/run.py": "test_two_sites_run_watches_both_sites",
    "weather_station/watch.py": "test_weather_station_watch_script_follows_the_server",
}
#: What a run leaves in an example folder (examples/.gitignore ignores it too).
_LEFT_BY_RUNS = shutil.ignore_patterns(
    "keys", "authorized_keys", "known_hosts", "*.pid", "*.db*", "__pycache__"
)


def _env() -> dict[str, str]:
    return {**rain_env(), "PYTHONPATH": str(ROOT)}


def _copy_examples(tmp_path: Path) -> Path:
    copy = tmp_path / "examples"
    shutil.copytree(EXAMPLES, copy, ignore=_LEFT_BY_RUNS)
    return copy


def _listen_on(config: Path, port: int | str) -> None:
    """Point the config's one loopback listen endpoint at ``port``."""
    text = config.read_text("utf-8")
    changed = re.sub(r"tcp://127\.0\.0\.1:\d+", f"tcp://127.0.0.1:{port}", text)
    assert changed.count("tcp://127.0.0.1:") == 1, text
    config.write_text(changed, "utf-8")


def _weather_site(examples: Path) -> Path:
    """The tutorial's folder with its keys made and alice authorised, listening on port 0.

    The keys are made in this process (what ``rain keygen`` and ``rain authorize`` write, which
    the tutorial's own test types out): three interpreters fewer per test."""
    site = examples / "weather_station"
    (site / "keys").mkdir()
    Identity.generate().save(site / "keys" / "station.key")
    alice = Identity.generate()
    alice.save(site / "keys" / "alice.key")
    AuthorizedKeys.from_mapping({alice.public_key_text: "alice@irf"}).save(
        site / "authorized_keys"
    )
    _listen_on(site / "rain.toml", 0)
    return site


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Lines(OutputLines):
    """A child process whose standard output is read line by line as it comes."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        super().__init__(subprocess.Popen(
            args, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        ))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


# ------------------------------------------------------------------------------ coverage


def test_every_example_is_run_by_a_test() -> None:
    scripts = sorted(
        path.relative_to(EXAMPLES).as_posix() for path in EXAMPLES.rglob("*.py")
        if path.name != "__init__.py" and "plugins" not in path.parts
        and "__pycache__" not in path.parts
    )
    assert scripts == sorted(RUN_BY), "add the new example to RUN_BY, with a test that runs it"
    defined: set[str] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        defined.update(re.findall(r"^def (test_\w+)\(", path.read_text("utf-8"), re.M))
    assert not [test for test in RUN_BY.values() if test not in defined]


def test_every_example_file_ships_in_the_wheel() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["rain_envelopes.examples"]
    files = [
        path.relative_to(EXAMPLES).as_posix() for path in EXAMPLES.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
        and not _LEFT_BY_RUNS(str(path.parent), [path.name])
        and not any(part in ("keys", "operator") for part in path.relative_to(EXAMPLES).parts)
        and path.name != ".gitignore"
    ]
    # setuptools globs: '*' does not cross a '/'.
    left_out = [
        name for name in files
        if not any(
            fnmatch.fnmatch(name, pattern) and name.count("/") == pattern.count("/")
            for pattern in patterns
        )
    ]
    assert not left_out, f"not in pyproject's package-data for rain_envelopes.examples: {left_out}"


# ------------------------------------------------------------------------------ the examples


@pytest.mark.timeout(RUN_TIMEOUT + 30)
def test_two_sites_run_watches_both_sites(tmp_path: Path) -> None:
    examples = _copy_examples(tmp_path)
    sites = examples / "two_sites"
    for folder in ("kiruna", "abisko"):
        _listen_on(sites / folder / "rain.toml", 0)
    # As the README runs it: until Ctrl-C, which reaches the whole process group.
    run = subprocess.Popen(
        [sys.executable, str(sites / "run.py")], cwd=tmp_path, env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert run.stdout is not None
        lines: list[str] = []
        endpoints: dict[str, str] = {}
        updates: dict[str, list[str]] = {}
        deadline = time.monotonic() + RUN_TIMEOUT
        # Read until each site has sent two updates (the reads end when run.py exits).
        while len(updates) < 2 or min(len(names) for names in updates.values()) < 2:
            assert time.monotonic() < deadline, lines
            line = run.stdout.readline()
            assert line, f"run.py ended early: {lines} {run.stderr.read() if run.stderr else ''}"
            lines.append(line.rstrip("\n"))
            found = re.match(r"(\w+): serving (\S+) on (tcp://127\.0\.0\.1:\d+)", line)
            if found:
                endpoints[found[3]] = found[2]
            fields = line.rstrip("\n").split("  ")
            if len(fields) == 3 and fields[0] in endpoints and fields[1] != "link":
                updates.setdefault(endpoints[fields[0]], []).append(fields[1])
        os.killpg(run.pid, signal.SIGINT)
        rest, errors = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(timeout=10)
    assert run.returncode == 0, "\n".join(lines) + rest + errors
    assert set(updates) == {"magnetometer@kiruna", "station@abisko"}
    assert set(updates["magnetometer@kiruna"]) == {"field_nT"}
    assert set(updates["station@abisko"]) <= {"temperature", "storm_alert"}
    # Ctrl-C: the client closed both sessions and both servers shut down cleanly.
    for endpoint in endpoints:
        assert f"{endpoint}  link  closed" in rest.splitlines(), rest
    assert rest.splitlines()[-1] == "both servers stopped; the client exited 0", rest + errors
    assert "exited with status" not in errors
    # Each site and the operator got their own keys, secret ones readable by the owner only.
    for key in ("kiruna/keys/magnetometer.key", "abisko/keys/station.key",
                "operator/keys/alice.key"):
        assert (sites / key).stat().st_mode & 0o777 == 0o600, key
    alice = (sites / "operator" / "keys" / "alice.key.pub").read_text("utf-8").split()[0]
    for folder in ("kiruna", "abisko"):
        assert f"{alice} alice@irf" in (sites / folder / "authorized_keys").read_text("utf-8")


@pytest.mark.timeout(RUN_TIMEOUT + 30)
def test_watch_many_waits_for_a_server_that_is_down(tmp_path: Path) -> None:
    examples = _copy_examples(tmp_path)
    site = _weather_site(examples)
    up = ServerProcess(site / "rain.toml", tmp_path / "up.log")
    # A second server with its own key, not started yet, on a port chosen now.
    second = examples / "second"
    shutil.copytree(site, second, ignore=shutil.ignore_patterns("keys"))
    (second / "keys").mkdir()
    Identity.generate().save(second / "keys" / "station.key")
    _listen_on(second / "rain.toml", _free_port())
    (second / "rain.toml").write_text(
        (second / "rain.toml").read_text("utf-8").replace(
            'plugins = "plugins"', f'plugins = "{site / "plugins"}"'
        ), "utf-8",
    )
    later = re.search(r"tcp://127\.0\.0\.1:\d+", (second / "rain.toml").read_text("utf-8"))
    assert later
    watch = Lines([
        sys.executable, str(examples / "watch_many.py"), "--key", "keys/alice.key",
        "--server", up.endpoint, "keys/station.key.pub", "temperature",
        "--server", later[0], str(second / "keys" / "station.key.pub"), "pressure",
        "--count", "2",
    ], cwd=site)
    down: ServerProcess | None = None
    try:
        watch.wait_for(rf"^{re.escape(up.endpoint)}  temperature  -?\d", count=2)
        assert not [line for line in watch.lines if line.startswith(later[0] + "  pressure")]
        down = ServerProcess(second / "rain.toml", tmp_path / "down.log")
        assert watch.process.wait(timeout=60) == 0, watch.lines
        watch.wait_for(rf"^{re.escape(later[0])}  link  established")
        watch.wait_for(rf"^{re.escape(later[0])}  pressure  \d", count=2)
    finally:
        watch.stop()
        assert up.stop() == 0
        if down is not None:
            assert down.stop() == 0


@pytest.fixture
def weather_station(tmp_path: Path) -> Iterator[tuple[Path, ServerProcess]]:
    site = _weather_site(_copy_examples(tmp_path))
    server = ServerProcess(site / "rain.toml", tmp_path / "server.log")
    try:
        yield site, server
    finally:
        server.stop()


@pytest.mark.timeout(RUN_TIMEOUT + 30)
def test_blocking_script_reads_sets_and_watches(
    weather_station: tuple[Path, ServerProcess],
) -> None:
    site, server = weather_station
    done = subprocess.run(
        [sys.executable, "../blocking_script.py", server.endpoint, "--interval", "0.2",
         "--updates", "3"],
        cwd=site, env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout.splitlines()
    assert any(line.startswith("temperature ") for line in out), out
    assert any(re.fullmatch(r"temperature: -?\d+(\.\d+)?", line) for line in out), out
    assert "sampling_interval: 0.2" in out
    assert len([line for line in out if re.match(r"\d{4}-\d\d-\d\dT\S+Z -?\d", line)]) == 3


@pytest.mark.timeout(RUN_TIMEOUT + 30)
def test_weather_station_watch_script_follows_the_server(
    weather_station: tuple[Path, ServerProcess], tmp_path: Path,
) -> None:
    site, server = weather_station
    # The script names the tutorial's port; point it (and, for the restart, the config) at
    # the port the server got.
    script = (site / "watch.py").read_text("utf-8")
    assert "tcp://127.0.0.1:4505" in script
    (site / "watch.py").write_text(
        script.replace("127.0.0.1:4505", f"127.0.0.1:{server.port}"), "utf-8"
    )
    _listen_on(site / "rain.toml", server.port)
    watch = Lines([sys.executable, "watch.py"], cwd=site)
    again: ServerProcess | None = None
    try:
        sample = r"^\d{4}-\d\d-\d\dT\S+Z -?\d+(\.\d+)? "
        watch.wait_for(sample)
        assert server.stop() == 0
        watch.wait_for(r"^link: lost")
        again = ServerProcess(site / "rain.toml", tmp_path / "again.log")
        watch.wait_for(r"^link: established")
        watch.wait_for(sample + r" ?\(the server restarted\)$")
    finally:
        watch.stop()
        if again is not None:
            assert again.stop() == 0

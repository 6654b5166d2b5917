"""The README cannot drift: its commands are CI's, its links resolve, its programs run.

- The first two code blocks are the two commands, the second exactly what ``.ci/run`` runs.
- Every relative link points at a file of the repository.
- Both programs of the tour run against the tutorial's weather station (a scratch copy, fresh
  keys, an ephemeral loopback port in place of 4505): each prints the value it read, sets the
  sampling interval and then prints subscription updates, until interrupted as a reader would.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverprocess import ServerProcess, rain_env
from tests.test_examples import Lines, _copy_examples, _weather_site

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text("utf-8")
_BLOCK = re.compile(r"```(?P<language>\w*)\n(?P<code>.*?)```", re.DOTALL)
_LINK = re.compile(r"\]\((?P<target>[^)#\s]+)(?:#[^)]*)?\)")


def _python_blocks() -> list[str]:
    return [match["code"] for match in _BLOCK.finditer(README) if match["language"] == "python"]


def test_the_two_commands_come_first_and_the_second_is_ci() -> None:
    first, second = [match["code"].strip() for match in _BLOCK.finditer(README)][:2]
    assert first == "pip install . && rain demo"
    assert second == 'pip install -e ".[test]" && ruff check . && mypy && pytest'
    ci = (ROOT / ".ci" / "run").read_text("utf-8").strip().splitlines()
    assert ci[-1] == second


def test_relative_links_resolve() -> None:
    broken = [
        match["target"] for match in _LINK.finditer(README)
        if "://" not in match["target"] and not (ROOT / match["target"]).exists()
    ]
    assert not broken, f"README links to missing files: {broken}"


def test_the_tour_says_where_the_server_key_comes_from() -> None:
    for code in _python_blocks():
        assert "station.key.pub" in code, code


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, ServerProcess]]:
    folder = tmp_path_factory.mktemp("readme")
    site = _weather_site(_copy_examples(folder))
    server = ServerProcess(site / "rain.toml", folder / "server.log")
    try:
        yield site, server
    finally:
        assert server.stop() == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("index", range(2), ids=["async", "blocking"])
def test_tour_programs_run_against_the_weather_station(
    index: int, station: tuple[Path, ServerProcess]
) -> None:
    blocks = _python_blocks()
    assert len(blocks) == 2, "a new README program needs a case here"
    site, server = station
    program = blocks[index]
    assert "127.0.0.1:4505" in program
    (site / "tour.py").write_text(
        program.replace("127.0.0.1:4505", f"127.0.0.1:{server.port}"), "utf-8"
    )
    tour = Lines([sys.executable, "tour.py"], cwd=site)
    try:
        # The value read, then at least two updates: the set and the subscription worked
        # (each program sets the interval the other set too, so the check below holds).
        tour.wait_for(r"^-?\d+(\.\d+)?$", timeout=60, count=3)
        assert tour.process.poll() is None, tour.lines
        done = subprocess.run(
            [sys.executable, "-m", "rain_envelopes", "get", server.endpoint, "sampling_interval",
             "--key", "keys/alice.key", "--server-key", "keys/station.key.pub"],
            cwd=site, env={**rain_env(), "PYTHONPATH": str(ROOT)}, capture_output=True,
            text=True, timeout=60, check=False,
        )
        assert done.stdout.strip() == "sampling_interval 0.5", done.stdout + done.stderr
    finally:
        tour.stop()

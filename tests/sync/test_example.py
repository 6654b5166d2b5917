"""examples/blocking_script.py, run as a user runs it, against the example weather station
(``rain serve`` of examples/weather_station in a child process, on loopback with fresh keys).

It must list the parameters, read two, set the sampling interval, print the next temperatures
and exit 0 with nothing on standard error; with a key the server does not know, it must say
so and exit 4.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..adversarial.live import LiveServer, make_site
from ..serverprocess import rain_env

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "blocking_script.py"


@pytest.mark.timeout(60)
def test_the_blocking_script_against_the_weather_station(tmp_path: Path) -> None:
    site = make_site(tmp_path)
    site.alice.save(tmp_path / "alice.key")
    site.stranger.save(tmp_path / "stranger.key")
    server = LiveServer(site.config, tmp_path / "server.log")
    try:
        command = [
            sys.executable, "-W", "default", str(SCRIPT), server.endpoint,
            "--key", str(tmp_path / "alice.key"),
            "--server-key", str(tmp_path / "station.key.pub"),
            "--interval", "0.2", "--updates", "3",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=40,
                              env=rain_env(), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        lines = done.stdout.splitlines()
        names = [line.split()[0] for line in lines[:5]]
        assert names == ["pressure", "sampling_interval", "simulate_storm", "storm_alert",
                         "temperature"]
        assert lines[5].startswith("temperature: ")
        float(lines[5].split()[1])
        assert lines[6].startswith("pressure: ")
        assert lines[7] == "sampling_interval: 0.2"
        readings = lines[8:]
        assert len(readings) == 3, lines
        for reading in readings:
            timestamp, value = reading.split()[:2]
            assert timestamp.endswith("Z")
            float(value)

        # A key the server never heard of: refused, said so, exit status 4.
        command[command.index("--key") + 1] = str(tmp_path / "stranger.key")
        refused = subprocess.run(command, capture_output=True, text=True, timeout=40,
                                 env=rain_env(), cwd=tmp_path)
        assert refused.returncode == 4, refused.stderr
        # (The client's own warning, through logging's last resort, may come first.)
        assert refused.stderr.splitlines()[-1].startswith("gave up: "), refused.stderr
        assert "not in the server's authorised keys" in refused.stderr
        assert refused.stdout == ""
    finally:
        server.stop()

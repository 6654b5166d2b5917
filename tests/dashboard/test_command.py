"""`rain dashboard` and `rain serve --metrics` as a user runs them: child processes, real keys on
disk, the URL and the metrics address read from what they print."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import aiohttp
import pytest

from tests.serverprocess import rain_env
from tests.test_cli import _zmq_available, make_site

pytestmark = [
    pytest.mark.skipif(not _zmq_available(), reason="no ZMQ transport"),
    pytest.mark.timeout(60),
]


async def _line(stream: IO[str] | None, timeout: float = 20.0) -> str:
    assert stream is not None
    line = await asyncio.wait_for(asyncio.to_thread(stream.readline), timeout)
    assert line, "the process closed its output"
    return line


def _rain(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rain_envelopes.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=rain_env(),
    )


async def test_the_dashboard_command_serves_the_station_and_serve_exposes_metrics(
    tmp_path: Path,
) -> None:
    site = make_site(tmp_path)
    server = _rain("serve", str(site.folder / "rain.toml"), "--metrics", "0")
    dashboard: subprocess.Popen[str] | None = None
    try:
        serving = await _line(server.stdout)
        found = re.search(r"serving \S+ on (tcp://\S+)", serving)
        assert found, serving
        endpoint = found.group(1)
        metrics_line = await _line(server.stdout)
        assert metrics_line.startswith("rain: metrics at http://127.0.0.1:"), metrics_line
        metrics_url = metrics_line.split(" at ", 1)[1].strip()

        dashboard = _rain("dashboard", endpoint, "--port", "0", "--json", *site.client("alice"))
        printed = json.loads(await _line(dashboard.stdout))
        assert printed["servers"] == [endpoint]
        url = printed["url"]
        base = url.split("/?", 1)[0]
        assert base.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            async with http.get(base + "/") as response:
                assert response.status == 403
            async with http.get(url, allow_redirects=False) as response:
                assert response.status == 303
                cookie = response.headers["Set-Cookie"].split(";", 1)[0]
            async with http.get(base + "/", headers={"Cookie": cookie}) as response:
                assert response.status == 200
                assert "<title>RAIN dashboard</title>" in await response.text()
            # The dashboard connected as alice and subscribed: a sample reaches its websocket.
            async with http.ws_connect(base + "/ws", headers={"Cookie": cookie,
                                                              "Origin": base}) as ws:
                async with asyncio.timeout(20):
                    async for message in ws:
                        events = json.loads(message.data)
                        servers = [e for e in events if e["t"] == "hello"]
                        if any(s["last"] for h in servers for s in h["servers"]) or any(
                            e["t"] == "sample" for e in events
                        ):
                            break
            async with http.get(metrics_url) as response:
                assert response.status == 200
                scraped = await response.text()
        assert 'rain_commands_total{method="subscribe",outcome="success"}' in scraped
        assert "rain_sessions_established_total 1.0" in scraped
        assert "rain_handshakes_refused_total 1.0" in scraped  # the listener's own self-test
        dashboard.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(dashboard.wait, 15) == 0
    finally:
        for process in (dashboard, server):
            if process is None:
                continue
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(process.wait, 10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    await asyncio.to_thread(process.wait, 5)
            if process.stdout is not None:
                process.stdout.close()

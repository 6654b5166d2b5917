"""The dashboard's HTTP and websocket side without a browser: the token on every route, the
websocket's Origin check, what a set from the page may reach, refusals passed on as they are,
bounded outboxes, and the loopback-only default."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rain_envelopes import ReasonCode
from rain_envelopes.cli import EXIT_USAGE, main
from rain_envelopes.dashboard import Hub
from rain_envelopes.dashboard.web import Dashboard, _Outbox, cookie_name

from .conftest import Station, running_dashboard

ROUTES = ["/", "/dashboard.js", "/dashboard.css", "/ws", "/no-such-page", "/static/x"]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # No cookie jar: each test says exactly which cookie it sends.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def _status(http: aiohttp.ClientSession, url: str, **kw: Any) -> int:
    async with http.get(url, allow_redirects=False, **kw) as response:
        return response.status


async def test_every_route_needs_the_token(
    dashboard: Dashboard, http: aiohttp.ClientSession
) -> None:
    base = dashboard.base_url
    wrong = "x" * len(dashboard.token)
    for route in ROUTES:
        assert await _status(http, base + route) == 403, route
        assert await _status(http, f"{base}{route}?token={wrong}") == 403, route
        assert await _status(http, base + route,
                             cookies={cookie_name(dashboard.token): wrong}) == 403, route
        # Someone else's dashboard's cookie is not this one's.
        assert await _status(http, base + route, cookies={cookie_name(wrong): wrong}) == 403
    good = {cookie_name(dashboard.token): dashboard.token}
    for route in ("/", "/dashboard.js", "/dashboard.css"):
        async with http.get(base + route, cookies=good) as response:
            assert response.status == 200, route
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
            assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert await _status(http, base + "/no-such-page", cookies=good) == 404


async def test_the_first_load_moves_the_token_to_a_cookie(
    dashboard: Dashboard, http: aiohttp.ClientSession
) -> None:
    async with http.get(dashboard.url, allow_redirects=False) as response:
        assert response.status == 303
        assert response.headers["Location"] == "/"
        cookie = response.cookies[cookie_name(dashboard.token)]
        assert cookie.value == dashboard.token
        assert cookie["httponly"]
        assert cookie["samesite"] == "Strict"
        assert not cookie["secure"]  # plain http on loopback; https sets it


async def _ws(
    http: aiohttp.ClientSession, dashboard: Dashboard, origin: str | None
) -> aiohttp.ClientWebSocketResponse:
    headers = {"Cookie": f"{cookie_name(dashboard.token)}={dashboard.token}"}
    if origin:
        headers["Origin"] = origin
    return await http.ws_connect(dashboard.base_url + "/ws", headers=headers)


async def test_the_websocket_checks_token_and_origin(
    dashboard: Dashboard, http: aiohttp.ClientSession
) -> None:
    for origin in ("http://evil.example", None, "null", f"http://127.0.0.1:{dashboard.port + 1}",
                   f"https://127.0.0.1:{dashboard.port}"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await _ws(http, dashboard, origin)
        assert refused.value.status == 403, origin
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(dashboard.base_url + "/ws",
                              headers={"Origin": dashboard.base_url})  # no token
    assert refused.value.status == 403
    for origin in (dashboard.base_url, f"http://localhost:{dashboard.port}"):
        ws = await _ws(http, dashboard, origin)
        hello = await _next(ws, "hello")
        assert hello["servers"][0]["endpoint"] == dashboard.hub.stations["s0"].endpoint
        await ws.close()


async def _next(ws: aiohttp.ClientWebSocketResponse, kind: str, **match: Any) -> dict[str, Any]:
    async with asyncio.timeout(10):
        async for message in ws:
            for event in json.loads(message.data):
                if event["t"] == kind and all(event.get(k) == v for k, v in match.items()):
                    return dict(event)
    raise AssertionError(f"the websocket closed before a {kind} event")


async def test_sets_over_the_websocket_are_the_servers_to_refuse(
    station: Station, http: aiohttp.ClientSession
) -> None:
    # Bob may read but not set (the example's access rules): the server refuses, and the
    # page gets its code and reason as they are.
    async with running_dashboard(station.spec(station.bob)) as dashboard:
        ws = await _ws(http, dashboard, dashboard.base_url)
        await _next(ws, "params")  # the list, as bob may see it
        await ws.send_json({"t": "set", "id": 1, "s": "s0", "n": "sampling_interval", "v": 1})
        refused = await _next(ws, "set-result", id=1)
        assert refused["ok"] is False
        assert refused["code"] == ReasonCode.AUTHORIZATION_PERMISSION_REQUIRED
        assert refused["reason"]
        # A name the server did not list never reaches it, nor does any other URI.
        await ws.send_json({"t": "set", "id": 2, "s": "s0", "n": "../ping", "v": 1})
        assert "lists no parameter" in (await _next(ws, "set-result", id=2))["reason"]
        await ws.send_json({"t": "set", "id": 3, "s": "s9", "n": "x", "v": 1})
        assert "no server" in (await _next(ws, "set-result", id=3))["reason"]
        await ws.send_json({"t": "set", "id": 4, "s": "s0", "n": "sampling_interval"})
        assert "value" in (await _next(ws, "set-result", id=4))["reason"]
        await ws.send_str("not json")
        assert (await _next(ws, "error"))["reason"] == "not JSON"
        await ws.send_json({"t": "get", "uri": "/params"})
        assert "set" in (await _next(ws, "error"))["reason"]
        await ws.close()
    async with station.client() as alice:
        assert (await alice.get("/params/sampling_interval")).resource["value"] == 2.0


def test_the_outbox_drops_samples_first_and_counts_them() -> None:
    outbox = _Outbox(maxlen=3)
    outbox.put({"t": "state"})
    for seq in range(5):
        outbox.put({"t": "sample", "seq": seq})
    batch = outbox.take()
    assert batch[0] == {"t": "page-dropped", "n": 3}
    assert [e.get("seq") for e in batch[1:]] == [None, 3, 4]
    assert outbox.take() == []


async def test_loopback_only_unless_asked_and_then_tls(station: Station) -> None:
    with pytest.raises(ValueError, match="--allow-remote"):
        Dashboard(Hub([station.spec()]), host="0.0.0.0")
    with pytest.raises(ValueError, match="TLS"):
        Dashboard(Hub([station.spec()]), host="0.0.0.0", allow_remote=True)
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        Dashboard(Hub([station.spec()]), host=host)  # no error


def test_the_command_refuses_unsafe_or_unclear_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "me.key"
    assert main(["keygen", "me@irf", "-o", str(key)]) == 0
    server_key = f"{key}.pub"
    common = ["-k", str(key), "--server-key", server_key]
    assert main(["dashboard", "tcp://127.0.0.1:1", "--host", "0.0.0.0", *common]) == EXIT_USAGE
    assert "--allow-remote" in capsys.readouterr().err
    assert main(["dashboard", "tcp://127.0.0.1:1", "--host", "0.0.0.0", "--allow-remote",
                 *common]) == EXIT_USAGE
    assert "TLS" in capsys.readouterr().err
    assert main(["dashboard", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", *common]) == EXIT_USAGE
    assert "--known-hosts" in capsys.readouterr().err
    assert main(["dashboard", "tcp://127.0.0.1:1", "--certfile", server_key, *common]) == (
        EXIT_USAGE)
    assert "both" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl to make a certificate")
async def test_tls_when_asked(station: Station, tmp_path: Path) -> None:
    import ssl

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await asyncio.to_thread(subprocess.run, [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj",
        "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
    ], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with running_dashboard(station.spec(), ssl_context=context) as dashboard:
        assert dashboard.url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            async with http.get(dashboard.url, ssl=trust, allow_redirects=False) as response:
                assert response.status == 303
                assert response.cookies[cookie_name(dashboard.token)]["secure"]
            async with http.get(dashboard.base_url + "/", ssl=trust) as response:
                assert response.status == 403


def test_the_rain_command_imports_neither_aiohttp_nor_prometheus() -> None:
    # The extras are optional: `rain --help` and every other command must work without them.
    code = ("import sys, rain_envelopes.cli as c, rain_envelopes.dashboard, rain_envelopes.metrics;"
            " c.build_parser();"
            " print(sorted(m for m in ('aiohttp', 'prometheus_client') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, check=True)
    assert done.stdout.strip() == "[]"


def test_without_aiohttp_the_command_names_the_extra() -> None:
    code = ("import sys; sys.modules['aiohttp'] = None; from rain_envelopes.cli import main;"
            " sys.exit(main(['dashboard', 'tcp://127.0.0.1:1', '--insecure']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == EXIT_USAGE
    assert "pip install 'rain-envelopes[dashboard]'" in done.stderr


async def test_an_oversized_message_closes_that_pages_link(
    dashboard: Dashboard, http: aiohttp.ClientSession
) -> None:
    ws = await _ws(http, dashboard, dashboard.base_url)
    await _next(ws, "hello")
    await ws.send_str(json.dumps({"t": "set", "id": 1, "s": "s0", "n": "x", "v": "a" * 70_000}))
    async with asyncio.timeout(10):
        while not ws.closed:
            await ws.receive()
    assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG

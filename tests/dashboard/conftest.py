"""Fixtures for the dashboard's tests: the weather station served in-process over ZeroMQ
(CURVE on, a port that survives a restart), a dashboard watching it as alice, and headless
Chromium (skipped, with the reason, when it is not installed)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rain_envelopes.auth import ServerAuthenticator
from rain_envelopes.client import Backoff, Client
from rain_envelopes.dashboard import Hub, ServerSpec
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.server import AccessPolicy, Parameter, Server, load_plugins
from rain_envelopes.server.access import AccessRule
from rain_envelopes.transport import ServerSecurity

from .browser import Browser, Page, find_chromium

pytest.importorskip("aiohttp", reason="the dashboard extra (aiohttp) is not installed")

from rain_envelopes.dashboard.web import Dashboard

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "examples" / "weather_station" / "plugins"
FAST = Backoff(initial=0.05, maximum=0.3)


class Station:
    """The example weather station, with the example's access rules (everyone at irf reads,
    only alice sets), on one tcp port kept across :meth:`stop` and :meth:`start`."""

    def __init__(self, extra: Iterable[Parameter] = (), *, plugins: bool = True) -> None:
        self.key = Identity.generate()
        self.alice = Identity.generate()
        self.bob = Identity.generate()
        self.keys = AuthorizedKeys.from_mapping({
            self.alice.public_key_text: "alice@irf",
            self.bob.public_key_text: "bob@irf",
        })
        self.extra = list(extra)
        self.plugins = plugins
        self.server: Server | None = None
        self.endpoint = "tcp://127.0.0.1:0"

    async def start(self) -> Server:
        access = AccessPolicy([
            AccessRule("*@irf", "/params*", frozenset({"get", "subscribe"})),
            AccessRule("alice@irf", "/params/*", frozenset({"set"})),
        ])
        server = Server(
            [*(load_plugins(PLUGINS) if self.plugins else []), *self.extra], node="station@irf",
            authenticator=ServerAuthenticator(self.keys), access=access,
            identity=self.key, authorized_keys=self.keys,
        )
        await server.start()
        try:
            listeners = await server.listen([self.endpoint], security=ServerSecurity(
                identity=self.key, authorized_keys=self.keys, allow=("127.0.0.1/32",)))
        except BaseException:
            await server.close()
            raise
        self.endpoint = listeners[0].endpoints[0]
        self.server = server
        return server

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.close()

    def spec(self, identity: Identity | None = None) -> ServerSpec:
        return ServerSpec(self.endpoint, {
            "identity": identity or self.alice, "server_key": self.key.public_key,
            "backoff": FAST, "command_timeout": 5.0, "establish_timeout": 5.0,
        })

    def client(self, identity: Identity | None = None) -> Client:
        return Client(self.endpoint, identity=identity or self.alice,
                      server_key=self.key.public_key, backoff=FAST, command_timeout=5.0)


@pytest.fixture
async def station() -> AsyncIterator[Station]:
    station = Station()
    await station.start()
    try:
        yield station
    finally:
        await station.stop()


@contextlib.asynccontextmanager
async def running_dashboard(*specs: ServerSpec, **options: Any) -> AsyncIterator[Dashboard]:
    dashboard = Dashboard(Hub(list(specs)), port=0, **options)
    await dashboard.start()
    try:
        yield dashboard
    finally:
        await dashboard.close()


@pytest.fixture
async def dashboard(station: Station) -> AsyncIterator[Dashboard]:
    async with running_dashboard(station.spec()) as dashboard:
        yield dashboard


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium (install Debian's chromium, or set RAIN_TEST_CHROMIUM)")
    try:
        browser = Browser(binary)
    except RuntimeError as exc:  # installed but unusable (a half-done install, missing libs)
        pytest.skip(f"Chromium at {binary} does not start: {exc}")
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    page = await browser.new_page()
    try:
        yield page
    finally:
        assert not page.exceptions, f"the page threw: {page.exceptions}"
        await page.close()

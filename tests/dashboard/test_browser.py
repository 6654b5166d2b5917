"""The dashboard in a real browser: headless Chromium shows the weather station, follows it live,
sets from the page, shows refusals and restarts, and renders hostile text as text.

The screenshots in the docs are made by docs/screenshots.py, not by these tests.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from rain_envelopes import Command, CommandMethod
from rain_envelopes.client import ClientState, Update
from rain_envelopes.server import Parameter

from .browser import Page
from .conftest import Station, running_dashboard

pytestmark = pytest.mark.timeout(60)


def _param(name: str, inside: str = "") -> str:
    """A JS expression: the card of parameter ``name`` (or the element ``inside`` it)."""
    card = (f"[...document.querySelectorAll('article.param')]"
            f".find(a => a.dataset.param === {json.dumps(name)})")
    return f"({card}){'?.querySelector(' + json.dumps(inside) + ')' if inside else ''}"


def _text(name: str, inside: str) -> str:
    return f"{_param(name, inside)}?.textContent"


async def _open(page: Page, url: str) -> None:
    await page.navigate(url)
    await page.wait_for("document.querySelector('section.server .state-established')")


async def _set_from_page(page: Page, name: str, value: str) -> str:
    """Type ``value`` into the parameter's set form, submit, and return the result text."""
    form = _param(name, "form.set")
    await page.evaluate(f"""(() => {{
        const form = {form};
        const input = form.querySelector('.set-input');
        input.value = {json.dumps(value)};
        form.querySelector('output.result').textContent = '';
        form.requestSubmit();
    }})()""")
    result = _param(name, "output.result")
    return str(await page.wait_for(
        f"{result}.textContent.startsWith('applied') || {result}.textContent.startsWith('refused')"
        f" ? {result}.textContent : ''"))


async def test_the_page_shows_the_weather_station(station: Station, page: Page) -> None:
    async with running_dashboard(station.spec()) as dashboard:
        await _open(page, dashboard.url)
        # The token moved to a cookie: the address bar no longer shows it.
        assert "token" not in await page.evaluate("location.href")
        for name in ("temperature", "pressure", "sampling_interval", "storm_alert",
                     "simulate_storm"):
            await page.wait_for(f"{_text(name, '.value')} && {_text(name, '.value')} !== '…'")
        assert await page.evaluate(_text("temperature", ".unit")) == "degC"
        assert await page.evaluate(_text("pressure", ".unit")) == "hPa"
        assert await page.evaluate(_text("sampling_interval", ".description")) == (
            "Seconds between temperature and pressure readings")
        tags = await page.evaluate(
            f"[...{_param('sampling_interval')}.querySelectorAll('.access .tag')]"
            ".map(t => t.textContent)")
        assert {"get", "set", "subscribe"} <= set(tags)
        assert await page.evaluate(
            "document.querySelector('section.server .node').textContent") == "station@irf"
        # Numeric parameters get a plot; the schema's limits are shown by the set form.
        assert await page.evaluate(f"!!{_param('temperature', 'canvas.plot')}")
        assert "≥ 0.05" in await page.evaluate(_text("sampling_interval", ".limits"))
        # A boolean schema is a true/false choice.
        assert await page.evaluate(
            f"[...{_param('simulate_storm', 'select')}.options].map(o => o.textContent)"
        ) == ["true", "false"]


async def test_a_value_set_elsewhere_appears_within_a_second(
    station: Station, page: Page
) -> None:
    async with running_dashboard(station.spec()) as dashboard, station.client() as other:
        await _open(page, dashboard.url)
        await page.wait_for(f"{_text('sampling_interval', '.value')} === '2.0'"
                            f" || {_text('sampling_interval', '.value')} === '2'")
        await other.set("/params/sampling_interval", 1.5)
        applied = time.monotonic()
        await page.wait_for(f"{_text('sampling_interval', '.value')} === '1.5'", timeout=5)
        seen = time.monotonic() - applied
        assert seen < 1.0, f"the page showed the new value {seen:.3f} s after the set"
        # A set is a triggered publication: highlighted, and listed with the events.
        assert await page.evaluate(f"{_param('sampling_interval')}.classList.contains('event')")
        events = await page.evaluate("document.getElementById('event-list').textContent")
        assert "sampling_interval" in events
        assert "1.5" in events


async def test_a_set_from_the_page_reaches_the_server(station: Station, page: Page) -> None:
    async with running_dashboard(station.spec()) as dashboard, station.client() as other:
        await _open(page, dashboard.url)
        assert await _set_from_page(page, "sampling_interval", "0.75") == "applied: 0.75"
        assert (await other.get("/params/sampling_interval")).resource["value"] == 0.75
        assert await _set_from_page(page, "simulate_storm", "true") == "applied: true"
        assert (await other.get("/params/simulate_storm")).resource["value"] is True


async def test_a_refused_set_shows_its_reason(station: Station, page: Page) -> None:
    async with running_dashboard(station.spec()) as dashboard, station.client() as other:
        await _open(page, dashboard.url)
        text = await _set_from_page(page, "sampling_interval", "0.001")
        assert text.startswith("refused (64):"), text
        assert "0.05" in text  # the schema's minimum, as the server explained it
        text = await _set_from_page(page, "sampling_interval", "601")
        assert text == "refused (64): intervals over 10 minutes must be whole minutes"
        assert await page.evaluate(f"{_param('sampling_interval', 'output.result')}"
                                   ".classList.contains('refused')")
        assert (await other.get("/params/sampling_interval")).resource["value"] == 2.0


async def test_a_server_restart_shows_as_a_reconnect_then_resumes(
    station: Station, page: Page
) -> None:
    async with running_dashboard(station.spec()) as dashboard:
        await _open(page, dashboard.url)
        await page.wait_for(f"{_text('temperature', '.value')} !== '…'")
        changes = dashboard.hub.stations["s0"].client.changes()
        await station.stop()
        async with asyncio.timeout(10):
            async for change in changes:
                if change.state is ClientState.RETRYING:
                    break
        await page.wait_for("['lost', 'retrying', 'connecting'].some(s =>"
                            " document.querySelector('section.server .state')"
                            ".classList.contains('state-' + s))")
        await station.start()
        await page.wait_for(
            "document.querySelector('section.server .state-established') &&"
            " document.querySelector('section.server .reconnects').textContent"
            " === 'reconnects: 1'", timeout=25)
        # The values resume: the new server's snapshot, flagged as a restart.
        await page.wait_for("document.querySelector('section.server .restarted')"
                            ".textContent.startsWith('server restarted')")
        before = await page.evaluate(_text("temperature", ".time"))
        async with station.client() as other:
            await other.set("/params/sampling_interval", 0.1)
        await page.wait_for(f"{_text('sampling_interval', '.value')} === '0.1'")
        await page.wait_for(f"{_text('temperature', '.time')} !== {json.dumps(before)}",
                            timeout=10)


async def test_arrays_plot_as_several_lines_and_drops_show(page: Page) -> None:
    station = Station([Parameter("triple", value=[1.0, 2.5, -3.0], unit="V")], plugins=False)
    await station.start()
    try:
        async with running_dashboard(station.spec()) as dashboard:
            await _open(page, dashboard.url)
            await page.wait_for(f"{_param('triple', 'canvas.plot')}")
            legend = await page.evaluate(
                f"[...{_param('triple', '.legend')}.children].map(e => e.textContent)")
            assert legend == ["[0]", "[1]", "[2]"]
            # Samples lost on the way are counted by the hub and shown on the card.
            hub_station = dashboard.hub.stations["s0"]
            update = Update("/params/triple", Command(
                CommandMethod.OBSERVE, "/params/triple", type="application/vnd.rain.sample+json",
                resource={"value": [1, 2, 3], "timestamp": "2026-01-01T00:00:00.000Z",
                          "seq": 9, "epoch": "e", "dropped": 4}), False, dropped=7)
            hub_station._sample_callback("triple")(update)
            await page.wait_for(f"{_text('triple', '.dropped')} === 'dropped: 7'")
            hub_station._sample_callback("triple")(update)
            await page.wait_for(f"{_text('triple', '.dropped')} === 'dropped: 14'")
    finally:
        await station.stop()


async def test_several_servers_each_get_their_section(station: Station, page: Page) -> None:
    other = Station([Parameter("level", value=3.5, unit="m")], plugins=False)
    await other.start()
    try:
        async with running_dashboard(station.spec(), other.spec()) as dashboard:
            await page.navigate(dashboard.url)
            await page.wait_for("document.querySelectorAll('section.server .state-established')"
                                ".length === 2")
            endpoints = await page.evaluate(
                "[...document.querySelectorAll('section.server .endpoint')]"
                ".map(e => e.textContent)")
            assert endpoints == [station.endpoint, other.endpoint]
            await page.wait_for(f"{_text('level', '.value')} === '3.5'")
            assert await page.evaluate(
                "document.querySelectorAll('section.server')[1]"
                ".querySelectorAll('article.param').length") == 1
            await other.stop()  # one server down leaves the other live
            await page.wait_for("document.querySelectorAll('section.server')[1]"
                                ".querySelector('.state').textContent !== 'established'")
            assert await page.evaluate("document.querySelectorAll('section.server')[0]"
                                       ".querySelector('.state').textContent") == "established"
    finally:
        await other.stop()


async def test_hostile_text_renders_as_text(page: Page) -> None:
    hostile = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'

    class Hostile(Parameter):
        def descriptor(self) -> dict[str, Any]:
            doc = super().descriptor()
            doc["name"] = hostile  # what a hostile server could list
            return doc

    extra = [
        Parameter("evil", value=hostile, description=hostile, unit="<b>u</b>"),
        Hostile("named", value=1.0, description="named with markup"),
    ]
    station = Station(extra)
    await station.start()
    try:
        async with running_dashboard(station.spec()) as dashboard:
            await _open(page, dashboard.url)
            await page.wait_for(f"{_text('evil', '.value')} === {json.dumps(hostile)}")
            assert await page.evaluate(_text("evil", ".description")) == hostile
            assert await page.evaluate(_text("evil", ".unit")) == "<b>u</b>"
            assert await page.evaluate(_text(hostile, ".name")) == hostile
            # The name cannot be subscribed (no such URI): the page says so, as text.
            await page.wait_for("document.querySelector('section.server .server-error')"
                                ".textContent.includes('subscribe')")
            assert await page.evaluate(
                "document.querySelectorAll('#servers img, #servers script, #servers b').length"
            ) == 0
            assert await page.evaluate("window.__pwned === undefined")
    finally:
        await station.stop()

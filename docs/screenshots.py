"""Make the dashboard screenshots the docs show (docs/images/dashboard*.png).

::

    python docs/screenshots.py            # needs the dashboard extra and Chromium

Runs the example weather station and a dashboard watching it as alice, as the browser tests do
(tests/dashboard/), opens the page in headless Chromium, lets the plots fill for a while at a
quick sampling interval, raises the storm alert, tries a set the schema refuses, and saves:

- ``dashboard.png``: the station live, with the alert in the event list and the refusal shown;
- ``dashboard-reconnecting.png``: the same page while the server is down.

Not run by CI: the images are committed, and made again by hand when the page changes.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.dashboard.browser import Browser, find_chromium  # noqa: E402
from tests.dashboard.conftest import Station, running_dashboard  # noqa: E402

IMAGES = ROOT / "docs" / "images"
FILL_SECONDS = 25.0


async def main() -> None:
    binary = find_chromium()
    if binary is None:
        raise SystemExit("no Chromium: install Debian's chromium or set RAIN_TEST_CHROMIUM")
    IMAGES.mkdir(exist_ok=True)
    station = Station()
    await station.start()
    browser = Browser(binary)
    try:
        async with running_dashboard(station.spec(), window=60) as dashboard, \
                station.client() as other:
            page = await browser.new_page(1280, 1020)
            await page.navigate(dashboard.url)
            await page.wait_for("document.querySelector('section.server .state-established')")
            await other.set("/params/sampling_interval", 0.25)
            await asyncio.sleep(FILL_SECONDS)  # staging: let the plots fill
            await other.set("/params/simulate_storm", True)
            await page.wait_for("document.getElementById('event-list').textContent"
                                ".includes('warning')", timeout=30)
            await other.set("/params/simulate_storm", False)
            await page.evaluate("""(() => {
                const card = [...document.querySelectorAll('article.param')]
                    .find(a => a.dataset.param === 'sampling_interval');
                card.querySelector('.set-input').value = '0.001';
                card.querySelector('form.set').requestSubmit();
            })()""")
            await page.wait_for("[...document.querySelectorAll('output.result.refused')]"
                                ".length > 0")
            await page.screenshot(IMAGES / "dashboard.png")
            await station.stop()
            await page.wait_for("document.querySelector('section.server .state-retrying')",
                                timeout=15)
            await page.screenshot(IMAGES / "dashboard-reconnecting.png")
            await page.close()
    finally:
        browser.close()
        await station.stop()
    print(f"wrote {IMAGES / 'dashboard.png'} and {IMAGES / 'dashboard-reconnecting.png'}")


if __name__ == "__main__":
    asyncio.run(main())

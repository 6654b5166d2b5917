"""The dashboard page's figures: its memory over time and the latency from publish to screen.

::

    python benchmarks/bench_dashboard.py --minutes 12            # 10 parameters at 10 Hz
    python benchmarks/bench_dashboard.py --minutes 1 --params 2  # a quick look

A server with ``--params`` numeric parameters published at ``--hz`` each, a dashboard watching
it as alice, and one page open in headless Chromium (driven over the DevTools protocol as the
browser tests are; tests/dashboard/browser.py). Every ``--every`` seconds the script garbage
collects the page and records its JavaScript heap, its DOM node count and the resident memory of
Chromium's renderer processes. At the end it prints them, the slope of each over the second half
of the run (after the plots' history window has filled, memory should stop growing), what that
slope would add in an hour, and the latency from a sample's server timestamp to the animation
frame that drew it (p50, p99; both clocks are this machine's).

There is no raw baseline to compare with, unlike the other benchmarks: this is a page in a
browser. Needs the dashboard extra and Chromium (see tests/dashboard/browser.py).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rain_envelopes.server import Parameter  # noqa: E402
from tests.dashboard.browser import Browser, Page, find_chromium  # noqa: E402
from tests.dashboard.conftest import Station, running_dashboard  # noqa: E402


def _parameters(count: int, hz: float) -> list[Parameter]:
    started = time.monotonic()

    def reader(index: int) -> Any:
        def read() -> float:
            return round(math.sin((time.monotonic() - started) / 5 + index) * 10 + index, 3)
        return read

    return [Parameter(f"p{i:02d}", getter=reader(i), interval=1 / hz, unit="V",
                      description=f"test signal {i}") for i in range(count)]


def _renderer_rss(browser: Browser) -> int:
    """Resident bytes of the renderer processes among the browser process's descendants."""
    parents: dict[int, int] = {}
    info: dict[int, tuple[bytes, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        parents[int(entry.name)] = int(fields.get("PPid", "0").strip() or 0)
        info[int(entry.name)] = (cmdline, fields.get("VmRSS", "0 kB").strip())
    total = 0
    for pid, (cmdline, rss) in info.items():
        ancestor = parents.get(pid, 0)
        while ancestor and ancestor != browser.process.pid:
            ancestor = parents.get(ancestor, 0)
        if ancestor and b"--type=renderer" in cmdline:
            total += int(rss.split()[0]) * 1024
    return total


async def _measure(page: Page, browser: Browser) -> dict[str, float]:
    await page.send("HeapProfiler.collectGarbage")
    heap = await page.send("Runtime.getHeapUsage")
    metrics = {m["name"]: m["value"]
               for m in (await page.send("Performance.getMetrics"))["metrics"]}
    points = await page.evaluate("window.rainDashboard.points()")
    return {"heap": float(heap["usedSize"]), "nodes": float(metrics.get("Nodes", 0)),
            "rss": float(_renderer_rss(browser)), "points": float(points)}


def _slope(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


async def main(args: argparse.Namespace) -> None:
    binary = find_chromium()
    if binary is None:
        raise SystemExit("no Chromium: install Debian's chromium or set RAIN_TEST_CHROMIUM")
    station = Station(_parameters(args.params, args.hz), plugins=False)
    await station.start()
    browser = Browser(binary)
    try:
        async with running_dashboard(station.spec(), window=args.window) as dashboard:
            page = await browser.new_page()
            await page.send("Performance.enable")
            await page.navigate(dashboard.url)
            await page.wait_for("document.querySelectorAll('canvas.plot').length >= "
                                f"{args.params}", timeout=30)
            began = time.monotonic()
            rows: list[tuple[float, dict[str, float]]] = []
            print(f"{args.params} parameters at {args.hz:g} Hz, plot window {args.window:g} s,"
                  f" {args.minutes:g} min; a row every {args.every:g} s", flush=True)
            print(f"{'minute':>7} {'JS heap MiB':>12} {'DOM nodes':>10} {'renderer RSS MiB':>17}"
                  f" {'plot points':>12}", flush=True)
            while True:
                elapsed = time.monotonic() - began
                row = await _measure(page, browser)
                rows.append((elapsed / 60, row))
                print(f"{elapsed / 60:7.2f} {row['heap'] / 2**20:12.2f} {row['nodes']:10.0f}"
                      f" {row['rss'] / 2**20:17.1f} {row['points']:12.0f}", flush=True)
                if elapsed >= args.minutes * 60:
                    break
                await asyncio.sleep(args.every)  # a measuring cadence, not synchronisation
            latencies = sorted(await page.evaluate("window.rainDashboard.latencies()"))
            dropped = await page.evaluate("window.rainDashboard.pageDropped()")
            await page.close()
    finally:
        browser.close()
        await station.stop()
    half = [r for r in rows if r[0] >= rows[-1][0] / 2]
    minutes = [r[0] for r in half]
    print()
    for key, unit, scale in (("heap", "KiB", 1024), ("rss", "KiB", 1024),
                             ("nodes", "nodes", 1), ("points", "points", 1)):
        slope = _slope(minutes, [r[1][key] for r in half]) / scale
        last = rows[-1][1][key] / scale
        hour = last + slope * max(0.0, 60 - rows[-1][0])
        print(f"{key:>7}: slope over the second half {slope:+.1f} {unit}/min;"
              f" at 60 min by that slope: {hour:.0f} {unit} (now {last:.0f})")
    if latencies:
        def q(p: float) -> float:
            return float(latencies[min(len(latencies) - 1, int(p * len(latencies)))])
        print(f"latency publish -> frame drawn: p50 {q(0.50):.0f} ms, p99 {q(0.99):.0f} ms,"
              f" max {latencies[-1]:.0f} ms over {len(latencies)} frames;"
              f" updates dropped on the way to the page: {dropped}")
    print(f"machine: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--params", type=int, default=10)
    parser.add_argument("--hz", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=300.0)
    parser.add_argument("--every", type=float, default=30.0)
    asyncio.run(main(parser.parse_args()))

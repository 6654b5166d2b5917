"""Headless Chromium driven through the Chrome DevTools Protocol, for the dashboard's tests.

No selenium or playwright: Chromium is started with ``--remote-debugging-port=0``, the DevTools
address is read from the line it writes to stderr, and each :class:`Page` is one tab whose
DevTools websocket we speak to with aiohttp's websocket client (the ``dashboard`` extra).

Waiting is on events, never on sleeps: :meth:`Page.wait_for` evaluates a JavaScript predicate
inside the page, in a promise that a MutationObserver re-checks at every change of the DOM, and
that fails with the predicate's text when its time runs out.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

import aiohttp

__all__ = ["Browser", "CdpError", "Page", "find_chromium"]

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio",
    "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
]


class CdpError(Exception):
    """A DevTools command failed, or the page threw."""


def find_chromium() -> str | None:
    """The Chromium binary: $RAIN_TEST_CHROMIUM, /usr/bin/chromium, or chromium on PATH."""
    for candidate in (os.environ.get("RAIN_TEST_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


class Browser:
    """One headless Chromium process (synchronous: a fixture shared by a module's tests)."""

    def __init__(self, binary: str, start_timeout: float = 30.0) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="rain-chromium-")
        self.process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        self.stderr: list[str] = []
        found = threading.Event()
        self.ws_url = ""

        def read() -> None:  # keeps draining stderr so Chromium never blocks on it
            assert self.process.stderr is not None
            for raw in self.process.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                if len(self.stderr) < 200:
                    self.stderr.append(line)
                match = re.search(r"DevTools listening on (ws://\S+)", line)
                if match and not found.is_set():
                    self.ws_url = match.group(1)
                    found.set()
            found.set()

        self._reader = threading.Thread(target=read, name="chromium-stderr", daemon=True)
        self._reader.start()
        if not found.wait(start_timeout) or not self.ws_url:
            self.close()
            raise RuntimeError("Chromium did not start:\n" + "\n".join(self.stderr[-20:]))
        self.http = "http://" + self.ws_url.split("/")[2]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._reader.join(5)
        if self.process.stderr is not None:
            self.process.stderr.close()
        self._profile.cleanup()

    async def new_page(self, width: int = 1280, height: int = 900) -> Page:
        """A fresh tab (closed by :meth:`Page.close`)."""
        async with aiohttp.ClientSession() as http, http.put(
            f"{self.http}/json/new?about:blank"
        ) as response:
            target = await response.json(content_type=None)
        page = Page(self, target["id"], target["webSocketDebuggerUrl"])
        await page.open(width, height)
        return page


class Page:
    """One tab, spoken to over its DevTools websocket."""

    def __init__(self, browser: Browser, target_id: str, ws_url: str) -> None:
        self.browser = browser
        self.target_id = target_id
        self.ws_url = ws_url
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.console: list[str] = []
        self.exceptions: list[str] = []

    async def open(self, width: int, height: int) -> None:
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(self.ws_url, max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        await self.send("Runtime.enable")
        await self.send("Page.enable")
        await self.send("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": height, "deviceScaleFactor": 1,
                         "mobile": False})

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            elif data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description")))
                                             for a in args))
            elif data.get("method") == "Runtime.exceptionThrown":
                details = data["params"]["exceptionDetails"]
                self.exceptions.append(str(details.get("exception", {}).get("description")
                                           or details.get("text")))
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(CdpError("the DevTools connection closed"))

    async def send(self, method: str, params: dict[str, Any] | None = None,
                   timeout: float = 20.0) -> dict[str, Any]:
        command_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[command_id] = future
        await self._ws.send_str(json.dumps({"id": command_id, "method": method,
                                            "params": params or {}}))
        reply = await asyncio.wait_for(future, timeout)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def evaluate(self, expression: str, timeout: float = 20.0) -> Any:
        """The value of ``expression`` in the page (promises are awaited)."""
        result = await self.send("Runtime.evaluate", {
            "expression": expression, "awaitPromise": True, "returnByValue": True,
        }, timeout=timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"{text}\n(evaluating {expression[:300]})")
        return result.get("result", {}).get("value")

    async def wait_for(self, predicate: str, timeout: float = 20.0) -> Any:
        """Wait until the JavaScript expression ``predicate`` is truthy; returns its value."""
        script = f"""
        new Promise((resolve, reject) => {{
          let timer = null, observer = null;
          const check = () => {{
            let value;
            try {{ value = ({predicate}); }} catch (e) {{ value = undefined; }}
            if (value) {{
              if (observer) observer.disconnect();
              if (timer) clearTimeout(timer);
              resolve(value);
              return true;
            }}
            return false;
          }};
          if (check()) return;
          observer = new MutationObserver(check);
          observer.observe(document, {{subtree: true, childList: true, characterData: true,
                                       attributes: true}});
          timer = setTimeout(() => {{
            observer.disconnect();
            reject(new Error("timed out after {timeout:g} s waiting for: "
                             + {json.dumps(predicate)}));
          }}, {int(timeout * 1000)});
        }})"""
        return await self.evaluate(script, timeout=timeout + 5)

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})

    async def screenshot(self, path: Path) -> None:
        result = await self.send("Page.captureScreenshot", {"format": "png"})
        await asyncio.to_thread(path.write_bytes, base64.b64decode(result["data"]))

    async def close(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
        await self._ws.close()
        await self._http.close()
        async with aiohttp.ClientSession() as http, http.get(
            f"{self.browser.http}/json/close/{self.target_id}"
        ) as response:
            await response.read()

"""The dashboard's web side: an aiohttp app that serves the page and pushes events over a websocket.

Theory of operation. The app is a thin shell around a :class:`~.hub.Hub`. It serves exactly
three files, named here and read from the package (``static/``): no directory is ever served,
so nothing else on disk (a key file least of all) can be reached through it. Each browser opens
one websocket (``/ws``) and first receives the hub's snapshot, then every event, in batches (a
JSON array per websocket message). Events wait for the browser in a bounded outbox: when a
browser reads too slowly, the oldest *samples* are dropped and counted (the page shows the
count); answers to its own sets and state changes are never dropped for samples. The browser
sends one kind of message, a set (``{"t": "set", "id", "s", "n", "v"}``), answered with a
``set-result`` carrying the server's refusal code and reason as they are.

Security, in the order a request meets it:

1. **The access token** (random, 256 bits, in the URL the command prints, as Jupyter does) is
   required on every request, websocket included, compared in constant time. The first load
   with ``?token=`` sets an HttpOnly, SameSite=Strict cookie named after a digest of the token
   (so dashboards on other ports do not overwrite each other's) and redirects to the bare URL,
   which keeps the token out of the history and out of any Referer. A request without a valid
   token gets 403, whatever its path (no route is revealed to a caller without the token).
2. **The websocket's Origin** must be one of the dashboard's own origins (the loopback names
   at its port, the bound host, and any ``--origin`` a reverse proxy needs): another site open
   in the same browser cannot drive the dashboard even if it guesses the port.
3. **The page is text only**: the page's script puts every name, unit, description and value
   on the page with ``textContent``, never as HTML, and a strict Content-Security-Policy
   (scripts and styles from this origin only, no inline script, no framing) stops anything
   that would slip through from running.
4. **Loopback by default**: binding any other address needs ``allow_remote`` and TLS (a
   certificate and key); the documented alternative is a reverse proxy that terminates TLS in
   front of a dashboard that stays on loopback.

The dashboard holds the user's identity only inside its clients, to connect; it never reads a
key file on behalf of the page, and nothing the page can ask names a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import secrets
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from importlib import resources
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from .hub import Event, Hub

__all__ = ["Dashboard", "create_app", "is_loopback"]

log = logging.getLogger("rain.dashboard")

#: The files of the page: URL path -> (file in static/, content type).
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

#: Events waiting for one browser; past this, the oldest samples are dropped (and counted).
OUTBOX_LENGTH = 2048
#: Largest message a browser may send (a set with its value).
MAX_MESSAGE = 64 * 1024
#: Sets one browser may have waiting for their servers at once.
MAX_SETS_IN_FLIGHT = 16

TOKEN_KEY = web.AppKey("token", str)
HUB_KEY = web.AppKey("hub", Hub)
ORIGINS_KEY: web.AppKey[set[str]] = web.AppKey("origins")
OPTIONS_KEY: web.AppKey[dict[str, Any]] = web.AppKey("options")
SOCKETS_KEY: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("sockets")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address to bind) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cookie_name(token: str) -> str:
    return "rain_dashboard_" + hashlib.sha256(token.encode()).hexdigest()[:12]


def _token_ok(given: str | None, token: str) -> bool:
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), token.encode())


def _forbidden(text: str) -> web.Response:
    return web.Response(status=403, text=f"403: {text}\n", headers=HEADERS)


class _Outbox:
    """One browser's bounded queue of events (see the module docstring)."""

    def __init__(self, maxlen: int = OUTBOX_LENGTH) -> None:
        self.items: deque[Event] = deque()
        self.maxlen = maxlen
        self.dropped = 0  # samples dropped since the last batch went out
        self.ready = asyncio.Event()

    def put(self, event: Event) -> None:
        if len(self.items) >= self.maxlen:
            self._drop_one()
        self.items.append(event)
        self.ready.set()

    def _drop_one(self) -> None:
        for index, item in enumerate(self.items):
            if item.get("t") == "sample":
                del self.items[index]
                self.dropped += 1
                return
        self.items.popleft()  # nothing but answers and states: the oldest goes
        self.dropped += 1

    def take(self) -> list[Event]:
        batch = list(self.items)
        self.items.clear()
        self.ready.clear()
        if self.dropped:
            batch.insert(0, {"t": "page-dropped", "n": self.dropped})
            self.dropped = 0
        return batch


@web.middleware
async def _guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    token = request.app[TOKEN_KEY]
    name = cookie_name(token)
    given = request.query.get("token")
    if given is not None:
        if not _token_ok(given, token):
            return _forbidden("wrong access token: use the URL `rain dashboard` printed")
        if request.path == "/" and request.method == "GET":
            redirect = web.Response(status=303, headers={**HEADERS, "Location": "/"})
            redirect.set_cookie(name, token, httponly=True, samesite="Strict", path="/",
                                secure=request.app[OPTIONS_KEY]["secure"])
            return redirect
    elif not _token_ok(request.cookies.get(name), token):
        return _forbidden("an access token is needed: open the URL `rain dashboard` printed")
    response = await handler(request)
    if not isinstance(response, web.WebSocketResponse):
        response.headers.update(HEADERS)
    return response


def _static_handler(filename: str, content_type: str) -> Callable[..., Awaitable[web.Response]]:
    body = resources.files(__package__).joinpath("static", filename).read_bytes()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"Content-Type": content_type})

    return serve


async def _websocket(request: web.Request) -> web.StreamResponse:
    origin = request.headers.get("Origin")
    if origin is None or origin.rstrip("/").lower() not in request.app[ORIGINS_KEY]:
        log.warning("dashboard websocket refused: Origin %.200r is not the dashboard's", origin)
        return _forbidden("this Origin may not open the dashboard's websocket")
    hub = request.app[HUB_KEY]
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_MESSAGE)
    await ws.prepare(request)
    request.app[SOCKETS_KEY].add(ws)
    outbox = _Outbox()
    # Snapshot and listening with no await between: no event is missed or doubled.
    hello = hub.snapshot()
    hello["window"] = request.app[OPTIONS_KEY]["window"]
    outbox.put(hello)
    remove = hub.listen(outbox.put)
    sets: set[asyncio.Task[None]] = set()
    writer = asyncio.create_task(_pump(ws, outbox), name="rain-dashboard-ws")
    try:
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                outbox.put({"t": "error", "reason": "only text messages are understood"})
                continue
            _on_message(hub, outbox, sets, message.data)
    finally:
        request.app[SOCKETS_KEY].discard(ws)
        remove()
        for task in (writer, *sets):
            task.cancel()
        await asyncio.gather(writer, *sets, return_exceptions=True)
    return ws


async def _pump(ws: web.WebSocketResponse, outbox: _Outbox) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        while not ws.closed:
            await outbox.ready.wait()
            batch = outbox.take()
            if batch:
                await ws.send_str(orjson.dumps(batch).decode())


def _on_message(hub: Hub, outbox: _Outbox, sets: set[asyncio.Task[None]], data: str) -> None:
    try:
        request = orjson.loads(data)
    except orjson.JSONDecodeError:
        outbox.put({"t": "error", "reason": "not JSON"})
        return
    if not isinstance(request, dict) or request.get("t") != "set":
        outbox.put({"t": "error", "reason": "expected {\"t\": \"set\", ...}"})
        return
    request_id, station, name = request.get("id"), request.get("s"), request.get("n")
    if not isinstance(request_id, int | str) or isinstance(request_id, bool) or (
        isinstance(request_id, str) and len(request_id) > 64
    ):
        outbox.put({"t": "error", "reason": "a set needs an id (a number or short text)"})
        return
    if not isinstance(station, str) or not isinstance(name, str) or "v" not in request:
        outbox.put({"t": "set-result", "id": request_id, "ok": False, "code": None, "value": None,
                    "reason": "a set needs a server (s), a name (n) and a value (v)"})
        return
    if len(sets) >= MAX_SETS_IN_FLIGHT:
        outbox.put({"t": "set-result", "id": request_id, "ok": False, "code": None, "value": None,
                    "reason": f"{MAX_SETS_IN_FLIGHT} sets are already waiting for an answer"})
        return

    async def run() -> None:
        outcome = await hub.set(station, name, request["v"])
        outbox.put(outcome.event(request_id))

    task = asyncio.create_task(run(), name="rain-dashboard-set")
    sets.add(task)
    task.add_done_callback(sets.discard)


def create_app(
    hub: Hub,
    *,
    token: str,
    origins: Iterable[str] = (),
    secure: bool = False,
    window: float = 300.0,
) -> web.Application:
    """The dashboard's aiohttp application for ``hub``.

    ``origins`` are the websocket's allowed Origin values (``scheme://host:port``); the set is
    kept in the app (``app[ORIGINS_KEY]``) so a runner can add to it once it knows its port.
    """
    if len(token) < 16:
        raise ValueError("the access token must be at least 16 characters")
    app = web.Application(middlewares=[_guard], client_max_size=MAX_MESSAGE)
    app[TOKEN_KEY] = token
    app[HUB_KEY] = hub
    app[ORIGINS_KEY] = {origin.rstrip("/").lower() for origin in origins}
    app[OPTIONS_KEY] = {"secure": secure, "window": window}
    for path, (filename, content_type) in FILES.items():
        app.router.add_get(path, _static_handler(filename, content_type))
    app.router.add_get("/ws", _websocket)
    app[SOCKETS_KEY] = set()
    app.on_shutdown.append(_close_sockets)
    return app


async def _close_sockets(app: web.Application) -> None:
    """On shutdown, end every browser's websocket (the page says so and tries again)."""
    sockets = app[SOCKETS_KEY]
    for ws in list(sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"the dashboard is stopping")


class Dashboard:
    """The hub, its app and a listening site: what ``rain dashboard`` runs.

    ``host`` beyond loopback needs ``allow_remote=True`` and an ``ssl_context``.
    ``extra_origins`` are Origins to accept besides the dashboard's own (a reverse proxy's).
    """

    def __init__(
        self,
        hub: Hub,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        allow_remote: bool = False,
        extra_origins: Iterable[str] = (),
        token: str | None = None,
        window: float = 300.0,
    ) -> None:
        if not is_loopback(host):
            if not allow_remote:
                raise ValueError(
                    f"{host} is not a loopback address: the dashboard serves this machine only"
                    " unless --allow-remote is given (and then TLS), or put a reverse proxy"
                    " with TLS in front of a dashboard on 127.0.0.1"
                )
            if ssl_context is None:
                raise ValueError(
                    f"serving {host} beyond this machine needs TLS: give --certfile and"
                    " --keyfile (or keep 127.0.0.1 behind a reverse proxy with TLS)"
                )
        self.hub = hub
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.token = token or secrets.token_urlsafe(32)
        self.app = create_app(hub, token=self.token, origins=extra_origins,
                              secure=ssl_context is not None, window=window)
        self._runner: web.AppRunner | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL to open, token included (print it only to the user who started it)."""
        return f"{self.base_url}/?token={self.token}"

    async def start(self) -> None:
        await self.hub.start()
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context,
                           reuse_address=False)
        try:
            await site.start()
        except OSError as exc:
            await self.close()
            raise OSError(exc.errno, f"cannot serve the dashboard on {self.host}:{self.port}:"
                                     f" {exc.strerror or exc}") from None
        addresses = runner.addresses  # the bound sockets: port 0 becomes the one chosen
        if addresses:
            self.port = int(addresses[0][1])
        origins = self.app[ORIGINS_KEY]
        names = {self.host, "127.0.0.1", "localhost", "[::1]"} if is_loopback(self.host) else {
            self.host}
        for name in names:
            shown = f"[{name}]" if ":" in name and not name.startswith("[") else name
            origins.add(f"{self.scheme}://{shown}:{self.port}".lower())

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self.hub.close()

    async def __aenter__(self) -> Dashboard:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Dashboard {self.base_url}>"

"""Fixtures for the blocking API's tests: a real RAIN server on 127.0.0.1 (ZeroMQ + CURVE) run
by its own event loop in a background thread, so the test body is plain blocking code, as a
script's is; and key files on disk, as a script's are.

The server can be stopped and started again on the same port (a restart, with a new epoch).
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rain_envelopes.auth import ServerAuthenticator
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.server import Parameter, Server
from rain_envelopes.transport import ServerSecurity, transport_factory

try:
    transport_factory("tcp://127.0.0.1:1")
except Exception:  # pragma: no cover - the ZeroMQ transport is a dependency
    pytest.skip("no ZeroMQ transport installed", allow_module_level=True)


@dataclass
class Site:
    """Keys on disk: the station's and alice's key files (``.key`` and ``.key.pub``)."""

    folder: Path
    station: Identity
    alice: Identity
    stranger: Identity  # a valid key the server has never heard of
    station_key: Path
    station_pub: Path
    alice_key: Path
    alice_pub: Path
    authorized: AuthorizedKeys


@pytest.fixture
def site(tmp_path: Path) -> Site:
    station, alice, stranger = (Identity.generate() for _ in range(3))
    station.save(tmp_path / "station.key")
    alice.save(tmp_path / "alice.key")
    authorized = AuthorizedKeys.from_mapping({alice.public_key_text: "alice@irf"})
    return Site(
        tmp_path, station, alice, stranger,
        tmp_path / "station.key", tmp_path / "station.key.pub",
        tmp_path / "alice.key", tmp_path / "alice.key.pub", authorized,
    )


def parameters(gate: threading.Event, entered: threading.Event) -> list[Parameter]:
    """A fresh station for each server start; ``slow`` sets ``entered`` when it is read, and
    answers only once ``gate`` is set."""
    temperature = Parameter(
        "temperature", value=20.5, unit="degC", description="Air temperature", writable=True,
        schema={"type": "number"},
    )
    knob = Parameter("knob", value=1, writable=True,
                     schema={"type": "integer", "minimum": 0, "maximum": 10})
    model = Parameter("model", value="WS-1", description="read-only")

    def slow_reading() -> float:
        entered.set()
        gate.wait(20)  # a sensor that hangs until the test lets it go (or the server stops)
        return 1.0

    slow = Parameter("slow", getter=slow_reading, description="answers when let")
    return [temperature, knob, model, slow]


class ServerThread:
    """A :class:`Server` in its own thread and loop; ``start`` and ``stop`` block.

    The first start binds an ephemeral port; later starts bind the same one, so clients keep
    dialling one endpoint across a restart.
    """

    def __init__(
        self,
        site: Site,
        make: Callable[[threading.Event, threading.Event], list[Parameter]] = parameters,
    ) -> None:
        self.site = site
        self.make = make
        self.endpoint: str | None = None
        self.server: Server | None = None
        #: Lets the ``slow`` parameter's getter answer; set when the server stops.
        self.gate = threading.Event()
        #: Set when the ``slow`` parameter's getter is called.
        self.entered = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 15.0) -> str:
        assert self._thread is None, "already running"
        self.gate.clear()
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()
        assert self._ready.wait(timeout), "the server did not start in time"
        if self._error is not None:
            raise self._error
        assert self.endpoint is not None
        return self.endpoint

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        site = self.site
        try:
            server = Server(
                self.make(self.gate, self.entered),
                node="station@irf",
                authenticator=ServerAuthenticator(site.authorized),
                identity=site.station,
                authorized_keys=site.authorized,
            )
            async with server:
                await server.listen(
                    [self.endpoint or "tcp://127.0.0.1:0"],
                    security=ServerSecurity(
                        identity=site.station, authorized_keys=site.authorized,
                        allow=("127.0.0.1/32",),
                    ),
                )
                self.server = server
                self.endpoint = server.endpoints[0]
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            self.server = None
            self._ready.set()

    def call(self, function: Callable[[], object]) -> None:
        """Run ``function`` in the server's loop (e.g. a parameter's publish)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(function)

    def stop(self, timeout: float = 15.0) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        assert self._loop is not None
        assert self._stop is not None
        self.gate.set()
        self._loop.call_soon_threadsafe(self._stop.set)
        thread.join(timeout)
        assert not thread.is_alive(), "the server did not stop in time"


@pytest.fixture
def station(site: Site) -> Iterator[ServerThread]:
    server = ServerThread(site)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class ServerLog(logging.Handler):
    """The server's log lines (``rain.server``, INFO and up), to wait on one of them."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self.changed:
            self.lines.append(record.getMessage())
            self.changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 10.0) -> str:
        """The first line matching ``pattern`` (a regex); AssertionError after ``timeout``."""
        found: list[str] = []

        def seen() -> bool:
            found[:] = [line for line in self.lines if re.search(pattern, line)]
            return bool(found)

        with self.changed:
            assert self.changed.wait_for(seen, timeout), (pattern, self.lines)
        return found[0]


@pytest.fixture
def server_log() -> Iterator[ServerLog]:
    logger = logging.getLogger("rain.server")
    handler = ServerLog()
    previous = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)

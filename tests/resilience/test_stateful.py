"""A stateful Hypothesis test over reconnecting clients and an in-process server (issue 8,
item 8): random sequences of connect, subscribe, set, get, drop the link, drop the link while a
set is being applied, restart the server, wait for reconnection.

The server runs in this process over the memory transport (fast), with a state file when the
server takes one (``Server(state=...)``). Dropping a link closes the server side of that
client's session (the client sees its link end); a restart closes the server and starts a new
one on the same endpoint (and state file). Each client has its own identity.

Invariants:

- no value is applied twice (every set carries a value never used before, and the setter counts
  its applications per value), including a set whose link is cut while its setter runs;
- every acknowledged set was applied, and a get returns the last value applied (across restarts
  only with a state file: without one a restart goes back to the initial value, which is what
  the model then expects); with a state file a restart restores exactly the last value applied
  (the setter calls made while the server starts are that restore, not sets, and are not
  counted as applications);
- after reconnecting, every subscriber's latest update carries the current value.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import secrets
import shutil
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from rain_envelopes.auth import ServerAuthenticator
from rain_envelopes.client import Backoff, Client, Update
from rain_envelopes.errors import CommandFailed, NotDone
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.server import Parameter, Server

#: The server keeps settings and the SET window in a state file (issue 8, item 4).
PERSISTENT = "state" in inspect.signature(Server).parameters
CLIENTS = 3
INITIAL = 0
URI = "/params/setting"
STEP = 5.0  # bound on every wait of a rule
FAST = Backoff(initial=0.01, maximum=0.05)
IDENTITIES = [Identity.generate() for _ in range(CLIENTS)]
KEYS = AuthorizedKeys.from_mapping(
    {key.public_key_text: f"c{i}@irf" for i, key in enumerate(IDENTITIES)}
)
clients_ = st.integers(min_value=0, max_value=CLIENTS - 1)


class ClientsAndServer(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.folder = Path(tempfile.mkdtemp(prefix="rain-stateful-"))
        self.endpoint = f"memory://stateful-{secrets.token_hex(6)}"
        self.values = itertools.count(1)
        self.applied: Counter[int] = Counter()
        self.current = INITIAL  # the last value applied (what a get must return)
        self.acked: list[int] = []
        self.lock = threading.Lock()
        # A cut during a set: the setter records its application, then waits for `release`.
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()
        self.clients: dict[int, Client] = {}
        self.latest: dict[int, Any] = {}  # subscriber -> value of its latest update
        self.updated = asyncio.Event()
        self.server: Server | None = None
        self.starting = False
        self.restored: list[int] = []
        self.run(self._start())

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coroutine, 4 * STEP))

    # ---------------------------------------------------------------- the server

    def _parameter(self) -> Parameter:
        machine = self

        def write(value: int) -> int:
            with machine.lock:
                if machine.starting:  # the server restoring its stored value, not a set
                    machine.restored.append(value)
                    return value
                machine.applied[value] += 1
                machine.current = value
            if machine.hold:
                machine.entered.set()
                machine.release.wait(STEP)
            return value

        return Parameter("setting", value=INITIAL, setter=write)

    async def _start(self) -> None:
        options: dict[str, Any] = {"state": self.folder / "state.db"} if PERSISTENT else {}
        server = Server(
            [self._parameter()],
            node="station@irf",
            authenticator=ServerAuthenticator(KEYS),
            **options,
        )
        self.starting = True
        try:
            await server.start()
        finally:
            self.starting = False
        await server.listen([self.endpoint])
        self.server = server

    # ---------------------------------------------------------------- rules

    @precondition(lambda self: len(self.clients) < CLIENTS)
    @rule(index=clients_)
    def connect(self, index: int) -> None:
        if index in self.clients:
            return
        client = Client(self.endpoint, identity=IDENTITIES[index], backoff=FAST,
                        command_timeout=STEP)
        self.clients[index] = client
        self.run(client.start(timeout=STEP))

    @rule(index=clients_)
    def subscribe(self, index: int) -> None:
        client = self.clients.get(index)
        if client is None or index in self.latest:
            return

        def on_update(update: Update) -> None:
            self.latest[index] = update.value
            self.updated.set()

        self.latest[index] = None
        self.run(client.subscribe(URI, on_update, timeout=STEP))

    @rule(index=clients_)
    def set(self, index: int) -> None:
        client = self.clients.get(index)
        if client is None:
            return
        value = next(self.values)
        response = self.run(client.set(URI, value, timeout=STEP))
        assert response.resource["value"] == value
        self.acked.append(value)

    @rule(index=clients_)
    def get(self, index: int) -> None:
        client = self.clients.get(index)
        if client is None:
            return
        response = self.run(client.get(URI, timeout=STEP))
        assert response.resource["value"] == self.current, (
            f"get returned {response.resource['value']}, the last value applied is"
            f" {self.current}"
        )

    @rule(index=clients_)
    def drop_link(self, index: int) -> None:
        self.run(self._drop(index))

    async def _drop(self, index: int) -> None:
        assert self.server is not None
        for session in self.server.sessions:
            if session.identity == f"c{index}@irf":
                await session.channel.close()

    @rule(index=clients_)
    def cut_during_set(self, index: int) -> None:
        """Drop the client's link while its set's setter runs; the client retries the set
        on its next session with the same id: it must not be applied again."""
        client = self.clients.get(index)
        if client is None:
            return
        value = next(self.values)
        self.hold = True
        self.entered.clear()
        self.release.clear()

        async def scenario() -> None:
            pending = asyncio.ensure_future(client.set(URI, value, timeout=STEP))
            loop = asyncio.get_running_loop()
            entered = await loop.run_in_executor(None, self.entered.wait, STEP)
            assert entered, "the setter never ran"
            await self._drop(index)
            self.release.set()
            try:
                response = await pending
            except (NotDone, CommandFailed):
                return  # not acknowledged: allowed (outcome unknown), never doubled
            assert response.resource["value"] == value
            self.acked.append(value)

        try:
            self.run(scenario())
        finally:
            self.hold = False
            self.release.set()

    @rule()
    def restart(self) -> None:
        self.run(self._restart())

    async def _restart(self) -> None:
        assert self.server is not None
        await self.server.close()
        self.server = None
        if not PERSISTENT:
            self.current = INITIAL  # without a state file a restart forgets every set
        self.restored.clear()
        await self._start()
        if PERSISTENT and self.current != INITIAL:
            assert self.restored == [self.current], (
                f"restart restored {self.restored}; the last value applied was {self.current}"
            )

    @rule()
    def reconnect(self) -> None:
        """Every client is established again, and every subscriber's latest update carries
        the current value."""

        async def everyone() -> None:
            for client in self.clients.values():
                await client.wait_established(STEP)
            async with asyncio.timeout(STEP):
                while any(v != self.current for v in self.latest.values()):
                    self.updated.clear()
                    await self.updated.wait()

        try:
            self.run(everyone())
        except TimeoutError:
            raise AssertionError(
                f"subscribers' latest values {self.latest}, current value {self.current}"
            ) from None

    # ---------------------------------------------------------------- invariants

    @invariant()
    def applied_at_most_once(self) -> None:
        twice = {value: n for value, n in self.applied.items() if n > 1}
        assert not twice, f"applied more than once: {twice}"

    @invariant()
    def acknowledged_were_applied(self) -> None:
        missing = [value for value in self.acked if value not in self.applied]
        assert not missing, f"acknowledged but never applied: {missing}"

    def teardown(self) -> None:
        async def close() -> None:
            self.release.set()
            await asyncio.gather(*(c.close() for c in self.clients.values()),
                                 return_exceptions=True)
            if self.server is not None:
                await self.server.close()

        try:
            self.run(close())
        finally:
            self.loop.close()
            shutil.rmtree(self.folder, ignore_errors=True)


ClientsAndServer.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestClientsAndServer = ClientsAndServer.TestCase

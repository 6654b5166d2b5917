"""Sets through a real ZeroMQ link and the fault proxy (issue 8, item 3): a link cut between
applying a set and acknowledging it, and a link stalled past the client's timeout. The server
runs in this process (CURVE on) so the test can count the setter's applications exactly; the
kill -9 case is in ``test_kill_sets``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import pytest

from rain_envelopes.auth import ServerAuthenticator
from rain_envelopes.client import Backoff, Client, ClientState
from rain_envelopes.errors import NotDone
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.server import Parameter, Server
from rain_envelopes.transport import ServerSecurity

from ..faultproxy import FaultProxy

STEP = 10.0


class Knob:
    """A parameter whose setter records every application and can be held mid-way."""

    def __init__(self) -> None:
        self.applied: list[object] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()
        self.parameter = Parameter("knob", value=0, setter=self._set)

    def _set(self, value: object) -> object:
        self.entered.set()
        if not self.release.wait(STEP):
            raise RuntimeError("the test never released the setter")
        self.applied.append(value)
        return value


@pytest.fixture
async def station() -> AsyncIterator[tuple[Server, Knob, Identity, Identity]]:
    server_key, alice = Identity.generate(), Identity.generate()
    authorized = AuthorizedKeys.from_mapping({alice.public_key_text: "alice@irf"})
    knob = Knob()
    server = Server(
        [knob.parameter],
        node="station@irf",
        authenticator=ServerAuthenticator(authorized),
        identity=server_key,
        authorized_keys=authorized,
    )
    async with server:
        await server.listen(
            ["tcp://127.0.0.1:0"],
            security=ServerSecurity(identity=server_key, authorized_keys=authorized),
        )
        yield server, knob, server_key, alice
    knob.release.set()


def _client(proxy: FaultProxy, alice: Identity, station_key: Identity) -> Client:
    return Client(
        proxy.endpoint,
        identity=alice,
        server_key=station_key.public_key,
        backoff=Backoff(initial=0.05, maximum=0.2),
        ping_interval=None,  # the stall below must not be taken for a dead link
        command_timeout=STEP,
    )


def _port(server: Server) -> int:
    return int(server.endpoints[0].rsplit(":", 1)[1])


async def test_a_link_cut_between_apply_and_ack_applies_the_set_once(
    station: tuple[Server, Knob, Identity, Identity],
) -> None:
    server, knob, station_key, alice = station
    async with FaultProxy(("127.0.0.1", _port(server))) as proxy:
        async with _client(proxy, alice, station_key) as client:
            changes = client.changes()
            knob.release.clear()
            pending = asyncio.ensure_future(client.set("/params/knob", 1))
            assert await asyncio.to_thread(knob.entered.wait, STEP)  # applying now
            proxy.reset_all()  # the answer can no longer reach the client
            async with asyncio.timeout(STEP):
                async for change in changes:
                    if change.state is ClientState.LOST:
                        break
            knob.release.set()  # the first application completes with its session gone
            response = await asyncio.wait_for(pending, STEP)  # retried on a new session
            assert response.resource["value"] == 1
            assert (await client.get("/params/knob")).resource["value"] == 1
        assert proxy.accepted >= 2  # it really came back over a second connection
    assert knob.applied == [1]  # acknowledged, and applied exactly once


async def test_a_set_stalled_past_the_clients_timeout_is_never_applied(
    station: tuple[Server, Knob, Identity, Identity],
) -> None:
    server, knob, station_key, alice = station
    async with (
        FaultProxy(("127.0.0.1", _port(server))) as proxy,
        _client(proxy, alice, station_key) as client,
    ):
        await client.set("/params/knob", 1)
        proxy.stall()
        with pytest.raises(NotDone):
            await client.set("/params/knob", 2, timeout=1.0)  # expires with its timeout
        assert proxy.held > 0  # the set is still on its way
        proxy.resume()  # ...and arrives after the client gave up
        # Same connection, same order: once this get is answered, the set was handled.
        assert (await client.get("/params/knob")).resource["value"] == 1
    assert knob.applied == [1]  # 0 applied after the client gave up

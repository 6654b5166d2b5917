"""Fixtures for server tests: keys, a running server on memory:// or tcp:// (ZeroMQ + CURVE),
and clients that authenticate with their own keys.

End-to-end tests take the ``kind`` fixture and so run over both transports; tcp runs only when
the ZeroMQ transport is installed (it is the default transport, so it is expected to be).
``running_server`` also takes ``kind="nats"`` (a real nats-server started for the keys, with
nats-config's users): tests/nats/test_server_over_nats.py runs a subset that way.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from rain_envelopes.auth import ServerAuthenticator
from rain_envelopes.channel import ClientChannel, connect
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.server import AccessPolicy, Limits, Parameter, Server
from rain_envelopes.transport import ServerSecurity, transport_factory


def zmq_available() -> bool:
    try:
        transport_factory("tcp://127.0.0.1:1")
    except Exception:
        return False
    return True


ZMQ = zmq_available()
KINDS = [
    "memory",
    pytest.param("tcp", marks=pytest.mark.skipif(not ZMQ, reason="no ZMQ transport")),
]


@dataclass
class Keys:
    station: Identity
    alice: Identity
    bob: Identity
    carol: Identity
    stranger: Identity  # not authorised at all
    authorized: AuthorizedKeys


@pytest.fixture
def keys() -> Keys:
    station, alice, bob, carol, stranger = (Identity.generate() for _ in range(5))
    authorized = AuthorizedKeys.from_mapping({
        alice.public_key_text: "alice@irf",
        bob.public_key_text: "bob@irf",
        carol.public_key_text: "carol@elsewhere",
    })
    return Keys(station, alice, bob, carol, stranger, authorized)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.asynccontextmanager
async def running_server(
    parameters: Iterable[Parameter],
    keys: Keys,
    kind: str,
    *,
    access: AccessPolicy | None = None,
    limits: Limits | None = None,
    state: Path | None = None,
) -> AsyncIterator[Server]:
    """A started server listening on one fresh endpoint of ``kind``; closed on exit.

    ``state``: its state file (None: memory only)."""
    server = Server(
        parameters,
        node="station@irf",
        authenticator=ServerAuthenticator(keys.authorized),
        access=access,
        limits=limits,
        identity=keys.station,
        authorized_keys=keys.authorized,
        state=state,
    )
    endpoint = "tcp://127.0.0.1:0" if kind == "tcp" else f"memory://test-{secrets.token_hex(6)}"
    allow: tuple[str, ...] = ("127.0.0.1/32",)
    async with contextlib.AsyncExitStack() as stack:
        if kind == "nats":  # a real nats-server whose users are nats-config's for these keys
            from ..nats.broker import ServerGrant, running_broker

            clients = dict(keys.authorized.items())
            grant = ServerGrant(keys.station.public_key, "station@irf", clients)
            endpoint = (await stack.enter_async_context(running_broker([grant]))).url
            allow = ()  # the broker, not the server, sees client addresses
        await stack.enter_async_context(server)
        await server.listen(
            [endpoint],
            security=ServerSecurity(
                identity=keys.station, authorized_keys=keys.authorized, allow=allow
            ),
        )
        yield server


async def client(server: Server, keys: Keys, identity: Identity) -> ClientChannel:
    return await connect(
        server.endpoints[0],
        identity=identity,
        server_key=keys.station.public_key,
        establish_timeout=5.0,
        command_timeout=5.0,
    )

"""Fixtures for the NATS transport tests: identities, and one real nats-server per test whose
authorization block comes from ``rain nats-config``'s generator, as a deployment's would.

``nats_broker`` is a started :class:`~tests.nats.broker.NatsServer` on an ephemeral loopback
port, configured for ``nats_keys`` (a server ``station`` that lets ``alice`` in; ``mallory`` is a
user of the broker whom the station does not know). Tests that need another topology build
their own with :mod:`tests.nats.broker`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_transport_nats.config import ServerGrant, authorization_block

from .broker import NatsServer


@dataclass
class NatsKeys:
    station: Identity
    alice: Identity
    mallory: Identity
    authorized: AuthorizedKeys

    def grants(self) -> list[ServerGrant]:
        # mallory is the station's client too as far as the broker is concerned only when a
        # test says so; by default the broker knows her as a server of her own (a user that
        # may connect, with no right to the station's subjects).
        return [
            ServerGrant(self.station.public_key, "station@lab", dict(self.authorized.items())),
            ServerGrant(self.mallory.public_key, "mallory@elsewhere", {}),
        ]


@pytest.fixture
def nats_keys() -> NatsKeys:
    station, alice, mallory = Identity.generate(), Identity.generate(), Identity.generate()
    authorized = AuthorizedKeys.from_mapping({alice.public_key: "alice@lab"})
    return NatsKeys(station, alice, mallory, authorized)


@pytest.fixture
def nats_broker(tmp_path: Path, nats_keys: NatsKeys) -> Iterator[NatsServer]:
    server = NatsServer(
        tmp_path / "nats", "n1", authorization=authorization_block(nats_keys.grants())
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()

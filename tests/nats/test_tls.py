"""TLS to the broker: a RAIN server and client reach each other through a nats-server that
requires TLS, each verifying the broker's certificate against a CA given as ``tls_ca`` (in the
transport options, or as a query parameter of the endpoint, which is how the CLI passes it);
with client certificates when the broker asks for them. A wrong CA, or none, is refused as a
security error, never downgraded to plain text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rain_envelopes.auth import ServerAuthenticator
from rain_envelopes.channel import connect
from rain_envelopes.errors import TransportError, TransportSecurityError
from rain_envelopes.server import Parameter, Server
from rain_envelopes.transport import ServerSecurity
from rain_transport_nats.config import authorization_block

from .broker import NatsServer
from .certs import Authority, make_authority
from .conftest import NatsKeys


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return make_authority(tmp_path / "pki")


def _tls_block(authority: Authority, *, verify: bool) -> str:
    cert, key = authority.issue("broker", server=True)
    return (
        f'tls {{ cert_file: "{cert}", key_file: "{key}", ca_file: "{authority.ca_file}",'
        f" verify: {'true' if verify else 'false'}, timeout: 5 }}"
    )


@pytest.fixture
def tls_broker(tmp_path: Path, nats_keys: NatsKeys, authority: Authority) -> Iterator[NatsServer]:
    with NatsServer(
        tmp_path / "nats", "tls", authorization=authorization_block(nats_keys.grants()),
        tls=_tls_block(authority, verify=False),
    ) as server:
        yield server


async def test_a_session_through_a_tls_broker(
    tls_broker: NatsServer, nats_keys: NatsKeys, authority: Authority
) -> None:
    server = Server([Parameter("temp", value=21.5)], node="station@lab",
                    identity=nats_keys.station, authorized_keys=nats_keys.authorized,
                    authenticator=ServerAuthenticator(nats_keys.authorized))
    async with server:
        await server.listen(
            [tls_broker.url],
            security=ServerSecurity(
                identity=nats_keys.station, authorized_keys=nats_keys.authorized
            ),
            options={"tls_ca": str(authority.ca_file)},
        )
        # The client names the CA in the endpoint, as `rain get` would.
        endpoint = f"{tls_broker.url}?tls_ca={authority.ca_file}"
        channel = await connect(
            endpoint, identity=nats_keys.alice, server_key=nats_keys.station.public_key,
            establish_timeout=5.0, command_timeout=5.0,
        )
        assert (await channel.get("/params/temp")).resource["value"] == 21.5
        await channel.finish()
    assert "TLS" in tls_broker.log or "tls" in tls_broker.log.lower()


async def test_a_broker_certificate_from_another_ca_is_refused(
    tls_broker: NatsServer, nats_keys: NatsKeys, tmp_path: Path
) -> None:
    other = make_authority(tmp_path / "other", "other")
    with pytest.raises(TransportSecurityError, match="TLS"):
        await connect(
            f"{tls_broker.url}?tls_ca={other.ca_file}", identity=nats_keys.alice,
            server_key=nats_keys.station.public_key, establish_timeout=5.0,
        )


async def test_no_tls_to_a_broker_that_requires_it_is_refused(
    tls_broker: NatsServer, nats_keys: NatsKeys
) -> None:
    # Without a CA the system's trust store is used: the throwaway CA is not in it.
    with pytest.raises(TransportSecurityError):
        await connect(
            tls_broker.url, identity=nats_keys.alice,
            server_key=nats_keys.station.public_key, establish_timeout=5.0,
        )


async def test_client_certificates_when_the_broker_verifies_them(
    tmp_path: Path, nats_keys: NatsKeys, authority: Authority
) -> None:
    with NatsServer(
        tmp_path / "mtls", "mtls", authorization=authorization_block(nats_keys.grants()),
        tls=_tls_block(authority, verify=True),
    ) as broker:
        cert, key = authority.issue("alice-laptop", server=False)
        server_cert, server_key = authority.issue("station-host", server=False)
        server = Server([Parameter("temp", value=3.0)], node="station@lab",
                        identity=nats_keys.station, authorized_keys=nats_keys.authorized,
                        authenticator=ServerAuthenticator(nats_keys.authorized))
        async with server:
            await server.listen(
                [broker.url],
                security=ServerSecurity(
                    identity=nats_keys.station, authorized_keys=nats_keys.authorized
                ),
                options={"tls_ca": str(authority.ca_file), "tls_cert": str(server_cert),
                         "tls_key": str(server_key)},
            )
            # Without a client certificate the broker ends the TLS handshake. Whether the
            # client reads its alert (a TLS security error) or only the lost connection
            # depends on timing; either way no session.
            mark = broker.mark()
            with pytest.raises(TransportError, match=r"TLS to the NATS broker|cannot reach"):
                await connect(
                    f"{broker.url}?tls_ca={authority.ca_file}", identity=nats_keys.alice,
                    server_key=nats_keys.station.public_key, establish_timeout=5.0,
                )
            assert broker.wait_for_log("TLS handshake error", 5, after=mark), broker.log
            channel = await connect(
                f"{broker.url}?tls_ca={authority.ca_file}&tls_cert={cert}&tls_key={key}",
                identity=nats_keys.alice, server_key=nats_keys.station.public_key,
                establish_timeout=5.0, command_timeout=5.0,
            )
            assert (await channel.get("/params/temp")).resource["value"] == 3.0
            await channel.finish()

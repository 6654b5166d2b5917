"""Units of the NATS transport that need no broker: nkeys from RAIN identities, endpoints,
options, and the subject scheme."""

from __future__ import annotations

from pathlib import Path

import nkeys
import pytest

from rain_envelopes.errors import ConfigError, KeyFileError
from rain_envelopes.keys import Identity
from rain_envelopes.server.config import parse_config
from rain_envelopes.transport import ClientSecurity, ServerSecurity, transport_factory
from rain_transport_nats import (
    NATS,
    NatsOptions,
    parse_endpoint,
    subjects,
    user_nkey,
    user_public_key,
    user_seed,
)
from rain_transport_nats.archive import Archiver


def test_the_identity_is_the_nkey_as_the_nkeys_library_derives_it() -> None:
    identity = Identity.generate()
    seed = user_seed(identity)
    assert seed.startswith("SU")
    pair = nkeys.from_seed(seed.encode())
    assert pair.public_key.decode() == user_nkey(identity.public_key)
    # And a signature by the nkey verifies with the RAIN key: one key, two encodings.
    signature = pair.sign(b"nonce")
    identity.signing_key.verify_key.verify(b"nonce", signature)
    assert user_public_key(user_nkey(identity.public_key)) == identity.public_key


@pytest.mark.parametrize(
    "text",
    ["", "U" * 56, "N" + "A" * 55, "UABC", "A" + user_nkey(bytes(32))[1:]],
)
def test_bad_nkeys_are_refused_by_name(text: str) -> None:
    with pytest.raises(KeyFileError):
        user_public_key(text)


def test_a_flipped_character_fails_the_checksum() -> None:
    nkey = user_nkey(Identity.generate().public_key)
    flipped = nkey[:10] + ("A" if nkey[10] != "A" else "B") + nkey[11:]
    with pytest.raises(KeyFileError, match=r"checksum|not a NATS"):
        user_public_key(flipped)


def test_nats_endpoints_are_found_by_scheme_and_parsed() -> None:
    assert transport_factory("nats://127.0.0.1:4222") is NATS
    endpoint = parse_endpoint("nats://hub.example:4222/magnetometer?tls_ca=ca.pem")
    assert (endpoint.host, endpoint.port, endpoint.label) == ("hub.example", 4222, "magnetometer")
    assert endpoint.tls == {"tls_ca": "ca.pem"}
    assert endpoint.broker_url(True) == "tls://hub.example:4222"


def test_the_archiver_takes_tls_from_its_endpoint_as_links_do() -> None:
    # `rain serve` gives the archiver only `[archive] endpoint`: TLS to a leaf node must come
    # from its query parameters, overridable by the options table.
    leaf = "nats://leaf.example:4222?tls_ca=site-ca.pem&tls_hostname=leaf"
    archiver = Archiver(leaf, Identity.generate())
    assert (archiver.options.tls_ca, archiver.options.tls_hostname) == ("site-ca.pem", "leaf")
    assert archiver.options.tls
    table = Archiver(leaf, Identity.generate(), options={"tls_ca": "other.pem"})
    assert table.options.tls_ca == "other.pem"


@pytest.mark.parametrize(
    ("endpoint", "says"),
    [
        ("tcp://127.0.0.1:4222", "not a NATS endpoint"),
        ("nats://127.0.0.1", "needs a host and a port"),
        ("nats://user:pw@127.0.0.1:4222", "no user or password"),
        ("nats://127.0.0.1:4222/a/b", "one path segment"),
        ("nats://127.0.0.1:4222?colour=red", "unknown query parameter"),
        ("nats://127.0.0.1:99999", "(?i)port out of range"),
    ],
)
def test_bad_endpoints_say_what_is_wrong(endpoint: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_endpoint(endpoint)


def test_options_are_checked_like_a_config_file() -> None:
    NATS.check_options({"heartbeat_interval": 1, "heartbeat_timeout": 3})
    with pytest.raises(ConfigError, match="unknown NATS transport option"):
        NATS.check_options({"hwm": 3})
    with pytest.raises(ConfigError, match="heartbeat_timeout must exceed"):
        NatsOptions(heartbeat_interval=5, heartbeat_timeout=5)
    with pytest.raises(ConfigError, match="go together"):
        NatsOptions(tls_cert="c.pem")


def test_missing_keys_are_config_errors_not_silent_plain_text() -> None:
    me, server = Identity.generate(), Identity.generate()
    with pytest.raises(ConfigError, match="server's key"):
        NATS.connect("nats://127.0.0.1:4222", ClientSecurity(identity=me))
    with pytest.raises(ConfigError, match="its identity"):
        NATS.connect("nats://127.0.0.1:4222", ClientSecurity(server_key=server.public_key))
    with pytest.raises(ConfigError, match="server's identity"):
        NATS.listen(["nats://127.0.0.1:4222"], ServerSecurity())
    with pytest.raises(ConfigError, match="allowlist"):
        NATS.listen(
            ["nats://127.0.0.1:4222"],
            ServerSecurity(identity=server, insecure=True, allow=("127.0.0.1/32",)),
        )


def test_subjects_parse_back_and_refuse_strangers() -> None:
    subject = subjects.to_server("US", "UC", "n1", subjects.DATA)
    assert subject == "rain.US.in.UC.n1.d"
    assert subjects.parse_inbound(subject) == subjects.Route("US", "UC", "n1", "d")
    assert subjects.parse_inbound("rain.US.sideways.UC.n1.d") is None
    assert subjects.parse_inbound("other.US.in.UC.n1.d") is None
    assert subjects.parse_inbound("rain.US.in.UC.d") is None


def test_a_server_config_with_a_bad_nats_option_is_refused_at_load(tmp_path: Path) -> None:
    raw = {
        "identity": "station@lab",
        "listen": ["nats://127.0.0.1:4222"],
        "key_file": "station.key",
        "authorized_keys": "authorized_keys",
        "transport": {"heartbeat_intervall": 2.0},
    }
    with pytest.raises(ConfigError, match="heartbeat_intervall"):
        parse_config(raw, base=tmp_path)
    raw["transport"] = {"heartbeat_interval": 2.0, "tls_ca": "/etc/rain/hub-ca.pem"}
    assert parse_config(raw, base=tmp_path).transport["heartbeat_interval"] == 2.0

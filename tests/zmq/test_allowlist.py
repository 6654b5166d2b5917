"""The IP/CIDR allowlist and the ZAP decision, as pure functions (no sockets)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest
import zmq
import zmq.utils.z85

from rain_envelopes.errors import ConfigError
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_transport_zmq.security import (
    ZapAuthenticator,
    address_allowed,
    normalize_address,
    parse_allowlist,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("fe80::1%eth0", "fe80::1"),
        (" 10.0.0.1 ", "10.0.0.1"),
    ],
)
def test_normalize_address(text: str, expected: str) -> None:
    assert normalize_address(text) == ipaddress.ip_address(expected)


@pytest.mark.parametrize("text", ["", "localhost", "localhost:0:0:5901", "1.2.3", "::g", "[::1"])
def test_normalize_address_rejects_non_ip(text: str) -> None:
    assert normalize_address(text) is None


@pytest.mark.parametrize(
    ("allow", "address", "allowed"),
    [
        ([], "203.0.113.9", True),  # no allowlist: every address
        ([], "localhost:0:0:42", True),
        (["127.0.0.1/32"], "127.0.0.1", True),
        (["127.0.0.1/32"], "127.0.0.2", False),
        (["127.0.0.2/32"], "127.0.0.1", False),
        (["127.0.0.2"], "127.0.0.2", True),  # bare address = /32
        (["127.0.0.0/31"], "127.0.0.1", True),
        (["127.0.0.0/31"], "127.0.0.2", False),
        (["10.0.0.0/8"], "10.200.3.4", True),  # pyzmq's allow() matches nothing here
        (["10.0.0.0/8"], "11.0.0.1", False),
        (["127.0.0.1/32"], "::ffff:127.0.0.1", True),  # IPv4-mapped peer of an IPv6 socket
        (["10.0.0.0/8"], "::ffff:10.9.9.9", True),
        (["10.0.0.0/8"], "::ffff:11.9.9.9", False),
        (["::ffff:127.0.0.0/104"], "127.0.0.5", True),  # mapped network folded to IPv4
        (["::1"], "::1", True),
        (["::1"], "127.0.0.1", False),
        (["2001:db8::/32"], "2001:db8:1::7", True),
        (["2001:db8::/32"], "2001:db9::7", False),
        (["0.0.0.0/0"], "::1", False),  # an IPv4 network never admits an IPv6 peer
        (["::/0"], "127.0.0.1", False),  # nor the reverse: folded peers are IPv4
        (["127.0.0.1/32"], "localhost:0:0:42", False),  # ipc peer: no IP, refused
        (["127.0.0.1/32"], "", False),
    ],
)
def test_address_allowed(allow: list[str], address: str, allowed: bool) -> None:
    assert address_allowed(address, parse_allowlist(allow)) is allowed


@pytest.mark.parametrize("entry", ["10.0.0.1/8", "10.0.0.0/33", "banana", "", "10.0.0.0/8/8"])
def test_parse_allowlist_names_the_bad_entry(entry: str) -> None:
    with pytest.raises(ConfigError, match="allow"):
        parse_allowlist(["127.0.0.1", entry])


def test_parse_allowlist_refuses_a_single_string() -> None:
    with pytest.raises(ConfigError, match="list"):
        parse_allowlist("10.0.0.0/8")


# ------------------------------------------------------------------------------ ZAP decisions


@pytest.fixture
def context() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.term()


def _request(
    key: bytes | None,
    address: str = "127.0.0.1",
    *,
    domain: bytes = b"rain",
    mechanism: bytes = b"CURVE",
    version: bytes = b"1.0",
) -> list[bytes]:
    credentials = [key] if key is not None else []
    return [version, b"1", domain, address.encode(), b"", mechanism, *credentials]


def test_zap_accepts_an_authorised_key_and_names_it_by_curve_key(
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    alice = Identity.generate()
    auth = ZapAuthenticator(
        context, authorized_keys=AuthorizedKeys.from_mapping({alice.public_key: "alice"})
    )
    curve = alice.curve_keypair()[0]
    decision = auth.decide(_request(curve))
    assert decision.accepted
    assert decision.user_id == zmq.utils.z85.encode(curve)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"key": "stranger"}, "not authorised"),
        ({"key": None}, "CURVE key required"),
        ({"mechanism": b"NULL", "key": None}, "CURVE key required"),
        ({"mechanism": b"PLAIN"}, "CURVE key required"),
        ({"domain": b"other"}, "domain"),
        ({"version": b"2.0"}, "malformed"),
        ({"address": "127.0.0.2"}, "address"),
        ({"address": "::ffff:127.0.0.2"}, "address"),
        ({"address": "localhost:0:0:1"}, "address"),
    ],
)
def test_zap_refuses(
    context: zmq.Context[zmq.Socket[bytes]], change: dict[str, object], why: str
) -> None:
    alice, stranger = Identity.generate(), Identity.generate()
    auth = ZapAuthenticator(
        context,
        authorized_keys=AuthorizedKeys.from_mapping({alice.public_key: "alice"}),
        networks=parse_allowlist(["127.0.0.1/32"]),
    )
    key: object = change.pop("key", alice.curve_keypair()[0])
    if key == "stranger":
        key = stranger.curve_keypair()[0]
    assert key is None or isinstance(key, bytes)
    decision = auth.decide(_request(key, **change))  # type: ignore[arg-type]
    assert not decision.accepted
    assert why in decision.text
    assert decision.user_id == b""


def test_zap_refuses_short_requests(context: zmq.Context[zmq.Socket[bytes]]) -> None:
    auth = ZapAuthenticator(context, authorized_keys=AuthorizedKeys())
    assert not auth.decide([b"1.0", b"1", b"rain"]).accepted


def test_zap_looks_keys_up_live(context: zmq.Context[zmq.Socket[bytes]]) -> None:
    alice = Identity.generate()
    keys = AuthorizedKeys()
    auth = ZapAuthenticator(context, authorized_keys=keys)
    curve = alice.curve_keypair()[0]
    assert not auth.decide(_request(curve)).accepted
    keys.add(alice.public_key, "alice")
    assert auth.decide(_request(curve)).accepted


def test_zap_for_an_insecure_listener_checks_only_the_address(
    context: zmq.Context[zmq.Socket[bytes]],
) -> None:
    auth = ZapAuthenticator(
        context, authorized_keys=None, networks=parse_allowlist(["127.0.0.1/32"])
    )
    assert auth.decide(_request(None, mechanism=b"NULL")).accepted
    assert not auth.decide(_request(None, "127.0.0.2", mechanism=b"NULL")).accepted

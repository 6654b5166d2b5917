"""IP/CIDR allowlists: which peer addresses may connect.

Pure :mod:`ipaddress` code, shared by the server's config check and by transports (the ZeroMQ
ZAP handler), so an allowlist the config accepts is exactly one the transport enforces. Not
pyzmq's ``allow()``, which compares exact strings: ``10.0.0.0/8`` would match nothing and an
IPv6-enabled socket reports IPv4 peers as ``::ffff:a.b.c.d`` (RELIABILITY.md trap 2).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from .errors import ConfigError

__all__ = ["Address", "Network", "address_allowed", "normalize_address", "parse_allowlist"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _fold(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def normalize_address(text: str) -> Address | None:
    """The IP address in a peer address as libzmq reports it, or None if it is not an IP.

    Accepts ``127.0.0.1``, ``::1``, ``[::1]``, ``fe80::1%eth0`` (the zone is dropped) and folds
    IPv4-mapped IPv6 (``::ffff:127.0.0.1``) to IPv4. Never raises.
    """
    if not isinstance(text, str):
        return None
    candidate = text.strip()
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    candidate = candidate.split("%", 1)[0]
    try:
        return _fold(ipaddress.ip_address(candidate))
    except ValueError:
        return None


def parse_allowlist(entries: Iterable[str]) -> tuple[Network, ...]:
    """The networks of an allowlist such as ``["127.0.0.1/32", "10.0.0.0/8", "::1"]``.

    A bare address is a one-address network; an IPv4-mapped IPv6 network
    (``::ffff:10.0.0.0/104``) is folded to its IPv4 form so it matches what peers are
    normalised to. Raises ConfigError naming the first entry that is not a network (host bits
    set, as in ``10.0.0.1/8``, is an error: it usually hides a typo).
    """
    if isinstance(entries, str | bytes):
        raise ConfigError("allow: expected a list of networks, got a single string")
    networks: list[Network] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise ConfigError(f"allow: {entry!r} is not text such as '10.0.0.0/8'")
        text = entry.strip()
        if text.startswith("[") and "]" in text:
            text = text[1:].replace("]", "", 1)
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise ConfigError(f"allow: {entry!r} is not an IP network ({exc})") from None
        mapped = ipaddress.IPv6Network("::ffff:0:0/96")
        if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(mapped):
            base = network.network_address.ipv4_mapped
            assert base is not None  # a subnet of ::ffff:0:0/96 has an IPv4-mapped base
            network = ipaddress.IPv4Network(f"{base}/{network.prefixlen - 96}")
        networks.append(network)
    return tuple(networks)


def address_allowed(address: str, networks: Sequence[Network]) -> bool:
    """True if a peer at ``address`` may connect: no allowlist, or an IP inside one of its networks.

    Pure; never raises. A non-IP address is refused whenever ``networks`` is not empty.
    """
    if not networks:
        return True
    ip = normalize_address(address)
    if ip is None:
        return False
    return any(ip.version == network.version and ip in network for network in networks)

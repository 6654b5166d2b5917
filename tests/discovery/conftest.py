"""Fixtures for the discovery tests: multicast DNS on loopback only, or a skip that says why.

Every test here binds zeroconf to 127.0.0.1 (``interfaces=["127.0.0.1"]``, or
``RAIN_DISCOVERY_INTERFACES=127.0.0.1`` for the CLI): nothing is sent on another network.
Whether multicast works on loopback depends on the machine (a container without a multicast
route on ``lo``, a kernel that does not loop multicast back), so :func:`mdns` probes it
honestly once per session: a datagram sent to an mDNS group address on 127.0.0.1 must come
back to a socket that joined the group there, and zeroconf must be able to start on
127.0.0.1. Otherwise the tests that need it are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import select
import socket

import pytest

LOOPBACK = "127.0.0.1"
GROUP = "224.0.0.251"  # the mDNS group; the probe uses an ephemeral port, not 5353


def _multicast_problem() -> str | None:
    """None when a multicast datagram on 127.0.0.1 loops back; else what went wrong."""
    try:
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    except OSError as exc:
        return f"cannot open UDP sockets: {exc}"
    with receiver, sender:
        try:
            receiver.bind((GROUP, 0))
            port = receiver.getsockname()[1]
            membership = socket.inet_aton(GROUP) + socket.inet_aton(LOOPBACK)
            receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
            sender.setsockopt(
                socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOOPBACK)
            )
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            sender.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            sender.sendto(b"rain-probe", (GROUP, port))
        except OSError as exc:
            return f"multicast on {LOOPBACK} is not available here: {exc}"
        ready, _, _ = select.select([receiver], [], [], 2.0)
        if not ready:
            return f"a multicast datagram sent on {LOOPBACK} did not come back within 2 s"
        data = receiver.recv(64)
        if data != b"rain-probe":
            return f"the multicast probe came back as {data!r}"
    return None


def _zeroconf_problem() -> str | None:
    try:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncZeroconf
    except ImportError as exc:
        return f"the discovery extra (zeroconf) is not installed: {exc}"

    async def start_and_stop() -> None:
        zc = AsyncZeroconf(interfaces=[LOOPBACK], ip_version=IPVersion.V4Only)
        await zc.async_close()

    try:
        asyncio.run(start_and_stop())
    except OSError as exc:
        return f"zeroconf cannot start on {LOOPBACK}: {exc}"
    return None


_PROBED: list[str | None] = []


def skip_without_mdns() -> None:
    """Skip the calling test or fixture, printing the reason, unless mDNS works on loopback
    (probed once per session)."""
    if not _PROBED:
        _PROBED.append(_multicast_problem() or _zeroconf_problem())
    if _PROBED[0] is not None:
        print(f"skipping: {_PROBED[0]}")
        pytest.skip(_PROBED[0])


@pytest.fixture
def mdns(monkeypatch: pytest.MonkeyPatch) -> None:
    """mDNS on loopback, or a skip; the CLI and the library are confined to 127.0.0.1."""
    skip_without_mdns()
    monkeypatch.setenv("RAIN_DISCOVERY_INTERFACES", LOOPBACK)

"""Finding RAIN servers on the local network by name: mDNS/DNS-SD with ``zeroconf`` (optional).

Install the extra to use it: ``pip install 'rain-envelopes[discovery]'``. Without it, every
entry point here raises :class:`DiscoveryUnavailable` (a ConfigError) that says so; nothing
else in the package needs ``zeroconf``, and this module imports it only inside the functions
that use it.

Theory of operation.

- **Advertising** (:class:`Advertisement`, ``rain serve --advertise``): a server registers one
  DNS-SD service of type ``_rain._tcp.local.`` per process. Its TXT record says ``v=1``, the
  node identity (``node=station@lab``), the fingerprint of the server's public key
  (``fp=SHA256:...``, see :func:`key_fingerprint`) and its endpoints (``ep0=tcp://...``,
  ``ep1=...``): a wildcard bind (``tcp://0.0.0.0:4505``) is written out once per advertised
  address, and endpoints another host cannot reach (``ipc://``, ``memory://``) are left out.
  The instance name is the node with dots replaced (DNS-SD instance labels cannot hold dots);
  a clash gets a numbered name from zeroconf, and clients match on the TXT ``node``, never on
  the instance name. :meth:`Advertisement.close` sends the goodbye records (TTL 0), so
  browsers drop the server at once rather than when the records expire.
- **Browsing** (:func:`discover`, ``rain discover``): collect every ``_rain._tcp`` service
  that answers within a timeout (mDNS has no "that was everyone"), fetch each one's TXT,
  SRV and address records, and keep those whose TXT record reads as a RAIN advertisement.
- **Connecting by name** (``rain://station@lab`` wherever an endpoint is taken: ``connect``,
  ``Client``, every ``rain`` client command): the ``rain`` scheme's transport factory
  (:data:`DISCOVERY`) makes a :class:`DiscoveredTransport`, which at ``open()`` resolves the
  name (:func:`resolve`), picks an advertised endpoint, and opens the real transport to it
  with the caller's security unchanged; every other call is handed to that transport. The
  reconnecting client therefore resolves the name again on every reconnection, so a server
  that moved to another address is found again.

Discovery never decides trust. Everything a TXT record says is a claim that anyone on the LAN
can make. Connecting by name needs the server key pinned as for any endpoint (``server_key=``,
``--server-key``, or a known-hosts line for ``rain://station@lab``); the advertised
fingerprint only lets a client pass over a server that is certainly not the one pinned (an
impostor, or a second server with the same name) and refuse early with a message that names
both fingerprints. The proof is the CURVE handshake with the pinned key, exactly as for a
``tcp://`` endpoint; a server that advertises the pinned fingerprint but fails that handshake
is refused, naming both fingerprints again. Advertising is off by default: it tells everyone
on the network that an instrument is here, what it is called and where it listens.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .envelopes import SessionEncryption
from .errors import (
    ConfigError,
    EnvelopeValidationError,
    SecurityCause,
    TransportClosed,
    TransportError,
    TransportSecurityError,
)
from .node import Node
from .transport import (
    ClientSecurity,
    ServerSecurity,
    Transport,
    TransportFactory,
    TransportListener,
    transport_factory,
)

if TYPE_CHECKING:
    from zeroconf import ServiceStateChange, Zeroconf
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

__all__ = [
    "DISCOVERY",
    "SCHEME",
    "SERVICE_TYPE",
    "Advertisement",
    "Browser",
    "DiscoveredServer",
    "DiscoveredTransport",
    "DiscoveryUnavailable",
    "KeyMismatch",
    "ServerNotFound",
    "discover",
    "format_table",
    "key_fingerprint",
    "require",
    "resolve",
]

log = logging.getLogger("rain.discovery")

#: The DNS-SD service type RAIN servers advertise.
SERVICE_TYPE = "_rain._tcp.local."
#: The endpoint scheme that names a server to find: ``rain://station@lab``.
SCHEME = "rain"
#: The TXT record's format version (``v=1``).
TXT_VERSION = "1"
#: The environment variable that lists the addresses to browse on (comma-separated), for
#: hosts with several networks; unset: every IPv4 interface.
INTERFACES_ENV = "RAIN_DISCOVERY_INTERFACES"
#: Seconds a client looks for a named server before giving up.
RESOLVE_TIMEOUT = 3.0
#: Seconds a client waits for the pinned server once only servers with another key answered:
#: more than the second a responder may hold an answer back (RFC 6762 answers a record at most
#: once a second by multicast), so a quicker impostor cannot win the race.
MISMATCH_GRACE = 1.5
#: Most endpoints one advertisement lists (a TXT record is small).
MAX_ENDPOINTS = 16

_EXTRA_HINT = "pip install 'rain-envelopes[discovery]'"
_WILDCARDS = {"*", "0.0.0.0"}


class DiscoveryUnavailable(ConfigError):
    """The ``discovery`` extra (the ``zeroconf`` package) is not installed."""


class ServerNotFound(TransportError):
    """No server with the name answered on the local network in time."""


class KeyMismatch(TransportSecurityError):
    """A server found by name does not hold the pinned key: its advertised fingerprint differs
    (``cause`` None: nothing was tried), or it failed the CURVE handshake with the pinned key
    (``cause`` :attr:`SecurityCause.SERVER_KEY`). The message names both fingerprints."""

    def __init__(self, message: str, cause: SecurityCause | None = None) -> None:
        super().__init__(message)
        self.cause = cause


def require() -> None:
    """Raise :class:`DiscoveryUnavailable`, naming the extra to install, when ``zeroconf`` is
    missing."""
    try:
        import zeroconf.asyncio  # noqa: F401
    except ImportError as exc:
        raise DiscoveryUnavailable(
            f"LAN discovery needs the zeroconf package ({exc}): {_EXTRA_HINT}"
        ) from None


def key_fingerprint(key: bytes) -> str:
    """``SHA256:`` and the unpadded base64 of the SHA-256 of the 32-byte Ed25519 public key.

    What servers advertise and what messages name: short enough to read aloud, long enough that
    no other key has it. Raises ValueError for anything but 32 bytes.
    """
    if not isinstance(key, bytes | bytearray) or len(key) != 32:
        raise ValueError("a fingerprint is taken of a 32-byte Ed25519 public key")
    digest = hashlib.sha256(bytes(key)).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def node_of(endpoint: str) -> Node:
    """The node a ``rain://name@domain[/instance]`` endpoint names. Raises ConfigError."""
    scheme, sep, rest = endpoint.partition("://")
    if not sep or scheme.lower() != SCHEME:
        raise ConfigError(f"{endpoint!r} is not a rain:// endpoint such as rain://station@lab")
    try:
        node = Node.parse(rest.strip())
    except EnvelopeValidationError as exc:
        raise ConfigError(f"{endpoint!r}: not a node name such as station@lab: {exc}") from None
    if not node.name or not node.domain:
        raise ConfigError(f"{endpoint!r}: expected a node name such as rain://station@lab")
    return node


def interfaces_from_env() -> list[str] | None:
    """The addresses ``RAIN_DISCOVERY_INTERFACES`` lists, or None (every interface)."""
    text = os.environ.get(INTERFACES_ENV, "")
    found = [item for item in text.replace(",", " ").split() if item]
    return _checked_interfaces(found, INTERFACES_ENV) if found else None


def _chosen_interfaces(
    interfaces: Sequence[str] | None, where: str = "interfaces"
) -> list[str] | None:
    """The addresses to browse or advertise on: ``interfaces`` (checked) when any are given,
    else ``RAIN_DISCOVERY_INTERFACES``, else None (every interface)."""
    if not interfaces:
        return interfaces_from_env()
    return _checked_interfaces(interfaces, where)


def interface_address(text: str) -> str:
    """``text`` as an interface address discovery can use (IPv4 only), in its usual spelling.
    The one rule for every place that takes one (a server's ``[discovery] interfaces``,
    ``--interface``, ``RAIN_DISCOVERY_INTERFACES``, ``discovery_interfaces``). Raises
    ValueError saying what is wrong."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
    if address.version != 4:
        raise ValueError(f"{text}: discovery uses IPv4 only")
    return str(address)


def _checked_interfaces(addresses: Iterable[str], where: str) -> list[str]:
    out = []
    for text in addresses:
        try:
            out.append(interface_address(text))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return out


# ------------------------------------------------------------------------------ what is found


@dataclass(frozen=True)
class DiscoveredServer:
    """One advertisement, as read from the network. Every field is the server's *claim*."""

    #: The node identity the server says it has (``station@lab``).
    node: str
    #: The fingerprint of the public key it says it has (None: an insecure server).
    fingerprint: str | None
    #: Endpoints to reach it, in the server's order.
    endpoints: tuple[str, ...]
    #: The addresses its host name resolved to.
    addresses: tuple[str, ...] = ()
    #: The DNS-SD instance name (``station@lab._rain._tcp.local.``).
    service: str = ""
    #: The host name the service points to (``host.local.``).
    host: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "fingerprint": self.fingerprint,
            "endpoints": list(self.endpoints),
            "addresses": list(self.addresses),
            "service": self.service,
            "host": self.host,
        }

    def matches(self, key: bytes) -> bool:
        """True when the advertised fingerprint is that of ``key`` (a claim, not a proof)."""
        return self.fingerprint == key_fingerprint(key)


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _read_info(info: AsyncServiceInfo) -> DiscoveredServer | None:
    """The advertisement an answered service describes, or None when it is not a valid one."""
    props: Mapping[bytes, bytes | None] = info.properties or {}
    if _text(props.get(b"v")) != TXT_VERSION:
        return None
    node_text = _text(props.get(b"node"))
    if not node_text:
        return None
    try:
        node = Node.parse(node_text)
    except EnvelopeValidationError:
        return None
    if not node.name or not node.domain:
        return None
    fingerprint = _text(props.get(b"fp"))
    if fingerprint is not None and not fingerprint.startswith("SHA256:"):
        return None
    endpoints = []
    for index in range(MAX_ENDPOINTS):
        endpoint = _text(props.get(f"ep{index}".encode()))
        if endpoint is None:
            break
        # Only what an advertisement writes (advertised_endpoints): tcp://. Another scheme
        # from the network (a rain:// that would resolve again, an ipc:// path on this host)
        # is someone else's claim, not a way to reach a server on another host.
        if endpoint.lower().startswith("tcp://") and not any(ch.isspace() for ch in endpoint):
            endpoints.append(endpoint)
    addresses = tuple(info.parsed_addresses())
    if not endpoints and info.port:  # no usable ep: the SRV port on each address
        endpoints = [f"tcp://{address}:{info.port}" for address in addresses]
    if not endpoints:
        return None
    return DiscoveredServer(
        node=str(node), fingerprint=fingerprint, endpoints=tuple(endpoints),
        addresses=addresses, service=info.name, host=info.server or "",
    )


# ------------------------------------------------------------------------------ browsing


def _zeroconf(interfaces: Sequence[str] | None) -> AsyncZeroconf:
    """An AsyncZeroconf on ``interfaces`` (IPv4 addresses; None: every interface)."""
    require()
    from zeroconf import InterfaceChoice, IPVersion
    from zeroconf.asyncio import AsyncZeroconf

    chosen: Any = list(interfaces) if interfaces else InterfaceChoice.All
    try:
        return AsyncZeroconf(interfaces=chosen, ip_version=IPVersion.V4Only)
    except OSError as exc:
        raise TransportError(f"cannot use multicast DNS on {chosen}: {exc}") from None


class Browser:
    """Browses ``_rain._tcp`` while open (``async with Browser(interfaces) as browser``) and
    keeps what answered: ``found`` by service name, and the changes, (service name, server or
    None when it went away), for :meth:`next_change`."""

    def __init__(
        self, interfaces: Sequence[str] | None = None, request_timeout: float = 1.0
    ) -> None:
        self.interfaces = interfaces
        self.request_timeout = request_timeout
        self.found: dict[str, DiscoveredServer] = {}
        self.changes: asyncio.Queue[tuple[str, DiscoveredServer | None]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._zc: AsyncZeroconf | None = None
        self._browser: Any = None

    async def __aenter__(self) -> Browser:
        require()
        from zeroconf.asyncio import AsyncServiceBrowser

        self._zc = _zeroconf(self.interfaces)
        try:
            self._browser = AsyncServiceBrowser(
                self._zc.zeroconf, [SERVICE_TYPE], handlers=[self._on_change]
            )
        except BaseException:
            await self._zc.async_close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zc is not None:
            await self._zc.async_close()

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            if self.found.pop(name, None) is not None:
                self.changes.put_nowait((name, None))
            return
        task = asyncio.ensure_future(self._fetch(zeroconf, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch(self, zeroconf: Zeroconf, name: str) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        info = AsyncServiceInfo(SERVICE_TYPE, name)
        try:
            answered = await info.async_request(zeroconf, int(self.request_timeout * 1000))
        except Exception as exc:  # a malformed answer is someone else's problem, not ours
            log.debug("cannot read %s: %s", name, exc)
            return
        server = _read_info(info) if answered else None
        if server is None:
            log.debug("%s is not a RAIN advertisement we can read; ignored", name)
            return
        self.found[name] = server
        self.changes.put_nowait((name, server))

    async def next_change(self, deadline: float) -> tuple[str, DiscoveredServer | None] | None:
        """The next change, or None at ``deadline`` (loop time)."""
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return None
        try:
            async with asyncio.timeout(left):
                return await self.changes.get()
        except TimeoutError:
            return None


async def discover(
    timeout: float = 2.0, *, interfaces: Sequence[str] | None = None
) -> list[DiscoveredServer]:
    """Every RAIN server that answers on the local network within ``timeout`` seconds, sorted
    by node. ``interfaces``: IPv4 addresses to browse on (default: ``$RAIN_DISCOVERY_INTERFACES``,
    else every interface). Raises DiscoveryUnavailable without the extra, TransportError when
    multicast DNS cannot be used."""
    chosen = _chosen_interfaces(interfaces)
    async with Browser(chosen, request_timeout=min(timeout, 1.0)) as browser:
        deadline = asyncio.get_running_loop().time() + timeout
        while await browser.next_change(deadline) is not None:
            pass
        found = list(browser.found.values())
    return sorted(found, key=lambda server: (server.node.lower(), server.service))


async def resolve(
    node: Node | str,
    *,
    server_key: bytes | None,
    timeout: float = RESOLVE_TIMEOUT,
    interfaces: Sequence[str] | None = None,
) -> DiscoveredServer:
    """The server advertising ``node`` whose advertised fingerprint is ``server_key``'s (any
    server with that name when ``server_key`` is None), as soon as one answers.

    Servers with the name but another fingerprint are passed over (an impostor must not win a
    race against the real server); if only such servers answer, :class:`KeyMismatch` is raised
    :data:`MISMATCH_GRACE` seconds after the first, naming both fingerprints. Raises
    :class:`ServerNotFound` when no server with the name answers in ``timeout``.
    """
    wanted = Node.coerce(node)
    expected = key_fingerprint(server_key) if server_key is not None else None
    chosen = _chosen_interfaces(interfaces)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    others: list[DiscoveredServer] = []
    async with Browser(chosen, request_timeout=min(timeout, 1.0)) as browser:
        while True:
            change = await browser.next_change(deadline)
            if change is None:
                break
            server = change[1]
            if server is None or Node.parse(server.node) != wanted:
                continue
            if expected is None or server.fingerprint == expected:
                return server
            log.warning(
                "%s at %s advertises key fingerprint %s, not the pinned %s: passed over",
                server.node, ", ".join(server.endpoints), server.fingerprint, expected,
            )
            if not others:
                deadline = min(deadline, loop.time() + MISMATCH_GRACE)
            others.append(server)
    if others:
        first = others[0]
        raise KeyMismatch(
            f"refusing {wanted} found on the local network at {', '.join(first.endpoints)}: it"
            f" advertises key fingerprint {first.fingerprint or '(none: an insecure server)'},"
            f" but the pinned server key has fingerprint {expected}. Discovery never decides"
            " trust: if the server's key really changed, pin the new one (--server-key or"
            " the known-hosts file)"
        )
    raise ServerNotFound(
        f"no server named {wanted} answered on the local network within {timeout:g} s"
        " (`rain discover` lists the servers that do; multicast DNS does not cross routers)"
    )


def format_table(
    servers: Sequence[DiscoveredServer], pinned: Callable[[str], bytes | None] | None = None
) -> list[str]:
    """Lines of a table of ``servers`` for people: node, key fingerprint, endpoints, and, when
    ``pinned`` (node -> pinned key or None) is given, whether the advertised fingerprint is that
    of the key pinned for ``rain://NODE`` ("pinned", "DIFFERS" or "-" when none is pinned)."""
    header = ["NODE", "KEY FINGERPRINT", "ENDPOINTS"] + (["PINNED KEY"] if pinned else [])
    rows = [header]
    for server in servers:
        row = [server.node, server.fingerprint or "(none: insecure)", " ".join(server.endpoints)]
        if pinned is not None:
            key = pinned(server.node)
            row.append("-" if key is None else "pinned" if server.matches(key) else "DIFFERS")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return [
        ("  ".join(f"{cell:<{width}}" for cell, width in zip(row, widths, strict=False))
         + "  " + row[-1]).rstrip()
        for row in rows
    ]


# ------------------------------------------------------------------------------ advertising


def _host_addresses() -> list[str]:
    """This host's IPv4 addresses other than loopback (loopback alone when it has none)."""
    import ifaddr  # zeroconf's own dependency

    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_loopback:
                found.append(ip.ip)
    return sorted(set(found)) or ["127.0.0.1"]


def advertised_endpoints(endpoints: Iterable[str], addresses: Sequence[str]) -> list[str]:
    """The endpoints another host can use: ``tcp://`` ones, a wildcard host written out once
    per address in ``addresses``; others (``ipc://``, ``memory://``, IPv6 wildcards) left out.
    """
    out: list[str] = []
    for endpoint in endpoints:
        if not endpoint.lower().startswith("tcp://"):
            log.info("not advertising %s: only tcp:// endpoints reach other hosts", endpoint)
            continue
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        host = host.rsplit(";", 1)[-1]
        if host in _WILDCARDS:
            out.extend(f"tcp://{address}:{port}" for address in addresses)
        elif host.startswith("[") or host == "::":
            log.info("not advertising %s: discovery is IPv4 only", endpoint)
        else:
            out.append(f"tcp://{host}:{port}")
    return list(dict.fromkeys(out))[:MAX_ENDPOINTS]


def _is_loopback(endpoint: str) -> bool:
    host = endpoint[len("tcp://"):].rpartition(":")[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def _instance_label(node: str) -> str:
    # DNS-SD instance labels are free text but cannot hold a dot here, and at most 63 bytes.
    label = node.replace(".", "-")
    while len(label.encode("utf-8")) > 63:
        label = label[:-1]
    return label


def _host_label() -> str:
    name = socket.gethostname().split(".", 1)[0]
    safe = "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in name).strip("-")
    return (safe or "rain-host")[:63] + ".local."


@dataclass
class Advertisement:
    """A server's advertisement on the local network: ``await start()`` and ``await close()``
    (or ``async with``). ``interfaces``: IPv4 addresses to advertise on (default:
    ``$RAIN_DISCOVERY_INTERFACES``, else every interface, announcing every non-loopback
    address)."""

    node: Node | str
    endpoints: Sequence[str]
    public_key: bytes | None
    interfaces: Sequence[str] | None = None
    #: The DNS-SD instance name to ask for (default: the node, dots replaced); on a clash
    #: zeroconf picks another. Clients match the TXT ``node``, never this name.
    instance: str | None = None
    #: The endpoints in the TXT record, and the service name registered (set by start()).
    advertised: list[str] = field(default_factory=list)
    service: str = ""
    _zc: AsyncZeroconf | None = field(default=None, repr=False)
    _info: AsyncServiceInfo | None = field(default=None, repr=False)
    _announcing: Awaitable[Any] | None = field(default=None, repr=False)

    @property
    def fingerprint(self) -> str | None:
        return key_fingerprint(self.public_key) if self.public_key is not None else None

    async def start(self) -> None:
        """Register the service (zeroconf first probes that no one else has the name: about
        1.2 s).

        Raises DiscoveryUnavailable without the extra, ConfigError when no endpoint can be
        advertised, TransportError when multicast DNS cannot be used.
        """
        require()
        from zeroconf import NonUniqueNameException
        from zeroconf.asyncio import AsyncServiceInfo

        node = str(Node.coerce(self.node))
        interfaces = _chosen_interfaces(self.interfaces, "discovery.interfaces")
        addresses = list(interfaces) if interfaces else _host_addresses()
        self.advertised = advertised_endpoints(self.endpoints, addresses)
        if not self.advertised:
            raise ConfigError(
                f"nothing to advertise for {node}: no tcp:// endpoint among"
                f" {', '.join(self.endpoints) or 'none'}"
            )
        if all(_is_loopback(endpoint) for endpoint in self.advertised) and not all(
            ipaddress.ip_address(address).is_loopback for address in addresses
        ):
            log.warning(
                "advertising %s with loopback endpoints only (%s): other hosts cannot reach"
                " them; listen on this host's address or on tcp://0.0.0.0:PORT",
                node, " ".join(self.advertised),
            )
        properties: dict[str, str] = {"v": TXT_VERSION, "node": node}
        if self.fingerprint is not None:
            properties["fp"] = self.fingerprint
        for index, endpoint in enumerate(self.advertised):
            properties[f"ep{index}"] = endpoint
        port = int(self.advertised[0].rsplit(":", 1)[1])
        info = AsyncServiceInfo(
            SERVICE_TYPE, f"{_instance_label(self.instance or node)}.{SERVICE_TYPE}", port=port,
            properties=properties, parsed_addresses=addresses, server=_host_label(),
        )
        zc = _zeroconf(interfaces)
        try:
            # The first await probes the name (about 1.2 s) and sends the first announcement;
            # the two repeats that follow need not be waited for.
            self._announcing = await zc.async_register_service(info, allow_name_change=True)
        except (OSError, NonUniqueNameException) as exc:
            await zc.async_close()
            raise TransportError(f"cannot advertise {node}: {exc}") from None
        except BaseException:
            await zc.async_close()
            raise
        self._zc, self._info, self.service = zc, info, info.name
        log.info("advertising %s as %s: %s", node, info.name, " ".join(self.advertised))

    async def close(self) -> None:
        """Withdraw the service (goodbye records, so browsers drop it now). Idempotent."""
        zc, info, self._zc, self._info = self._zc, self._info, None, None
        announcing, self._announcing = self._announcing, None
        if zc is None:
            return
        if announcing is not None:
            future = asyncio.ensure_future(announcing)
            future.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await future
        try:
            if info is not None:
                with contextlib.suppress(Exception):
                    done = await zc.async_unregister_service(info)
                    await done
        finally:
            await zc.async_close()

    async def __aenter__(self) -> Advertisement:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# ------------------------------------------------------------------------------ connecting by name


async def _first_reachable(endpoints: Sequence[str], timeout: float) -> str:
    """The first of several tcp:// endpoints that accepts a TCP connection (the first one when
    none does, or when there is only one: its transport then says what is wrong)."""
    if len(endpoints) < 2:
        return endpoints[0]
    for endpoint in endpoints:
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        if not endpoint.lower().startswith("tcp://") or not port.isdigit():
            continue
        try:
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except (OSError, TimeoutError):
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return endpoint
    return endpoints[0]


class DiscoveredTransport(Transport):
    """A client transport to the server a ``rain://name@domain`` endpoint names.

    ``open()`` resolves the name (:func:`resolve`) and opens the transport of the endpoint it
    picks with the same :class:`ClientSecurity`; the rest is handed to that transport. Options
    ``discovery_timeout`` (seconds, default 3) and ``discovery_interfaces`` (IPv4 addresses)
    are its own; the others go to the real transport. Raises ConfigError at construction for
    a bad name, or a secured connection without a pinned server key: discovery never supplies
    one.
    """

    def __init__(
        self,
        endpoint: str,
        security: ClientSecurity | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        require()
        self.endpoint = endpoint
        self.node = node_of(endpoint)
        self.security = security or ClientSecurity()
        rest = dict(options or {})
        timeout = rest.pop("discovery_timeout", RESOLVE_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError(f"discovery_timeout: expected positive seconds, got {timeout!r}")
        self.discovery_timeout = float(timeout)
        interfaces = rest.pop("discovery_interfaces", None)
        self.interfaces = (
            _checked_interfaces(interfaces, "discovery_interfaces") if interfaces else None
        )
        self._options = rest
        if not self.security.insecure:
            if self.security.server_key is None:
                raise ConfigError(
                    f"{endpoint}: connecting by name needs the server's key all the same;"
                    " discovery never decides trust. Pin it with server_key= (--server-key),"
                    f" or a known-hosts line '{endpoint} ed25519:...'"
                )
            # The real transport is a CURVE link (only tcp:// endpoints are advertised).
            self.encryption = SessionEncryption.CURVE
        self.server: DiscoveredServer | None = None
        self._inner: Transport | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<DiscoveredTransport {self.endpoint} -> {self._inner!r}>"

    @property
    def closed(self) -> bool:
        return self._closed or (self._inner is not None and self._inner.closed)

    async def open(self) -> None:
        """Find the server and open the link to it. Raises ServerNotFound, KeyMismatch, or
        what the real transport's ``open`` raises."""
        if self._closed:
            raise TransportClosed(f"{self.endpoint}: the transport is closed")
        if self._inner is not None:
            await self._inner.open()
            return
        key = None if self.security.insecure else self.security.server_key
        server = await resolve(
            self.node, server_key=key, timeout=self.discovery_timeout,
            interfaces=self.interfaces,
        )
        endpoint = await _first_reachable(server.endpoints, min(1.0, self.discovery_timeout))
        if self._closed:
            raise TransportClosed(f"{self.endpoint}: the transport is closed")
        log.info("%s found at %s", self.node, endpoint)
        inner = transport_factory(endpoint).connect(endpoint, self.security, self._options or None)
        self.server, self._inner = server, inner
        try:
            await inner.open()
        except TransportSecurityError as exc:
            if exc.cause != SecurityCause.SERVER_KEY or key is None:
                raise
            raise KeyMismatch(
                f"refusing {self.node} found on the local network at {endpoint}: it advertises"
                f" key fingerprint {server.fingerprint}, but it did not prove in the CURVE"
                f" handshake that it holds the pinned key (fingerprint {key_fingerprint(key)})."
                " Something on the network claims the server's name and fingerprint",
                SecurityCause.SERVER_KEY,
            ) from exc
        self.peer_identity = inner.peer_identity
        self.peer_address = inner.peer_address

    async def _opened(self) -> Transport:
        if self._inner is None:
            await self.open()
        assert self._inner is not None
        return self._inner

    async def send(self, data: bytes) -> None:
        await (await self._opened()).send(data)

    async def receive(self) -> bytes:
        return await (await self._opened()).receive()

    async def receive_batch(self) -> list[bytes]:
        return await (await self._opened()).receive_batch()

    async def send_batch(self, frames: list[bytes]) -> None:
        await (await self._opened()).send_batch(frames)

    async def close(self) -> None:
        self._closed = True
        if self._inner is not None:
            await self._inner.close()


class DiscoveryTransportFactory(TransportFactory):
    """The ``rain://`` scheme: clients only (a server listens on a real endpoint)."""

    secure = True

    def connect(
        self,
        endpoint: str,
        security: ClientSecurity | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> Transport:
        return DiscoveredTransport(endpoint, security, options)

    def listen(
        self,
        endpoints: Sequence[str],
        security: ServerSecurity | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> TransportListener:
        raise ConfigError(
            f"{', '.join(endpoints)}: rain:// names a server to find; a server listens on a real"
            " endpoint such as tcp://0.0.0.0:4505 and advertises it ([discovery] advertise = true)"
        )


#: The factory :func:`rain_envelopes.transport.transport_factory` returns for ``rain://``.
DISCOVERY = DiscoveryTransportFactory()


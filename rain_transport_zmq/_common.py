"""Pieces the ZeroMQ client and listener share: the control messages, the client context,
socket options both roles set, and endpoint checks. The errors this package raises are all in
:mod:`rain_envelopes.errors` (``HandshakeFailed`` and ``PeerGone`` included), re-exported here
and from the package for code written when they lived here.

How many sessions one process can hold. Every client transport of a process shares one zmq
context (one I/O thread, however many connections) and holds three zmq sockets in it: its
DEALER, the PAIR that reads the DEALER's monitor events, and the PAIR libzmq makes inside for
the monitor to write to. libzmq caps the sockets of a context at ``ZMQ_MAX_SOCKETS``, 1023 by
default, so with the default one process stopped at 341 sessions (trap 14). The shared client
context is therefore made with ``MAX_SOCKETS`` at libzmq's ceiling (``ZMQ_SOCKET_LIMIT``, 65535
on Linux): the slot table costs 8 bytes per slot, about 0.5 MiB.

Sockets and connections are file descriptors too: about five per session when client and
server share a process (three socket mailboxes and the TCP connection's two ends), so 1,000
sessions need about 5,000 descriptors, past the common soft limit of 1024. On first use (the
client context, a listener's start) :func:`raise_open_files_limit` raises this process's soft
``RLIMIT_NOFILE`` to its hard limit (capped at :data:`OPEN_FILES_TARGET`), as the Go runtime
does at start-up: the hard limit is the administrator's bound, the soft one only a default for
programs that use ``select()``, which neither libzmq (epoll) nor asyncio (epoll) do. It never
lowers a limit. Past either limit, opening a transport raises TransportError naming the limit,
never a raw ``zmq.ZMQError``.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Iterable

import zmq

from rain_envelopes.errors import ConfigError, HandshakeFailed, PeerGone, TransportError

from .options import ZmqOptions

__all__ = [
    "BYE",
    "CONTROL",
    "HELLO",
    "ZERO_COPY_FROM",
    "HandshakeFailed",
    "PeerGone",
    "apply_common",
    "check_endpoint",
    "client_context",
    "raise_open_files_limit",
    "socket_error",
    "to_ms",
]

log = logging.getLogger("rain_transport_zmq")

# Control messages are two parts, the first empty; envelopes are always one part.

CONTROL = b""
HELLO = b"hello"
BYE = b"bye"

#: Frames at least this large are sent zero-copy; below it (pyzmq's own threshold) the
#: bookkeeping of a zero-copy send costs more than the copy.
ZERO_COPY_FROM = 64 * 1024

_shared_context: zmq.Context[zmq.Socket[bytes]] | None = None
_shared_context_lock = threading.Lock()


#: The soft RLIMIT_NOFILE :func:`raise_open_files_limit` aims at (never above the hard limit).
OPEN_FILES_TARGET = 65536

_limit_raised = False


def raise_open_files_limit() -> None:
    """Raise this process's soft limit on open files towards its hard limit, once.

    Never lowers it, never raises it past the hard limit or :data:`OPEN_FILES_TARGET`; a
    refusal by the OS is logged at debug level and otherwise ignored (the limit is then what
    it was, and running out is reported when a transport opens).
    """
    global _limit_raised
    if _limit_raised:
        return
    _limit_raised = True
    try:
        import resource  # POSIX only; elsewhere there is no such limit to raise
    except ImportError:
        return
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = OPEN_FILES_TARGET if hard == resource.RLIM_INFINITY else min(
            hard, OPEN_FILES_TARGET
        )
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.debug("raised the open files limit from %d to %d", soft, target)
    except (OSError, ValueError) as exc:
        log.debug("could not raise the open files limit: %s", exc)


def client_context() -> zmq.Context[zmq.Socket[bytes]]:
    """The zmq context every client transport of this process shares (made on first use).

    One context per process, never one per connection: a context is an I/O thread. Its socket
    limit is libzmq's ceiling, not the default 1023 (see the module docstring). Raises
    TransportError when the context cannot be made (out of file descriptors).
    """
    global _shared_context
    with _shared_context_lock:
        if _shared_context is None or _shared_context.closed:
            raise_open_files_limit()
            try:
                context: zmq.Context[zmq.Socket[bytes]] = zmq.Context(1)
                context.set(zmq.MAX_SOCKETS, context.get(zmq.SOCKET_LIMIT))
            except zmq.ZMQError as exc:
                raise socket_error("cannot make the ZeroMQ client context", exc) from None
            _shared_context = context
        return _shared_context


def _open_files_limit() -> str:
    try:
        import resource
    except ImportError:
        return "an unknown number"
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return "any number" if soft == resource.RLIM_INFINITY else str(soft)


def socket_error(what: str, exc: zmq.ZMQError) -> TransportError:
    """A TransportError for a zmq error met while making sockets, naming the limit at fault."""
    if exc.errno in (errno.EMFILE, errno.ENFILE):
        return TransportError(
            f"{what}: too many open sockets or files ({exc}). Each ZeroMQ session uses three"
            " zmq sockets (a context allows ZMQ_MAX_SOCKETS of them) and a few file"
            f" descriptors (this process may open {_open_files_limit()}: raise ulimit -n);"
            " close sessions you do not use"
        )
    return TransportError(f"{what}: {exc}")


# ------------------------------------------------------------------------------ helpers


def check_endpoint(endpoint: object) -> str:
    if not isinstance(endpoint, str) or "://" not in endpoint:
        raise ConfigError(f"endpoint {endpoint!r}: expected tcp://HOST:PORT or ipc://PATH")
    scheme = endpoint.split("://", 1)[0].lower()
    if scheme not in ("tcp", "ipc"):
        raise ConfigError(f"endpoint {endpoint!r}: the ZeroMQ transport handles tcp:// and ipc://")
    return endpoint


def _wants_ipv6(endpoint: str, options: ZmqOptions) -> bool:
    return options.ipv6 or endpoint.lower().startswith("tcp://[")


def to_ms(seconds: float) -> int:
    return -1 if seconds < 0 else round(seconds * 1000)


def apply_common(sock: zmq.Socket[bytes], options: ZmqOptions, endpoints: Iterable[str]) -> None:
    """The options both roles set; IPV6 when any of the socket's ``endpoints`` needs it."""
    sock.setsockopt(zmq.LINGER, to_ms(options.linger))
    sock.setsockopt(zmq.HEARTBEAT_IVL, to_ms(options.heartbeat_ivl))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, to_ms(options.heartbeat_timeout))
    sock.setsockopt(zmq.HEARTBEAT_TTL, to_ms(options.heartbeat_ttl))
    sock.setsockopt(zmq.SNDBUF, options.tcp_sndbuf)
    sock.setsockopt(zmq.RCVBUF, options.tcp_rcvbuf)
    if any(_wants_ipv6(endpoint, options) for endpoint in endpoints):
        sock.setsockopt(zmq.IPV6, 1)

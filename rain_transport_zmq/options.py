"""Socket and transport options for the ZeroMQ transport: one frozen object, every value explained.

The defaults are the ones RELIABILITY.md recommends for a server ROUTER and a client DEALER.
Each field can be overridden (``ZmqOptions(server_rcvhwm=128)``, or a mapping such as a TOML
table through :meth:`ZmqOptions.from_mapping`), but each default was chosen against a measured
failure, so the docstring below says what changing it costs. Times are seconds (floats); they are
converted to libzmq's milliseconds when the sockets are made.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rain_envelopes.errors import ConfigError

__all__ = ["ZmqOptions"]

KIB = 1024
MIB = 1024 * KIB

# libzmq stores HEARTBEAT_TTL in deciseconds in a 16-bit field: larger values are refused.
_MAX_HEARTBEAT_TTL = 6553.599


@dataclass(frozen=True, slots=True)
class ZmqOptions:
    """Options of the ZeroMQ transport (reference table).

    ``server_*`` fields apply to the listener's ROUTER socket, ``client_*`` fields to a client's
    DEALER socket; the others apply to both.

    =========================  =========  =================================================
    field                      default    why this value
    =========================  =========  =================================================
    server_max_message_size    256 KiB    MAXMSGSIZE. Caps what one frame can make the
                                          server allocate. A peer that sends a larger frame
                                          is disconnected by libzmq without any error
                                          message: the client only sees its link drop
                                          (its transport closes). The size is checked on
                                          the wire, so with CURVE the largest envelope is
                                          33 bytes less. -1 = no limit (unsafe).
    client_max_message_size    4 MiB      MAXMSGSIZE on clients: servers are trusted more
                                          (the key is pinned), but a bound still protects
                                          a client from a hostile endpoint.
    server_rcvhwm              64         RCVHWM per peer. HWMs count frames, not bytes:
                                          64 x 256 KiB bounds what one flooding peer can
                                          park in libzmq to 16 MiB (at default HWMs a
                                          flooder grew a server by 255 MiB).
    server_sndhwm              1000       SNDHWM per peer. Room for bursts of replies and
                                          notifications; past it ``send`` raises QueueFull
                                          for that peer only (ROUTER_MANDATORY).
    client_rcvhwm              1000       RCVHWM on clients: absorbs notification bursts.
    client_sndhwm              100        SNDHWM on clients: a client far ahead of its
                                          server should wait (``send`` blocks up to
                                          ``send_timeout``), not queue thousands of
                                          commands that will be stale on arrival.
    router_mandatory           True       ROUTER_MANDATORY. Without it a ROUTER drops
                                          frames to full or unknown peers silently
                                          (197,120 of 200,000 lost in a test). With it,
                                          ``send`` raises QueueFull. Do not turn off.
    router_handover            False      ROUTER_HANDOVER. A routing id is chosen by the
                                          client and proves nothing: a second connection
                                          must not take over a live peer's routing id.
    server_handshake_ivl       10 s       HANDSHAKE_IVL. A raw TCP peer that never speaks
                                          ZMTP holds a connection (and a file descriptor)
                                          this long; the libzmq default is 30 s.
    client_handshake_ivl       30 s       HANDSHAKE_IVL on clients: slow links and busy
                                          servers need time; ``open_timeout`` bounds the
                                          caller's wait anyway.
    heartbeat_ivl              2 s        HEARTBEAT_IVL: each end sends a PING this often
                                          (and answers the peer's). Without heartbeats a
                                          silently dropped link can take TCP minutes to
                                          notice. Idle cost per session at 2 s: about
                                          260 bytes/s on the wire, both ways together, and
                                          under 0.01 % of a core on each side.
    heartbeat_timeout          4 s        HEARTBEAT_TIMEOUT: the link is declared dead (the
                                          transport closes, the channel ends with "link
                                          lost") when nothing at all arrives this long after
                                          a PING we sent. PINGs go every ``heartbeat_ivl``
                                          whatever the traffic, so a dead link is noticed
                                          within ``heartbeat_ivl + heartbeat_timeout`` = 6 s
                                          on each end. A live link must deliver something
                                          within 4 s of a PING: ample at 2 s round trip, but
                                          raise it on links that stall longer.
    heartbeat_ttl              6 s        HEARTBEAT_TTL: sent in our PINGs, tells the peer to
                                          drop us when nothing follows a PING for this long,
                                          so even a peer with slower heartbeats of its own
                                          notices our death within 6 s (max 6553.5 s).
    reconnect_ivl              0.5 s      RECONNECT_IVL while ``open`` waits for a server
                                          that is not up yet.
    reconnect_ivl_max          30 s       RECONNECT_IVL_MAX: back off up to this, so a
                                          server coming back is not hammered.
    immediate                  True       IMMEDIATE on clients: never queue frames for a
                                          connection that is not complete, so commands do
                                          not wait in a DEALER to reach a server restarted
                                          hours later.
    linger                     0 s        LINGER. The libzmq default (-1) makes context
                                          termination hang on unsent frames. 0 = discard.
    ipv6                       False      IPV6. On: a ``tcp://*`` bind is dual-stack and sees
                                          IPv4 peers as ``::ffff:a.b.c.d`` (the allowlist
                                          normalises them). Turned on by itself for
                                          ``tcp://[...]`` endpoints.
    tcp_sndbuf / tcp_rcvbuf    -1         SNDBUF / RCVBUF, bytes; -1 = the OS default.
    open_timeout               30 s       How long ``ZmqTransport.open`` waits for a
                                          completed handshake before TransportError:
                                          about 3.5 round trips, so 30 s serves a 2 s
                                          round trip with room for a lost packet.
                                          A refused key or a wrong pinned server key is
                                          reported at once, not at this timeout.
    send_timeout               5 s        How long a client ``send`` waits for room when its
                                          queue is full before QueueFull.
    client_receive_buffer      1000       Frames a client transport reads ahead of
                                          ``receive``. When full it stops reading, so the
                                          HWMs push back on the server instead of memory
                                          growing.
    peer_receive_buffer        1000       Frames the listener holds for one peer whose
                                          session is not reading. A ROUTER cannot push
                                          back on one peer alone, and a hole in the stream
                                          would break the transport's ordering promise, so
                                          the next frame ends that peer's link: the client
                                          is sent a ``bye``, its transport closes, and the
                                          frame is counted in ``dropped_frames``.
    receive_batch              256        Frames read per wake-up before yielding to the
                                          event loop: draining with non-blocking reads is
                                          about 4x faster than one await per frame, and
                                          the cap keeps one busy socket from starving
                                          the rest of the loop.
    self_test_timeout          5 s        How long the listener's start-up self-test (an
                                          unknown key must be refused) may take; no answer
                                          in time also refuses to serve.
    io_threads                 1          libzmq I/O threads of a listener's own context.
    bye_timeout                2 s        How long a peer told ``bye`` (session over, key
                                          revoked, receive buffer overrun) may keep its
                                          connection. A ROUTER cannot drop one peer, so a
                                          client that ignores ``bye`` would otherwise keep
                                          it as long as its heartbeats arrive; past this
                                          deadline the listener shuts the connection down.
    log_interval               10 s       Everything a peer can make the listener log
                                          (refused handshakes, dropped frames, overruns)
                                          is written at most once per peer and kind in
                                          this interval, then summed up in one line with
                                          a count: an attacker cannot fill the disk.
    =========================  =========  =================================================
    """

    server_max_message_size: int = 256 * KIB
    client_max_message_size: int = 4 * MIB
    server_rcvhwm: int = 64
    server_sndhwm: int = 1000
    client_rcvhwm: int = 1000
    client_sndhwm: int = 100
    router_mandatory: bool = True
    router_handover: bool = False
    server_handshake_ivl: float = 10.0
    client_handshake_ivl: float = 30.0
    heartbeat_ivl: float = 2.0
    heartbeat_timeout: float = 4.0
    heartbeat_ttl: float = 6.0
    reconnect_ivl: float = 0.5
    reconnect_ivl_max: float = 30.0
    immediate: bool = True
    linger: float = 0.0
    ipv6: bool = False
    tcp_sndbuf: int = -1
    tcp_rcvbuf: int = -1
    open_timeout: float = 30.0
    send_timeout: float = 5.0
    client_receive_buffer: int = 1000
    peer_receive_buffer: int = 1000
    receive_batch: int = 256
    self_test_timeout: float = 5.0
    io_threads: int = 1
    bye_timeout: float = 2.0
    log_interval: float = 10.0

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            expected = _FIELD_TYPES[spec.name]
            if expected is bool:
                if not isinstance(value, bool):
                    raise ConfigError(f"transport option {spec.name}: expected true or false")
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"transport option {spec.name}: expected a number, got {value!r}")
            if expected is int and not isinstance(value, int):
                raise ConfigError(
                    f"transport option {spec.name}: expected an integer, got {value!r}"
                )
            if spec.name in _POSITIVE and value <= 0:
                raise ConfigError(f"transport option {spec.name}: must be more than 0")
            if value < _MINIMUMS.get(spec.name, 0):
                raise ConfigError(
                    f"transport option {spec.name}: {value!r} is below the minimum"
                    f" {_MINIMUMS.get(spec.name, 0)}"
                )
        if self.heartbeat_ttl > _MAX_HEARTBEAT_TTL:
            raise ConfigError(f"transport option heartbeat_ttl: at most {_MAX_HEARTBEAT_TTL} s")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | ZmqOptions | None) -> ZmqOptions:
        """Options from a mapping of field names (e.g. a config table); None gives the defaults.

        Raises ConfigError naming an unknown field or a value of the wrong type or range.
        """
        if options is None:
            return cls()
        if isinstance(options, ZmqOptions):
            return options
        if not isinstance(options, Mapping):
            raise ConfigError(
                f"transport options must be a mapping or ZmqOptions, got {type(options).__name__}"
            )
        unknown = sorted(str(key) for key in options if key not in _FIELD_TYPES)
        if unknown:
            raise ConfigError(
                f"unknown transport option {unknown[0]!r}; known options: {', '.join(_FIELD_TYPES)}"
            )
        return cls(**dict(options))

    def replace(self, **changes: Any) -> ZmqOptions:
        """A copy with ``changes`` applied. Raises ConfigError like the constructor."""
        unknown = sorted(key for key in changes if key not in _FIELD_TYPES)
        if unknown:
            raise ConfigError(f"unknown transport option {unknown[0]!r}")
        return dataclasses.replace(self, **changes)


_FIELD_TYPES: dict[str, type] = {
    spec.name: {"int": int, "float": float, "bool": bool}[str(spec.type)]
    for spec in dataclasses.fields(ZmqOptions)
}
# Sizes may be -1 (libzmq: no limit / OS default); counts must allow at least one frame.
_MINIMUMS: dict[str, float] = {
    "server_max_message_size": -1,
    "client_max_message_size": -1,
    "tcp_sndbuf": -1,
    "tcp_rcvbuf": -1,
    "client_receive_buffer": 1,
    "peer_receive_buffer": 1,
    "receive_batch": 1,
    "io_threads": 1,
}
# Times that must be positive: a bye deadline of 0 would cut a peer before its bye arrives,
# and a log interval of 0 would make PeerLog meaningless (it refuses one).
_POSITIVE = frozenset({"bye_timeout", "log_interval"})

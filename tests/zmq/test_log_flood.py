"""An attacker cannot decide how much the listener logs (issue 7 defect 5).

Everything a peer can make the ZeroMQ listener log goes through its ``peer_log``
(:class:`~rain_envelopes.peerlog.PeerLog`): the first event of a kind from a peer is logged as
written, the rest of the interval only counted, then summed up in one line. Here one attacker
makes 2,000 refused handshakes, and an authorised one sends 2,000 bad frames; each flood must
leave a handful of lines, one of which carries the count.

The listener's ``peer_log`` is swapped before ``start()`` for one with a clock the test moves,
so "the interval is over" is a decision of the test, not a race with a timer.
"""

from __future__ import annotations

import logging
import re

import pytest
import zmq
import zmq.asyncio

from rain_envelopes.errors import ConfigError
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.peerlog import PeerLog
from rain_transport_zmq import ZmqOptions, ZmqTransportListener

from .helpers import LogWatcher, accept_peer, bounded, eventually, raw_curve_dealer

FLOOD = 2_000
#: Concurrent handshakes per wave of the attacker (well under the 1023 sockets of a context).
WAVE = 250
INTERVAL = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _started(
    server: Identity, keys: AuthorizedKeys, clock: FakeClock, **options: float
) -> ZmqTransportListener:
    listener = ZmqTransportListener(
        "tcp://127.0.0.1:0", identity=server, authorized_keys=keys, options=options or None
    )
    listener.peer_log = PeerLog(
        logging.getLogger("rain_transport_zmq"), interval=INTERVAL, clock=clock
    )
    await bounded(listener.start())
    return listener


def _counted(lines: list[str]) -> int:
    """Events a set of lines stands for: 1 per line as written, N per ``N more`` summary."""
    total = 0
    for line in lines:
        summary = re.match(r"(\d+) more ", line)
        total += int(summary.group(1)) if summary else 1
    return total


@pytest.mark.timeout(40)
async def test_2000_refused_handshakes_make_two_lines_with_the_count(
    server_identity: Identity,
    authorized_keys: AuthorizedKeys,
    log_watcher: LogWatcher,
    zmq_context: zmq.asyncio.Context,
) -> None:
    clock = FakeClock()
    listener = await _started(server_identity, authorized_keys, clock)
    try:
        authenticator = listener.authenticator
        assert authenticator is not None
        base = authenticator.refused  # the start-up probe
        strangers = [Identity.generate() for _ in range(20)]
        for wave in range(FLOOD // WAVE):
            socks = [
                raw_curve_dealer(zmq_context, strangers[n % len(strangers)], server_identity)
                for n in range(WAVE)
            ]
            for sock in socks:
                sock.connect(listener.endpoints[0])
            target = base + (wave + 1) * WAVE
            await eventually(lambda: authenticator.refused >= target, 15.0)  # noqa: B023
            for sock in socks:
                sock.close(linger=0)
        clock.now += INTERVAL
        listener.peer_log.flush()
    finally:
        await bounded(listener.close())
    lines = [m for m in log_watcher.messages if "handshake" in m and "refused" in m]
    lines = [m for m in lines if "start-up self-test" not in m]
    # The refusal is still logged at once, with its reason and the attacker's address...
    assert lines[0] == "refused CURVE handshake from 127.0.0.1: key not authorised"
    # ...and then once more in the interval, as a count.
    assert len(lines) == 2, lines
    assert lines[1].startswith(f"{FLOOD - 1} more handshake-refused events from 127.0.0.1")
    assert _counted(lines) == FLOOD


@pytest.mark.timeout(30)
async def test_2000_bad_frames_from_an_authorised_key_make_two_lines_with_the_count(
    server_identity: Identity,
    client_identity: Identity,
    authorized_keys: AuthorizedKeys,
    log_watcher: LogWatcher,
    zmq_context: zmq.asyncio.Context,
) -> None:
    clock = FakeClock()
    listener = await _started(server_identity, authorized_keys, clock)
    sock = raw_curve_dealer(zmq_context, client_identity, server_identity)
    try:
        sock.connect(listener.endpoints[0])
        await bounded(sock.send_multipart([b"", b"hello"]))
        await accept_peer(listener)
        for n in range(FLOOD):
            # Three parts: neither an envelope nor a control message.
            await bounded(sock.send_multipart([b"x", b"%d" % n, b"y"]))
        await eventually(lambda: listener.dropped_frames >= FLOOD, 15.0)
        clock.now += INTERVAL
        listener.peer_log.flush()
    finally:
        sock.close(linger=0)
        await bounded(listener.close())
    lines = [m for m in log_watcher.messages if "dropped" in m]
    who = client_identity.public_key_text
    assert len(lines) == 2, lines
    assert lines[0].startswith("dropped an unknown multipart message")
    assert lines[1].startswith(f"{FLOOD - 1} more dropped-frame events from {who}")
    assert _counted(lines) == FLOOD


async def test_summaries_are_written_by_the_listeners_timer(
    server_identity: Identity,
    authorized_keys: AuthorizedKeys,
    log_watcher: LogWatcher,
    zmq_context: zmq.asyncio.Context,
) -> None:
    # No event comes after the flood: the summary must not wait for one.
    options = {"log_interval": 0.2}
    listener = ZmqTransportListener(
        "tcp://127.0.0.1:0",
        identity=server_identity,
        authorized_keys=authorized_keys,
        options=options,
    )
    await bounded(listener.start())
    try:
        socks = [
            raw_curve_dealer(zmq_context, Identity.generate(), server_identity) for _ in range(3)
        ]
        for sock in socks:
            sock.connect(listener.endpoints[0])
        await log_watcher.wait_for("more handshake-refused events from 127.0.0.1")
        for sock in socks:
            sock.close(linger=0)
    finally:
        await bounded(listener.close())
    assert listener._flush_timer is None  # and the timer stops with the listener


@pytest.mark.parametrize("value", [0, -5.0])
def test_log_interval_must_be_positive(value: float) -> None:
    with pytest.raises(ConfigError, match="log_interval"):
        ZmqOptions(log_interval=value)
    assert ZmqOptions().log_interval == 10.0

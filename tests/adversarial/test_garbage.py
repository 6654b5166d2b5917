"""Garbage from an authorised key: frames that are not JSON, envelopes that are wrong, frames
near and past the maximum message size, frames before the session (and before ``hello``), and
abuse of the transport's control messages.

The attacker holds a valid key, so it gets past CURVE: everything here reaches our code. The
server must answer what it can answer with a coded failure, drop the rest, stay alive, keep
serving a well-formed client within its bound, and log within budget however many bad frames
arrive. One server serves the module.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
import zmq

from .live import Attack, LiveServer, Site, check_serves, good_client, serving
from .rawclient import BYE, HELLO, RawClient

Context = zmq.Context[zmq.Socket[bytes]]

KIB = 1024
#: The server's default MAXMSGSIZE (rain_transport_zmq.options): a frame past it is not
#: delivered, and the connection that sent it is dropped by libzmq.
SERVER_MAX_MESSAGE = 256 * KIB
ROUNDS = 20

NOT_JSON = [b"", b"\x00", b"\xff\xfe\xfd", b"{", b"}{", b"[1,2", b"nul", b"\xed\xa0\x80",
            b"\x1f\x8b\x08\x00garbage"]
NOT_ENVELOPES = [
    b"null", b"[]", b"42", b'"text"', b"{}",
    b'{"method":"get"}',
    b'{"id":7,"method":"get","uri":"/params/temperature"}',
    b'{"id":"x","method":"teleport","uri":"/params/temperature"}',
    b'{"id":"x","method":"get","uri":42}',
    b'{"id":"x","method":"set","uri":"/params/sampling_interval","resource":NaN}',
    b'{"id":"x","method":"get","uri":"/params/temperature","status":"pending"}',
    b'{"id":"x","event":"failed","reason":"a string"}',
    b'{"id":"x","type":"text/plain"}',
    b'{"id":"x","content":1,"method":"get","event":"received","state":"new"}',
    b'{"id":"d","id":"e","method":"get","uri":"/params/temperature"}',
    b"[" * 100_000 + b"]" * 100_000,
    b'{"id":"' + b"\xf0\x9f" * 10 + b'","method":"get","uri":"/params/temperature"}',
]
SESSION_ABUSE = [
    b'{"state":"new"}',
    b'{"state":"new","id":"mine"}',
    b'{"id":"wrong","state":"negotiating","compression":"gzip","encryption":"curve"}',
    b'{"id":"wrong","state":"authenticating","scheme":"guest"}',
    b'{"id":"wrong","state":"established"}',
    b'{"id":"wrong","state":"finishing"}',
    b'{"state":"failed","reason":{"code":1,"description":"you failed"}}',
]
CONTROL_ABUSE = [HELLO, HELLO, BYE, [b"", b"junk"], [b"", b"hello", b"again"],
                 [b"x", b"y"], [b"", b""], [b"", b"\x00" * 1000]]


def _huge_id(size: int) -> bytes:
    return orjson.dumps({"id": "i" * size, "method": "get", "uri": "/params/temperature"})


def _near_max() -> bytes:
    # CURVE adds 33 bytes on the wire: this frame is just under the limit.
    return orjson.dumps({"id": "n", "method": "get", "uri": "/params/temperature",
                         "metadata": {"pad": "p" * (SERVER_MAX_MESSAGE - 1000)}})


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, LiveServer]]:
    with serving(tmp_path_factory.mktemp("garbage")) as pair:
        yield pair


def _spray(client: RawClient, frames: list[bytes]) -> int:
    sent = 0
    for frame in frames:
        sent += client.send(frame)
    return sent


def _answers(client: RawClient) -> list[dict[str, object]]:
    """Every envelope the server sent us that is already here; each must be well-formed."""
    replies = []
    while (parts := client.receive(0.01)) is not None:
        if parts == BYE:
            break
        envelope = orjson.loads(parts[0])
        assert isinstance(envelope, dict), parts
        if envelope.get("status") == "failure" or envelope.get("state") == "failed":
            reason = envelope.get("reason")
            assert isinstance(reason, dict), envelope
            assert isinstance(reason.get("code"), int), envelope
        replies.append(envelope)
    return replies


def test_garbage_from_an_authorised_key(context: Context, live: tuple[Site, LiveServer]) -> None:
    site, server = live
    with good_client(context, site, server) as bob:
        attack = Attack(server, f"garbage from an authorised key, {ROUNDS} rounds")
        sent = answered = 0
        for round_ in range(ROUNDS):
            # Before hello: the listener does not know this peer yet.
            with RawClient(context, server.endpoint, identity=site.alice,
                           server=site.station) as early:
                early.wait_handshake(5.0)
                sent += _spray(early, NOT_JSON + SESSION_ABUSE[:1])
                check_serves(bob)
            with RawClient(context, server.endpoint, identity=site.alice, server=site.station,
                           sndhwm=0) as alice:
                alice.open()
                # Before the session: only session envelopes may pass.
                sent += _spray(alice, NOT_JSON + NOT_ENVELOPES[5:10] + [_huge_id(100 * KIB)])
                for parts in CONTROL_ABUSE:
                    sent += alice.send_parts(parts)
                answered += len(_answers(alice))
                check_serves(bob)
            with RawClient(context, server.endpoint, identity=site.alice, server=site.station,
                           sndhwm=0) as alice:
                alice.open()
                reply = alice.establish()
                assert reply.get("state") == "established", reply
                sent += _spray(alice, NOT_JSON + NOT_ENVELOPES + SESSION_ABUSE
                               + [_huge_id(100 * KIB), _huge_id(200 * KIB), _near_max()])
                for parts in CONTROL_ABUSE:
                    sent += alice.send_parts(parts)
                answered += len(_answers(alice))
                if round_ % 2:
                    # Past the maximum: libzmq drops the frame and this connection.
                    sent += alice.send(b'"' + b"x" * (SERVER_MAX_MESSAGE + KIB) + b'"')
                check_serves(bob)
            attack.sample()
        attack.stop()
        check_serves(bob)
        attack.report(frames=sent, answers=answered)
    attack.check_clean_log()
    attack.check_memory()
    attack.check_log()

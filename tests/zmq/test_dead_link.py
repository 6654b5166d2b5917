"""A black-holed link is noticed within 6 s on both ends, with the default options.

Theory: each end sends a ZMTP PING every ``heartbeat_ivl`` (2 s) and declares the link dead when
nothing arrives for ``heartbeat_timeout`` (4 s) after one; so a dead link is found within
``ivl + timeout`` = 6 s (``heartbeat_ttl``, 6 s, bounds a peer with slower heartbeats of its own).
The link is killed by the fault proxy's blackhole mode: both TCP connections stay open and every
byte is dropped, so no FIN or RST tells anyone; only heartbeats can.

When libzmq's heartbeat times out it closes the connection and the socket monitor reports
DISCONNECTED: the client transport closes (it does not reconnect behind the session's back: the
proxy accepts one connection only), the listener closes that peer's transport, and each channel
ends with code 11 "link lost" and a state that is no longer ``established``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import zmq

from rain_envelopes.channel import connect
from rain_envelopes.envelopes import ReasonCode, SessionState
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.server import Parameter, Server
from rain_envelopes.server.config import parse_config
from rain_transport_zmq import ZmqOptions
from tests.faultproxy import Direction, FaultProxy
from tests.server.conftest import Keys, running_server

#: The bound the defaults promise, and what a loaded test machine may add to it.
DETECTION = 6.0
SLACK = 2.0


@pytest.fixture
def keys() -> Keys:
    station, alice = Identity.generate(), Identity.generate()
    authorized = AuthorizedKeys.from_mapping({alice.public_key_text: "alice@irf"})
    others = (Identity.generate() for _ in range(3))
    return Keys(station, alice, *others, authorized)


def test_the_default_heartbeats_bound_detection_at_6_s() -> None:
    options = ZmqOptions()
    assert options.heartbeat_ivl + options.heartbeat_timeout <= DETECTION
    assert 0 < options.heartbeat_ttl <= DETECTION


@pytest.mark.timeout(15)
async def test_a_blackholed_session_is_noticed_within_6_s_on_both_ends(keys: Keys) -> None:
    async with running_server([Parameter("temp", value=20.0)], keys, "tcp") as server:
        host, port = server.endpoints[0].removeprefix("tcp://").rsplit(":", 1)
        async with FaultProxy((host, int(port))) as proxy:
            channel = await connect(
                proxy.endpoint, identity=keys.alice, server_key=keys.station.public_key,
                establish_timeout=5.0,
            )
            try:
                assert (await channel.get("/params/temp")).resource["value"] == 20.0
                [served] = server.sessions
                proxy.blackhole()
                started = time.monotonic()
                async with asyncio.timeout(DETECTION + SLACK):
                    await asyncio.gather(channel.wait_closed(), served.ended.wait())
                elapsed = time.monotonic() - started
                # Nothing but heartbeats could have told: the proxy dropped every byte since.
                assert proxy.discarded[Direction.UPSTREAM] > 0
                assert proxy.discarded[Direction.DOWNSTREAM] > 0
                assert proxy.accepted == 1  # the client did not silently reconnect
                assert channel.transport.closed
                for ended in (channel, served.channel):
                    assert ended.link_lost
                    assert ended.close_reason is not None
                    assert ended.close_reason.code == ReasonCode.SESSION_ERROR
                    assert ended.state is SessionState.FAILED
                assert "heartbeats timed out" in (channel.close_reason.description or "")
                assert elapsed < DETECTION + SLACK
            finally:
                await channel.close()


async def test_heartbeat_keys_of_the_toml_transport_table_reach_the_sockets(
    tmp_path: Path,
) -> None:
    config = parse_config(
        {
            "identity": "station@irf",
            "insecure": True,
            "listen": ["tcp://127.0.0.1:0"],
            "transport": {"heartbeat_ivl": 1.5, "heartbeat_timeout": 4.5, "heartbeat_ttl": 7.0},
        },
        base=tmp_path,
    )
    async with Server.from_config(config) as server:
        [listener] = await server.listen()
        options = listener.options  # type: ignore[attr-defined]
        assert (options.heartbeat_ivl, options.heartbeat_timeout, options.heartbeat_ttl) == (
            1.5, 4.5, 7.0,
        )
        router = listener._router  # type: ignore[attr-defined]
        assert router.getsockopt(zmq.HEARTBEAT_IVL) == 1500
        assert router.getsockopt(zmq.HEARTBEAT_TIMEOUT) == 4500
        assert router.getsockopt(zmq.HEARTBEAT_TTL) == 7000

"""One client process holds 1,000 sessions, and running out of sockets is a TransportError.

Theory: every client transport of a process shares one zmq context and holds three zmq sockets
in it (DEALER, monitor PAIR, libzmq's own monitor PAIR); libzmq's default ``MAX_SOCKETS`` of 1023
stopped a process at 341 sessions with a raw ``zmq.ZMQError``. The shared context is now made
with libzmq's ceiling, and the soft open-files limit is raised to the hard one on first use
(see ``rain_transport_zmq._common``). Here client and server share the process (the server's
listener has its own context with one ROUTER for all peers), so the descriptors of both ends
count against one limit: about five per session.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import pytest
import zmq

from rain_envelopes.channel import ClientChannel, connect
from rain_envelopes.errors import TransportError
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.server import Limits, Parameter
from rain_transport_zmq import ZmqTransport
from tests.server.conftest import Keys, running_server

from .helpers import accept_peer, bounded, listening


@pytest.fixture
def keys() -> Keys:
    station, alice = Identity.generate(), Identity.generate()
    authorized = AuthorizedKeys.from_mapping({alice.public_key_text: "alice@irf"})
    others = (Identity.generate() for _ in range(3))
    return Keys(station, alice, *others, authorized)


async def hold_sessions(keys: Keys, count: int) -> float:
    """Open ``count`` sessions from this process to one server; returns sessions per second."""
    channels: list[ClientChannel] = []
    limits = Limits(max_sessions=count + 100)
    async with running_server([Parameter("temp", value=20.0)], keys, "tcp", limits=limits) as (
        server
    ):
        try:
            started = time.monotonic()
            for _ in range(count):
                channels.append(await connect(
                    server.endpoints[0], identity=keys.alice, server_key=keys.station.public_key,
                    establish_timeout=10.0,
                ))
            rate = count / (time.monotonic() - started)
            assert len(server.sessions) == count
            # The first and the last session both still work.
            for channel in (channels[0], channels[-1]):
                assert (await channel.get("/params/temp")).resource["value"] == 20.0
            assert not any(channel.closed for channel in channels)
        finally:
            for channel in channels:
                await channel.close()
    return rate


@pytest.mark.timeout(45)
async def test_one_process_holds_400_sessions(keys: Keys) -> None:
    await hold_sessions(keys, 400)


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_one_process_holds_1000_sessions(keys: Keys) -> None:
    await hold_sessions(keys, 1000)


async def test_running_out_of_sockets_is_a_transport_error(
    server_identity: Identity, client_identity: Identity, authorized_keys: AuthorizedKeys
) -> None:
    # A context of our own with a tiny socket limit stands in for any exhausted limit.
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context(1)
    context.set(zmq.MAX_SOCKETS, 4)
    transports: list[ZmqTransport] = []

    def transport() -> ZmqTransport:
        made = ZmqTransport(
            listener.endpoints[0], identity=client_identity,
            server_key=server_identity.public_key, context=context,
        )
        transports.append(made)
        return made

    try:
        async with listening(server_identity, authorized_keys) as listener:
            await bounded(transport().open())  # three of the four sockets
            await accept_peer(listener)
            second = transport()
            with pytest.raises(TransportError, match="too many open sockets") as caught:
                await bounded(second.open())
            assert not isinstance(caught.value, zmq.ZMQError)
            assert second.closed  # and what it had made is released
            # The first transport is untouched by its sibling's failure.
            await bounded(transports[0].send(b"still here"))
    finally:
        for made in transports:
            await made.close()
        context.destroy(linger=0)


def test_the_open_files_soft_limit_is_raised_on_first_use() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard open-files limit is {hard}: nothing to raise")
    script = (
        "import resource\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "from rain_transport_zmq._common import OPEN_FILES_TARGET, client_context\n"
        "client_context()\n"
        "soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]\n"
        "target = OPEN_FILES_TARGET if hard == resource.RLIM_INFINITY"
        " else min(hard, OPEN_FILES_TARGET)\n"
        "assert soft == target, (soft, hard)\n"
        "assert client_context().get(__import__('zmq').MAX_SOCKETS) > 1023\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr[-2000:]



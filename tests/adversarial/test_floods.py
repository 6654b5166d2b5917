"""Authorised clients that flood without reading: pipelined gets of a slow parameter, and a
subscriber to a fast, bulky stream that never reads.

Each test gets a server of its own, so its memory figures are its own. Issue 7's budgets: the
server's memory under the flood within baseline + 64 MiB and back within 5 s after the flooder
left; a new handshake within 1 s and a well-formed get within 1 s during the flood; the log
within its byte budget per attacker-second; no traceback.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import orjson
import pytest
import zmq

from .live import (
    CHATTY_PLUGIN,
    HANDSHAKE_BOUND,
    MIB,
    SLOW_PLUGIN,
    Attack,
    LiveServer,
    Site,
    check_serves,
    good_client,
    serving,
)
from .rawclient import BYE, RawClient, established_client

Context = zmq.Context[zmq.Socket[bytes]]

FLOOD_SECONDS = 5.0
#: Gets queued per burst by the flooder, between two measurements.
BURST = 500
#: Issue 7: a request past the per-session bound is refused at once with "quota exceeded".
QUOTA_EXCEEDED = 34


def _new_session_during_flood(context: Context, site: Site, server: LiveServer) -> float:
    """A second connection of bob's: handshake within HANDSHAKE_BOUND, then a served get.
    Returns the handshake's seconds."""
    with RawClient(context, server.endpoint, identity=site.bob, server=site.station) as fresh:
        took = fresh.open(timeout=5.0)
        reply = fresh.establish(timeout=5.0)
        assert reply.get("state") == "established", reply
        check_serves(fresh)
    assert took <= HANDSHAKE_BOUND, f"a new handshake took {took:.2f} s under the flood"
    return took


@pytest.mark.timeout(45)
def test_pipelined_gets_of_a_slow_getter_never_read(context: Context, tmp_path: Path) -> None:
    """Alice queues thousands of gets of a 3 s getter and never reads the answers (issue 7,
    defect 2). Past the per-session bound the server must refuse at once (code 34) instead of
    starting a task per request; its memory, the others' latency and its log stay bounded."""
    with serving(tmp_path, plugins={"slow.py": SLOW_PLUGIN}) as (site, server):
        bob = good_client(context, site, server)
        # Unlimited send queue (the flood is queued, never refused by our side) and a tiny
        # receive side, so the answers pile up at the server.
        alice = established_client(context, server.endpoint, site.alice, site.station,
                                   sndhwm=0, rcvhwm=1, rcvbuf=4096)
        attack = Attack(server, "pipelined gets of a 3 s getter, never read")
        sent = 0
        gets: list[float] = []
        handshakes: list[float] = []
        try:
            while attack.seconds < FLOOD_SECONDS:
                for _ in range(BURST):
                    alice.send(orjson.dumps({"id": f"f{sent}", "method": "get",
                                             "uri": "/params/slow"}))
                    sent += 1
                attack.sample()
                gets.append(check_serves(bob))
                if len(handshakes) < 3 and attack.seconds > 1.0 + len(handshakes):
                    handshakes.append(_new_session_during_flood(context, site, server))
            attack.stop()
            # What the flooder was told, as far as it can read in a second.
            codes: dict[str, int] = {}
            deadline = time.perf_counter() + 1.0
            while (left := deadline - time.perf_counter()) > 0:
                parts = alice.receive(left)
                if parts is None:
                    break
                if parts == BYE:
                    codes["bye"] = codes.get("bye", 0) + 1
                    break
                reply = orjson.loads(parts[0])
                key = str(reply.get("reason", {}).get("code", reply.get("status")))
                codes[key] = codes.get(key, 0) + 1
        finally:
            alice.close()
        settled = attack.settle()
        check_serves(bob)
        bob.close()
        attack.report(sent=sent, get_median=statistics.median(gets), get_max=max(gets),
                      handshake_max=max(handshakes),
                      settled_seconds=settled if settled is not None else -1,
                      **{f"replies_{k}": v for k, v in codes.items()})
    attack.check_clean_log()
    attack.check_memory()
    assert settled is not None, (
        f"memory still {(server.rss() - attack.baseline_rss) / MIB:.1f} MiB above baseline"
        " 5 s after the flooder left"
    )
    attack.check_log()
    assert codes.get(str(QUOTA_EXCEEDED), 0) or codes.get("bye"), (
        f"the flooder was neither refused with {QUOTA_EXCEEDED} nor disconnected: {codes}"
    )


@pytest.mark.timeout(45)
def test_a_subscriber_that_never_reads(context: Context, tmp_path: Path) -> None:
    """Alice subscribes to a 200-samples-a-second stream of 16 kB samples and never reads;
    Bob subscribes to the same stream and reads. The server must keep bounded memory and log,
    and keep Bob's updates flowing, in order."""
    with serving(tmp_path, plugins={"chatty.py": CHATTY_PLUGIN}) as (site, server):
        bob = good_client(context, site, server)
        alice = established_client(context, server.endpoint, site.alice, site.station,
                                   rcvhwm=1, rcvbuf=4096)
        attack = Attack(server, "a subscriber that never reads a 3 MB/s stream")
        for client in (alice, bob):
            reply = client.request({"method": "subscribe", "uri": "/params/chatty"})
            assert reply.get("status") == "success", reply
        seqs: list[int] = []
        longest_gap = 0.0
        last = time.perf_counter()
        try:
            while attack.seconds < FLOOD_SECONDS:
                parts = bob.receive(1.0)
                now = time.perf_counter()
                assert parts is not None, "bob got no update for a second"
                longest_gap = max(longest_gap, now - last)
                last = now
                envelope = orjson.loads(parts[0])
                if envelope.get("method") == "observe":
                    seqs.append(int(envelope["resource"]["seq"]))
                if len(seqs) % 50 == 0:
                    attack.sample()
            attack.stop()
        finally:
            alice.close()
        bob.drain()
        check_serves(bob)
        bob.close()
        settled = attack.settle()
        attack.report(updates_to_bob=len(seqs), longest_gap=longest_gap,
                      settled_seconds=settled if settled is not None else -1)
    assert len(seqs) >= 10 * FLOOD_SECONDS, f"bob got only {len(seqs)} updates"
    assert seqs == sorted(seqs), "bob's updates came out of order"
    attack.check_clean_log()
    attack.check_memory()
    assert settled is not None
    attack.check_log()

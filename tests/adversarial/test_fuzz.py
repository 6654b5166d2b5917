"""Hypothesis drives random frame sequences from an authorised raw client against one live
server: valid envelopes, truncated and mutated ones, session envelopes out of order, huge ids,
binary noise and control messages, with or without a session established first.

After every example the server must be alive and answer a well-formed client's get within
its bound; over the whole run, memory and log stay within budget and nothing logs a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .live import Attack, LiveServer, Site, check_serves, good_client, serving
from .rawclient import RawClient

Context = zmq.Context[zmq.Socket[bytes]]

URIS = ["/params", "/params/temperature", "/params/sampling_interval", "/params/nope", "/ping",
        "lime://station@irf/params/pressure", "/params/temperature?x=1", ""]
STATES = ["new", "negotiating", "authenticating", "established", "finishing", "finished",
          "failed", "bogus"]
METHODS = ["get", "set", "delete", "merge", "subscribe", "unsubscribe", "observe", "GET", "x"]

#: JSON numbers orjson can write (huge numbers are the codec corpus's business).
numbers = st.integers(-(2**63), 2**63 - 1)
ids = st.one_of(st.none(), st.text(max_size=12), numbers, st.just(""))


def _without_none(mapping: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in mapping.items() if value is not None}


commands = st.builds(
    lambda id_, method, uri, resource: _without_none(
        {"id": id_, "method": method, "uri": uri, "resource": resource,
         "type": "application/json" if resource is not None else None}
    ),
    ids, st.sampled_from(METHODS), st.sampled_from(URIS),
    st.one_of(st.none(), numbers, st.floats(0.05, 10), st.text(max_size=8)),
)
sessions = st.builds(
    lambda id_, state, extra: _without_none({"id": id_, "state": state, **extra}),
    ids, st.sampled_from(STATES),
    st.fixed_dictionaries({}, optional={
        "compression": st.sampled_from(["none", "gzip", "zstd"]),
        "encryption": st.sampled_from(["none", "curve"]),
        "scheme": st.sampled_from(["transport", "keypair", "guest"]),
        "authentication": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
        "reason": st.fixed_dictionaries({"code": numbers, "description": st.text()}),
    }),
)
others = st.one_of(
    st.builds(lambda id_, content: _without_none(
        {"id": id_, "type": "text/plain", "content": content}), ids, st.text(max_size=20)),
    st.builds(lambda id_, event: _without_none({"id": id_, "event": event}),
              ids, st.sampled_from(["received", "consumed", "failed", "accepted", "x"])),
)
envelopes = st.one_of(commands, sessions, others).map(orjson.dumps)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(envelopes))
    for _ in range(draw(st.integers(1, 4))):
        frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
    return bytes(frame)


truncated = st.builds(lambda frame, cut: frame[: cut % max(1, len(frame))],
                      envelopes, st.integers(0, 200))
huge_ids = st.builds(
    lambda size, method: orjson.dumps({"id": "h" * size, "method": method,
                                       "uri": "/params/temperature"}),
    st.integers(1_000, 200_000), st.sampled_from(["get", "subscribe", "set"]),
)
frames = st.one_of(
    envelopes, envelopes, mutated(), truncated, huge_ids, st.binary(max_size=64),
).map(lambda frame: [frame])
controls = st.lists(st.binary(max_size=8), min_size=1, max_size=3).map(lambda rest: [b"", *rest])
scripts = st.tuples(
    st.booleans(),  # establish a proper session first
    st.lists(st.one_of(frames, frames, frames, controls), min_size=1, max_size=12),
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, LiveServer]]:
    with serving(tmp_path_factory.mktemp("fuzz")) as pair:
        yield pair


@pytest.mark.timeout(60)
def test_random_frame_sequences_never_stop_the_server(
    context: Context, live: tuple[Site, LiveServer]
) -> None:
    site, server = live
    with good_client(context, site, server) as bob:
        attack = Attack(server, "hypothesis frame sequences")
        examples = 0

        @settings(max_examples=200, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(script=scripts)
        def run(script: tuple[bool, list[list[bytes]]]) -> None:
            nonlocal examples
            examples += 1
            establish, messages = script
            with RawClient(context, server.endpoint, identity=site.alice, server=site.station,
                           sndhwm=0) as alice:
                alice.open()
                if establish:
                    assert alice.establish().get("state") == "established"
                for parts in messages:
                    alice.send_parts(parts)
                alice.drain()
                assert server.alive()
                check_serves(bob)
            attack.sample()

        run()
        attack.stop()
        check_serves(bob)
        attack.report(examples=examples)
    attack.check_clean_log()
    attack.check_memory()
    attack.check_log()

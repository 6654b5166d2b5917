"""PeerLog: what a peer can make us log is bounded to two lines per (kind, peer) per interval."""

from __future__ import annotations

import logging

import pytest

from rain_envelopes.peerlog import OTHERS, PeerLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "test.peerlog"]


def test_first_event_logged_then_counted_then_summarised(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    caplog.set_level(logging.INFO, logger="test.peerlog")
    plog = PeerLog(logging.getLogger("test.peerlog"), interval=10.0, clock=clock)
    for i in range(7000):
        plog.event(logging.WARNING, "bad-frame", "10.0.0.9", "bad frame %d", i)
    assert _lines(caplog) == ["bad frame 0"]
    clock.now += 10.0
    plog.flush()
    lines = _lines(caplog)
    assert len(lines) == 2
    assert lines[1].startswith("6999 more bad-frame events from 10.0.0.9")
    assert "first: bad frame 1" in lines[1]
    assert plog.counts == {"bad-frame": 7000}
    # a new interval starts afresh
    plog.event(logging.WARNING, "bad-frame", "10.0.0.9", "bad frame again")
    assert _lines(caplog)[-1] == "bad frame again"


def test_kinds_and_peers_are_kept_apart(caplog: pytest.LogCaptureFixture, clock: Clock) -> None:
    caplog.set_level(logging.INFO, logger="test.peerlog")
    plog = PeerLog(logging.getLogger("test.peerlog"), clock=clock)
    plog.event(logging.WARNING, "a", "p1", "a from p1")
    plog.event(logging.WARNING, "b", "p1", "b from p1")
    plog.event(logging.WARNING, "a", "p2", "a from p2")
    plog.event(logging.WARNING, "a", "p1", "a from p1 again")
    assert _lines(caplog) == ["a from p1", "b from p1", "a from p2"]


def test_nothing_suppressed_means_no_summary(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    caplog.set_level(logging.INFO, logger="test.peerlog")
    plog = PeerLog(logging.getLogger("test.peerlog"), interval=1.0, clock=clock)
    plog.event(logging.INFO, "k", "p", "once")
    clock.now += 5
    plog.flush()
    assert _lines(caplog) == ["once"]


def test_distinct_peers_beyond_the_bound_share_one_key(
    caplog: pytest.LogCaptureFixture, clock: Clock
) -> None:
    caplog.set_level(logging.INFO, logger="test.peerlog")
    plog = PeerLog(logging.getLogger("test.peerlog"), max_keys=4, clock=clock)
    for i in range(1000):
        plog.event(logging.WARNING, "refused", f"peer{i}", "refused %s", i)
    assert len(_lines(caplog)) == 5  # 4 keys, then one line for the others
    assert len(plog._buckets) == 5
    clock.now += 10
    plog.flush()
    assert _lines(caplog)[-1].startswith(f"995 more refused events from {OTHERS}")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="interval"):
        PeerLog(logging.getLogger("x"), interval=0)
    with pytest.raises(ValueError, match="max_keys"):
        PeerLog(logging.getLogger("x"), max_keys=0)

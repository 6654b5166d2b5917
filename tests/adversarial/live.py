"""A `rain serve` child process to attack, and what the suite measures of it.

The server is the example weather station (its config and plugins, see
examples/weather_station), listening on an ephemeral port of 127.0.0.1 with fresh keys. It
runs as a child process so that the test can read what an operator would watch: its resident
memory (``VmRSS``), its open file descriptors (``/proc/PID/fd``) and the bytes it writes to its
log (standard error, kept in a file).

Budgets shared by every attacker (issue 7, "done when"):

- memory under attack at most baseline + :data:`MEMORY_BUDGET`, and back to baseline +
  :data:`MEMORY_SETTLED` within :data:`SETTLE_SECONDS` once the attacker left;
- a well-formed client's handshake within :data:`HANDSHAKE_BOUND`, its get within
  :data:`GET_BOUND`;
- at most :data:`LOG_BYTES_PER_ATTACKER_SECOND` of log per attacker per second of attack
  (with a floor of one second): once peer-triggered logging is rate limited to one line per
  peer and kind per interval (plus a summary), an attacker costs a few hundred bytes per
  interval, so 20 kB leaves room for the legitimate lines of the good clients while still
  catching one line per refused handshake or per bad frame (7,000 a second in issue 7);
  and no line longer than :data:`MAX_LOG_LINE` (peer data echoed whole would defeat the limit);
- no traceback and no never-awaited coroutine in the log while under attack.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from rain_envelopes.keys import Identity

from ..serverprocess import ServerProcess
from .rawclient import RawClient, established_client

__all__ = [
    "GET_BOUND",
    "HANDSHAKE_BOUND",
    "LOG_BYTES_PER_ATTACKER_SECOND",
    "MAX_LOG_LINE",
    "MEMORY_BUDGET",
    "MEMORY_SETTLED",
    "SETTLE_SECONDS",
    "Attack",
    "LiveServer",
    "Site",
    "check_serves",
    "eventually",
    "good_client",
    "make_site",
    "serving",
]

MIB = 1024 * 1024
MEMORY_BUDGET = 64 * MIB
MEMORY_SETTLED = 16 * MIB
SETTLE_SECONDS = 5.0
HANDSHAKE_BOUND = 1.0
GET_BOUND = 1.0
LOG_BYTES_PER_ATTACKER_SECOND = 20_000
MAX_LOG_LINE = 1024

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "weather_station"

#: A getter that takes 3 s (issue 7, defect 2): gets of it pile up while it runs.
SLOW_PLUGIN = '''
import time

from rain_envelopes.server import parameter


@parameter(description="A sensor that takes three seconds to answer")
def slow() -> float:
    time.sleep(3.0)
    return 1.0
'''

#: A parameter published 200 times a second with 16 kB samples: enough to fill the queues of a
#: subscriber that never reads.
CHATTY_PLUGIN = '''
import itertools

from rain_envelopes.server import parameter

_counter = itertools.count()


@parameter(description="A fast, bulky stream", interval=0.005)
def chatty() -> str:
    return f"{next(_counter):08d}" + "x" * 16_000
'''


@dataclass
class Site:
    """A folder holding the example config rewritten for this run, keys and plugins."""

    folder: Path
    station: Identity
    alice: Identity
    bob: Identity
    stranger: Identity  # a valid key the server has never heard of
    config: Path


def make_site(
    folder: Path,
    *,
    plugins: Mapping[str, str] | None = None,
    transport: Mapping[str, float] | None = None,
    authorized: str | None = None,
) -> Site:
    """The weather station's config with keys for station, alice and bob (both authorised).

    ``plugins`` adds plugin files (name -> source); ``transport`` adds a ``[transport]`` table;
    ``authorized`` replaces the authorised-keys file's text.
    """
    station, alice, bob, stranger = (Identity.generate() for _ in range(4))
    station.save(folder / "station.key")
    (folder / "authorized_keys").write_text(
        authorized
        if authorized is not None
        else f"{alice.public_key_text} alice@irf\n{bob.public_key_text} bob@irf\n"
    )
    shutil.copytree(EXAMPLE / "plugins", folder / "plugins",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name, source in (plugins or {}).items():
        (folder / "plugins" / name).write_text(source)
    text = (EXAMPLE / "rain.toml").read_text()
    text, listens = re.subn(r"(?m)^listen = .*$", 'listen = ["tcp://127.0.0.1:0"]', text)
    text, keys = re.subn(r'(?m)^key_file = .*$', 'key_file = "station.key"', text)
    assert (listens, keys) == (1, 1), "the example config changed shape; update make_site"
    if transport:
        text += "\n[transport]\n" + "".join(f"{k} = {v!r}\n" for k, v in transport.items())
    config = folder / "rain.toml"
    config.write_text(text)
    return Site(folder, station, alice, bob, stranger, config)


#: The shared child-process server (tests/serverprocess.py), under the name this suite uses.
LiveServer = ServerProcess


def eventually(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> float | None:
    """Poll ``condition`` until it holds; the seconds it took, or None after ``timeout``.

    For what has no event to wait on (a process's memory, its descriptor count): the poll is
    bounded by ``timeout`` and each pause by ``step``.
    """
    start = time.perf_counter()
    while True:
        if condition():
            return time.perf_counter() - start
        if time.perf_counter() - start >= timeout:
            return None
        time.sleep(step)


class Attack:
    """What one attack cost the server: memory (baseline, peak, after), log bytes, time.

    ``start()`` takes the baselines, ``sample()`` (call it often while attacking) tracks the
    peak, ``stop()`` ends the attack's clock; ``settle()`` waits for memory to come back.
    ``figures`` collects what the report prints.
    """

    def __init__(self, server: LiveServer, name: str, attackers: int = 1) -> None:
        self.server = server
        self.name = name
        self.attackers = attackers
        self.figures: dict[str, float] = {}
        self.baseline_rss = self.peak_rss = server.rss()
        self.baseline_fds = server.fds()
        self.log_start = server.log_bytes()
        self.started = time.perf_counter()
        self.ended: float | None = None

    def sample(self) -> None:
        self.peak_rss = max(self.peak_rss, self.server.rss())

    def stop(self) -> None:
        self.sample()
        self.ended = time.perf_counter()
        self.log_end = self.server.log_bytes()

    @property
    def seconds(self) -> float:
        return (self.ended or time.perf_counter()) - self.started

    @property
    def log_per_attacker_second(self) -> float:
        return (self.log_end - self.log_start) / (self.attackers * max(1.0, self.seconds))

    def settle(self) -> float | None:
        """Seconds until RSS is back within baseline + MEMORY_SETTLED (None: not within
        SETTLE_SECONDS)."""
        limit = self.baseline_rss + MEMORY_SETTLED
        return eventually(lambda: self.server.rss() <= limit, SETTLE_SECONDS, 0.1)

    def report(self, **extra: float) -> str:
        self.figures.update(extra)
        parts = [
            f"{self.name}: {self.seconds:.1f} s",
            f"RSS baseline {self.baseline_rss / MIB:.1f} MiB peak {self.peak_rss / MIB:.1f} MiB"
            f" (+{(self.peak_rss - self.baseline_rss) / MIB:.1f})",
            f"after {self.server.rss() / MIB:.1f} MiB",
            f"log {self.log_end - self.log_start} B"
            f" = {self.log_per_attacker_second:.0f} B per attacker-second",
            f"fds {self.baseline_fds} -> {self.server.fds()}",
            *(f"{key} {value:.3f}" for key, value in extra.items()),
        ]
        line = "; ".join(parts)
        print(f"\n[adversarial] {line}")
        return line

    def check_memory(self) -> None:
        growth = self.peak_rss - self.baseline_rss
        assert growth <= MEMORY_BUDGET, (
            f"{self.name}: server grew by {growth / MIB:.1f} MiB under attack"
            f" (budget {MEMORY_BUDGET / MIB:.0f} MiB)"
        )

    def check_log(self) -> None:
        """Log bytes within budget, and no line longer than MAX_LOG_LINE: what a peer sends
        (an id, a message) must not reach the log untruncated, or one line per interval can
        still be 256 kB."""
        window = self.server.log_text(self.log_start, self.log_end)
        assert self.log_per_attacker_second <= LOG_BYTES_PER_ATTACKER_SECOND, (
            f"{self.name}: {self.log_end - self.log_start} log bytes in {self.seconds:.1f} s"
            f" from {self.attackers} attacker(s): {self.log_per_attacker_second:.0f} B per"
            f" attacker-second, budget {LOG_BYTES_PER_ATTACKER_SECOND}.\nFirst lines:\n"
            + "\n".join(line[:300] for line in window.splitlines()[:8])
        )
        longest = max(window.splitlines(), key=len, default="")
        assert len(longest) <= MAX_LOG_LINE, (
            f"{self.name}: a log line of {len(longest)} characters: {longest[:300]}..."
        )

    def check_clean_log(self) -> None:
        """No traceback and no coroutine left unawaited in what the server logged from
        ``start()`` to ``stop()`` (a peer must not be able to make either happen)."""
        text = self.server.log_text(self.log_start, self.log_end)
        for sign in ("Traceback", "was never awaited"):
            lines = [line for line in text.splitlines() if sign in line]
            assert not lines, (
                f"{self.name}: the server logged {sign!r} {len(lines)} time(s):\n"
                + "\n".join(line[:300] for line in text.splitlines()[:40])
            )


# ------------------------------------------------------------------------------ fixtures' helpers


@contextlib.contextmanager
def serving(folder: Path, **site_options: Any) -> Iterator[tuple[Site, LiveServer]]:
    """A site in ``folder`` and its server; on exit the server must still be alive and then
    stop cleanly (status 0)."""
    site = make_site(folder, **site_options)
    server = LiveServer(site.config, folder / "server.log")
    try:
        yield site, server
    finally:
        alive = server.alive()
        code = server.stop()
    assert alive, f"the server died during the tests:\n{server.log_text()[-4000:]}"
    assert code == 0, f"rain serve exited with {code}:\n{server.log_text()[-4000:]}"


def good_client(
    context: zmq.Context[zmq.Socket[bytes]], site: Site, server: LiveServer, **options: Any
) -> RawClient:
    """Bob, with an established session: the well-formed peer that must keep being served."""
    return established_client(context, server.endpoint, site.bob, site.station, **options)


def check_serves(client: RawClient, uri: str = "/params/sampling_interval") -> float:
    """A well-formed get answered with success within GET_BOUND; returns its seconds."""
    started = time.perf_counter()
    reply = client.get(uri, timeout=GET_BOUND)
    took = time.perf_counter() - started
    assert reply.get("status") == "success", reply
    return took

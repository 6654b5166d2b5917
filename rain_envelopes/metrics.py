"""Prometheus metrics of a RAIN server (the optional ``metrics`` extra, prometheus-client).

::

    rain serve rain.toml --metrics 9464          # http://127.0.0.1:9464/metrics

    metrics = ServerMetrics(server)               # in code: before server.start()
    await metrics.serve("127.0.0.1", 9464)

Theory of operation. Metrics are off unless asked for: a server without a
:class:`ServerMetrics` pays one ``is None`` test at each hook and nothing else. Turned on, a
ServerMetrics attaches itself to one server (``server.metrics``) and keeps its own
:class:`prometheus_client.CollectorRegistry`, so two servers in one process never share a
counter. It is fed from three small hooks in the server and reads the rest when scraped:

- the session's command handler is wrapped (commands by method and outcome, refusals by reason
  code; a refusal is counted whether a step raised it or a handler returned it, and a handler
  that runs as a coroutine is counted when it finishes);
- the plugin runtime times each call of plugin code (getter, setter) into a histogram;
- sessions established, and connections that never became a session (refused credentials, a
  full server, a handshake abandoned) are counted where the server logs them;
- at scrape time, a collector reads what the server already keeps: sessions open, samples
  dropped by subscriptions (those of ended sessions are added up when they end, so the total
  never goes down), and handshakes refused by a transport's authenticator (a listener whose
  ``authenticator`` has a ``refused`` count, as the ZeroMQ listener's ZAP handler does).

Names and labels (no label ever holds an identity, key or address, so a scrape says nothing
about who connects, and a hostile peer cannot grow the label set):

=================================  ==========  =============================================
``rain_sessions``                  gauge       sessions open now
``rain_sessions_established``      counter     sessions established since start
``rain_sessions_refused``          counter     connections that did not become a session, by
                                               ``reason`` (``authentication``, ``full``,
                                               ``closing``, ``other``)
``rain_handshakes_refused``        counter     transport handshakes the authenticator refused
``rain_commands``                  counter     requests answered, by ``method`` and
                                               ``outcome`` (``success``, ``refused``)
``rain_refusals``                  counter     refused requests by reason ``code``
``rain_subscription_drops``        counter     samples dropped for slow subscribers
``rain_plugin_call_seconds``       histogram   time in plugin code, by ``role``
=================================  ==========  =============================================

The HTTP endpoint is prometheus-client's own, in a daemon thread; it binds 127.0.0.1 unless
another address is given.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from .envelopes import Command, CommandMethod, CommandStatus, ReasonCode
from .errors import CommandRefused

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from .server import Server
    from .server.pipeline import ServedSession

__all__ = ["DEFAULT_PORT", "ServerMetrics", "load_prometheus", "parse_address"]

DEFAULT_PORT = 9464

_METHODS = frozenset(m.value for m in CommandMethod)
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

OnCommand = Callable[[Command], Any]


def load_prometheus() -> Any:
    """The prometheus_client module; ImportError naming the extra when it is missing."""
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            "metrics need prometheus-client: pip install 'rain-envelopes[metrics]'"
        ) from exc
    return prometheus_client


def parse_address(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); the host is 127.0.0.1 when
    not given. ValueError for anything else."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r}: expected PORT or HOST:PORT") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: {port} is not a port number")
    return host, port


class ServerMetrics:
    """The Prometheus metrics of one server; see the module docstring."""

    def __init__(self, server: Server, registry: CollectorRegistry | None = None) -> None:
        prometheus = load_prometheus()
        self.registry: CollectorRegistry = registry or prometheus.CollectorRegistry()
        self._server = server
        self._lock = threading.Lock()
        self._ended_drops = 0
        # Ended sessions whose drops are in _ended_drops but which the server may still list
        # for a moment (it reports the end before it lets the session go): not counted twice.
        self._ended: set[ServedSession] = set()
        counter, histogram = prometheus.Counter, prometheus.Histogram
        self.sessions_established = counter(
            "rain_sessions_established", "Sessions established since the server started",
            registry=self.registry)
        self.sessions_refused = counter(
            "rain_sessions_refused", "Connections that did not become a session, by reason",
            ["reason"], registry=self.registry)
        self.commands = counter(
            "rain_commands", "Requests answered, by method and outcome",
            ["method", "outcome"], registry=self.registry)
        self.refusals = counter(
            "rain_refusals", "Refused requests, by LIME reason code", ["code"],
            registry=self.registry)
        self.plugin_seconds = histogram(
            "rain_plugin_call_seconds", "Seconds spent in a call of plugin code, by role",
            ["role"], buckets=_BUCKETS, registry=self.registry)
        self.registry.register(_Collector(self))
        self._http: Any = None
        server.metrics = self
        runtime = getattr(server, "_runtime", None)  # already started: time plugin calls now
        if runtime is not None:
            runtime.on_call = self.plugin_call

    # ------------------------------------------------------------------ hooks

    def wrap(self, handler: OnCommand) -> OnCommand:
        """``handler`` (a session's ``on_command``), counting each request's outcome."""

        def on_command(command: Command) -> Any:
            method = command.method.value if command.method.value in _METHODS else "other"
            try:
                result = handler(command)
            except CommandRefused as exc:
                self._refused(method, exc.reason.code)
                raise
            if inspect.isawaitable(result):
                return self._finish(method, result)
            self._answered(method, result)
            return result

        return on_command

    async def _finish(self, method: str, result: Awaitable[Any]) -> Any:
        try:
            response = await result
        except CommandRefused as exc:
            self._refused(method, exc.reason.code)
            raise
        self._answered(method, response)
        return response

    def _answered(self, method: str, response: Any) -> None:
        if isinstance(response, Command) and response.status is CommandStatus.FAILURE:
            code = response.reason.code if response.reason is not None else 0
            self._refused(method, code)
        else:
            self.commands.labels(method, "success").inc()

    def _refused(self, method: str, code: int) -> None:
        self.commands.labels(method, "refused").inc()
        self.refusals.labels(str(int(code))).inc()

    def plugin_call(self, role: str, seconds: float) -> None:
        self.plugin_seconds.labels(role).observe(seconds)

    def session_established(self) -> None:
        self.sessions_established.inc()

    def session_refused(self, code: int | None) -> None:
        if code == ReasonCode.SESSION_AUTHENTICATION_FAILED:
            reason = "authentication"
        elif code == ReasonCode.AUTHORIZATION_QUOTA_EXCEEDED:
            reason = "full"
        elif code == ReasonCode.SESSION_ERROR:
            reason = "closing"
        else:
            reason = "other"
        self.sessions_refused.labels(reason).inc()

    def session_ended(self, session: ServedSession) -> None:
        drops = sum(s.total_drops for s in session.subscriptions.values())
        with self._lock:
            self._ended_drops += drops
            self._ended.add(session)

    # ------------------------------------------------------------------ scrape-time values

    def subscription_drops(self) -> int:
        """Drops of every session, ended or live, each counted once (scrape thread)."""
        with self._lock:
            sessions = self._server.sessions
            self._ended.intersection_update(sessions)  # those the server has let go: done
            live = sum(
                s.total_drops
                for session in sessions
                if session not in self._ended
                for s in list(session.subscriptions.values())
            )
            return self._ended_drops + live

    def handshakes_refused(self) -> int:
        total = 0
        for listener in list(self._server._listeners):
            authenticator = getattr(listener, "authenticator", None)
            refused = getattr(authenticator, "refused", None)
            if isinstance(refused, int):
                total += refused
        return total

    # ------------------------------------------------------------------ exposition

    def text(self) -> bytes:
        """The metrics in Prometheus' text format (what a scrape gets)."""
        return bytes(load_prometheus().generate_latest(self.registry))

    def serve(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> int:
        """Serve ``/metrics`` over HTTP in a daemon thread; returns the port (0: any free)."""
        prometheus = load_prometheus()
        server, _thread = prometheus.start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_address[1])

    def close(self) -> None:
        server, self._http = self._http, None
        if server is not None:
            server.shutdown()
            server.server_close()


class _Collector:
    """Values read from the server when scraped."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Any]:
        return []  # read at scrape time only; nothing to check at registration

    def collect(self) -> Iterator[Any]:
        core = load_prometheus().metrics_core
        metrics = self._metrics
        yield core.GaugeMetricFamily("rain_sessions", "Sessions open now",
                                     value=len(metrics._server.sessions))
        yield core.CounterMetricFamily("rain_subscription_drops",
                                       "Samples dropped for subscribers that read too slowly",
                                       value=metrics.subscription_drops())
        yield core.CounterMetricFamily("rain_handshakes_refused",
                                       "Transport handshakes refused by the authenticator",
                                       value=metrics.handshakes_refused())

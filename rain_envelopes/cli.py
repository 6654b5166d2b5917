"""The ``rain`` command: serve an instrument, and read, write and watch its parameters.

Modelled on caproto's ``caproto-get``/``caproto-put``/``caproto-monitor``: one verb per
command, parameter names or URIs as arguments, plain output for people and ``--json`` for
scripts. Run ``rain --help`` or ``rain COMMAND --help``.

Invariants: every failure is one line on standard error starting with ``rain:`` and a non-zero
exit status that says what kind of failure it was (see ``EXIT_*``); no traceback reaches the
user unless ``-vv`` asks for debug logging. Printing here is output, never diagnostics (those
go through ``logging``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import math
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn

import orjson

from .channel import ClientChannel, connect
from .client import Client, ClientState, StateChange, Update, parameter_uri
from .envelopes import (
    Command,
    CommandMethod,
    CommandStatus,
    Message,
    Notification,
    NotificationEvent,
    ReasonCode,
)
from .errors import (
    AuthenticationFailed,
    ChannelClosed,
    ClientClosed,
    CommandFailed,
    CommandTimeout,
    ConfigError,
    Disconnected,
    EstablishTimeout,
    KeyFileError,
    NotDone,
    SecurityCause,
    SessionError,
    SessionFailed,
    StateStoreError,
    TransportError,
    TransportSecurityError,
)
from .keyfiles import public_key_argument
from .keys import AuthorizedKeys, Identity, KnownHosts, format_public_key
from .node import Node
from .transport import ClientSecurity, Transport, transport_factory

__all__ = ["EXIT_ACCESS", "EXIT_AUTH", "EXIT_FAILED", "EXIT_UNREACHABLE", "EXIT_USAGE", "main"]

log = logging.getLogger("rain.cli")

#: Exit statuses, for scripts.
EXIT_OK = 0
EXIT_FAILED = 1  # the server answered with a failure (not found, bad value, plugin error)
EXIT_USAGE = 2  # bad arguments, bad config, broken plugin
EXIT_UNREACHABLE = 3  # no answer, timed out, link lost
EXIT_AUTH = 4  # keys missing or refused
EXIT_ACCESS = 5  # access rules refused the request
EXIT_INTERRUPTED = 130

_ACCESS_CODES = {
    ReasonCode.AUTHORIZATION_ERROR,
    ReasonCode.AUTHORIZATION_UNAUTHORIZED_SENDER,
    ReasonCode.AUTHORIZATION_PERMISSION_REQUIRED,
}

DESCRIPTION = """\
RAIN: secure messaging with research instruments.

An instrument runs `rain serve` with plugin files that declare its parameters; people and
programs use `rain get`, `rain set`, `rain monitor`, `rain list` and `rain ping` against it.
Try `rain demo` first: it runs a server and a client on this machine with fresh keys.
"""

EPILOG = """\
first steps:
  rain demo                                   watch a session from start to finish
  rain keygen alice@irf                       make your key (alice@irf.key + .pub)
  rain list tcp://station:4505 -k alice@irf.key --server-key station.key.pub
  rain get tcp://station:4505 temperature pressure
  rain set tcp://station:4505 sampling_interval 0.5
  rain monitor tcp://station:4505 temperature

Parameters may be given by name (temperature) or URI (/params/temperature).
Client options can also come from the environment: RAIN_KEY, RAIN_SERVER_KEY, RAIN_KNOWN_HOSTS.

exit status: 0 ok, 1 the server refused the command (unknown parameter, bad value, plugin
error), 2 bad arguments or config, 3 server unreachable or not answering, 4 keys missing or
refused, 5 access denied, 130 interrupted.
"""


class CliError(Exception):
    """A failure to report as one line with an exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------ output helpers


def _out(text: str = "") -> None:
    print(text, flush=True)


def _note(text: str) -> None:
    """A status line for a person (stderr), kept apart from the data on stdout."""
    print(f"rain: {text}", file=sys.stderr, flush=True)


def _json_line(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value).decode() + "\n")
    sys.stdout.flush()


def _show_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _uri(text: str) -> str:
    """A parameter name means /params/NAME; URIs pass through (client.parameter_uri). CliError
    for an empty name (which would otherwise mean /params/, the whole list)."""
    try:
        return parameter_uri(text)
    except ValueError:
        raise CliError(
            "an empty parameter name: give a name such as temperature, or /params for the list",
            EXIT_USAGE,
        ) from None


def _label(uri: str) -> str:
    path = uri.split("?", 1)[0].rstrip("/")
    return path[len("/params/"):] if path.startswith("/params/") else uri


def _parse_value(text: str) -> Any:
    """JSON when it parses (0.5, true, {"a": 1}, "quoted"), else the text itself.

    Text that starts like a JSON array, object or string (``[``, ``{``, ``"``) was meant as
    JSON: when it does not parse, CliError says so, rather than sending it as a string that
    the server would then refuse as the wrong type.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        if text.lstrip()[:1] in ("[", "{", '"'):
            raise CliError(
                f"VALUE {text!r} is not valid JSON ({exc}): fix it, or pass --string to send"
                " it as text",
                EXIT_USAGE,
            ) from None
        return text


# ------------------------------------------------------------------------------ connecting


def _load_identity(args: argparse.Namespace) -> Identity | None:
    path = args.key or os.environ.get("RAIN_KEY")
    return Identity.load(path) if path else None


def _server_key(args: argparse.Namespace) -> bytes | None:
    # What the command line says beats what the environment says, whichever kind it is.
    for key_text, hosts_file in (
        (args.server_key, args.known_hosts),
        (os.environ.get("RAIN_SERVER_KEY"), os.environ.get("RAIN_KNOWN_HOSTS")),
    ):
        if key_text:
            source = "--server-key" if key_text == args.server_key else "RAIN_SERVER_KEY"
            return public_key_argument(key_text, source)
        if hosts_file:
            return KnownHosts.load(hosts_file).lookup(args.endpoint)
    return None


def _secured(endpoint: str) -> bool:
    # The transport says whether it needs keys; no list of schemes to keep in step here.
    return transport_factory(endpoint).secure


def _credentials(args: argparse.Namespace) -> tuple[Identity | None, bytes | None]:
    """Our identity and the server's key, as the options say; CliError when one is missing."""
    identity = _load_identity(args)
    server_key = _server_key(args)
    if _secured(args.endpoint) and not args.insecure:
        if server_key is None:
            raise CliError(
                f"no server key for {args.endpoint}: pass --server-key (the server's .pub file"
                " or key) or --known-hosts FILE",
                EXIT_AUTH,
            )
        if identity is None:
            raise CliError(
                "no key file: pass --key FILE or set RAIN_KEY (make one with `rain keygen`)",
                EXIT_AUTH,
            )
    return identity, server_key


def _channel_options(args: argparse.Namespace) -> dict[str, Any]:
    """What every session of a client command is given: -t and the dead-link settings."""
    return {
        "command_timeout": args.timeout,
        "establish_timeout": args.timeout,
        "ping_interval": args.ping_interval or None,  # 0: never ping
        "ping_timeout": args.ping_timeout,
    }


def _make_transport(
    args: argparse.Namespace, security: ClientSecurity, open_timeout: float
) -> tuple[Transport, dict[str, Any] | None]:
    """A transport for the endpoint whose own handshake timeout is ``open_timeout``, if it has
    one (the ZeroMQ transport's ``open_timeout`` would otherwise cut a longer ``-t`` to 10 s);
    also the transport options used, for later connections."""
    factory = transport_factory(args.endpoint)
    options: dict[str, Any] | None = {"open_timeout": open_timeout}
    try:
        return factory.connect(args.endpoint, security, options), options
    except ConfigError:  # a transport without that option: its own timing then
        return factory.connect(args.endpoint, security, None), None


async def _open(args: argparse.Namespace) -> ClientChannel:
    """Connect and establish a session as the options say.

    The two steps are timed apart so that a failure can say what was observed: no handshake
    at all, or a handshake and then no session. Raises CliError or RAIN errors.
    """
    identity, server_key = _credentials(args)
    security = ClientSecurity(identity=identity, server_key=server_key, insecure=args.insecure)
    # The transport's own limit is a backstop: the CLI's timer below is the one that fires.
    transport, _ = _make_transport(args, security, args.timeout + 1.0)
    channel = ClientChannel(transport, identity=identity, **_channel_options(args))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    try:
        try:
            async with asyncio.timeout(args.timeout):
                await transport.open()
        except TimeoutError:
            raise await _no_handshake(args) from None
        except TransportSecurityError as exc:
            raise await _handshake_broken(args, exc) from None
        try:
            return await channel.establish_session(timeout=max(deadline - loop.time(), 0.001))
        except EstablishTimeout:
            opened = (
                "the secure handshake with {} completed (the keys are right)"
                if _secured(args.endpoint) and not args.insecure
                else "the link to {} opened"
            )
            raise CliError(
                f"{opened.format(args.endpoint)}, but no session was established within"
                f" {args.timeout:g} s: the link is slow or the server is busy; try a longer -t",
                EXIT_UNREACHABLE,
            ) from None
    except BaseException:
        await channel.close()  # closes the transport too
        raise


def _tcp_address(endpoint: str) -> tuple[str, int] | None:
    if not endpoint.lower().startswith("tcp://"):
        return None
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    host = host.rsplit(";", 1)[-1].strip("[]")  # a ZeroMQ source address comes before ';'
    if not host or host == "*" or not port.isdigit():
        return None
    return host, int(port)


async def _probe(endpoint: str, timeout: float) -> str | None:
    """Try a plain TCP connection to a tcp:// endpoint: "refused", "silent" (no answer),
    "open" (something accepted it), or None when that cannot be told (not tcp://)."""
    address = _tcp_address(endpoint)
    if address is None:
        return None
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(*address)
    except TimeoutError:
        return "silent"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "silent"  # unreachable network or host, name not found: nothing answered
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return "open"


async def _no_handshake(args: argparse.Namespace, what: str = "handshake") -> CliError:
    """What a connection attempt that got no secure handshake (``what``: or no session) in
    ``-t`` observed, checked with a plain TCP connection where the endpoint is tcp://."""
    endpoint, seconds = args.endpoint, args.timeout
    seen = await _probe(endpoint, min(1.0, seconds))
    address = _tcp_address(endpoint)
    where = f"{address[0]}:{address[1]}" if address else endpoint
    if seen == "refused":
        text = (f"nothing listens at {where} (TCP connection refused): is the server running,"
                " and is this its address?")
    elif seen == "silent":
        text = (f"no answer at all from {where}: not even a TCP connection (the host is down or"
                " unreachable, or a firewall drops the packets)")
    elif seen == "open":
        if what == "handshake":
            detail = ("no secure handshake completed in that time: the link or server is too"
                      " slow (try a longer -t), or it is not a RAIN server")
        else:
            detail = ("the secure handshake or the session setup did not finish in that time:"
                      " the link or server is too slow (try a longer -t), or it is not a RAIN"
                      " server")
        text = f"{where} accepts TCP connections, but {detail}"
    else:
        text = f"is the server at {endpoint} running?"
    return CliError(f"no {what} with {endpoint} within {seconds:g} s: {text}", EXIT_UNREACHABLE)


async def _handshake_broken(
    args: argparse.Namespace, exc: TransportSecurityError
) -> BaseException:
    """A handshake the server closed half-way (cause SERVER_KEY) looks the same whether the
    pinned key is wrong or the server stopped at that moment. A plain TCP connection tells
    them apart where the endpoint is tcp://: refused means nothing listens any more."""
    if exc.cause != SecurityCause.SERVER_KEY:
        return exc
    if await _probe(args.endpoint, min(1.0, args.timeout)) != "refused":
        return exc
    address = _tcp_address(args.endpoint)
    where = f"{address[0]}:{address[1]}" if address else args.endpoint
    return CliError(
        f"{args.endpoint} closed the connection during the secure handshake, and nothing"
        f" listens at {where} now (TCP connection refused): the server stopped or is"
        " restarting; is it running?",
        EXIT_UNREACHABLE,
    )


def _explain(exc: BaseException, args: argparse.Namespace) -> CliError:
    """One line and an exit status for an exception a command raised."""
    endpoint = getattr(args, "endpoint", "the server")
    if isinstance(exc, CliError):
        return exc
    if isinstance(exc, ClientClosed) and exc.cause is not None:
        return _explain(exc.cause, args)  # the reconnecting client gave up: say why
    if isinstance(exc, EstablishTimeout):
        return CliError(f"no session with {endpoint} within {args.timeout:g} s", EXIT_UNREACHABLE)
    if isinstance(exc, AuthenticationFailed):
        return CliError(
            f"{endpoint} refused our key ({exc.reason}): add your .pub key to the"
            " server's authorized_keys",
            EXIT_AUTH,
        )
    if isinstance(exc, SessionFailed):
        return CliError(f"{endpoint} ended the session: {exc.reason}", EXIT_UNREACHABLE)
    if isinstance(exc, KeyFileError):
        return CliError(str(exc), EXIT_AUTH)
    if isinstance(exc, CommandFailed):
        response = exc.response
        where = response.uri if isinstance(response, Command) and response.uri else endpoint
        if exc.reason.code in _ACCESS_CODES:
            return CliError(f"{where}: access denied ({exc.reason})", EXIT_ACCESS)
        if exc.reason.code == ReasonCode.COMMAND_EXPIRED:
            return CliError(
                f"{where}: {exc.reason}: not applied (it reached the server after its expiry)",
                EXIT_FAILED,
            )
        return CliError(f"{where}: {exc.reason}", EXIT_FAILED)
    if isinstance(exc, CommandTimeout):
        return CliError(
            f"{endpoint}: {exc} (the session was established: the link is slow or the server"
            " busy; try a longer -t)",
            EXIT_UNREACHABLE,
        )
    if isinstance(exc, (ChannelClosed, SessionError, NotDone)):
        text = str(exc)
        said = text if text.startswith("the session ended") else f"the session ended: {text}"
        return CliError(f"{endpoint}: {said}", EXIT_UNREACHABLE)
    if isinstance(exc, ConfigError | StateStoreError):
        return CliError(str(exc), EXIT_USAGE)
    if isinstance(exc, TransportSecurityError):
        if exc.cause == SecurityCause.SERVER_KEY:
            # The server closed the connection mid-handshake: a wrong pinned key looks like
            # this, and so does a link that broke (or a server that stopped) at that moment.
            return CliError(
                f"{exc}. If the key is right, the link may instead have broken during the"
                " handshake: try again",
                EXIT_AUTH,
            )
        return CliError(str(exc), EXIT_AUTH)  # REFUSED: the server's ZAP said no
    if isinstance(exc, TransportError):
        text = str(exc)
        return CliError(
            text if endpoint in text else f"cannot reach {endpoint}: {text}", EXIT_UNREACHABLE
        )
    from .server.errors import PluginError

    if isinstance(exc, PluginError):
        return CliError(f"plugin refused: {exc}", EXIT_USAGE)
    if isinstance(exc, OSError):
        return CliError(str(exc), EXIT_FAILED)
    log.debug("unexpected error", exc_info=exc)
    return CliError(f"unexpected error: {type(exc).__name__}: {exc}", EXIT_FAILED)


CommandFunction = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def _run(function: CommandFunction, args: argparse.Namespace) -> int:
    return _guarded(lambda: asyncio.run(function(args)), args)


def _guarded(call: Callable[[], int], args: argparse.Namespace) -> int:
    """The one place where an exception becomes a one-line error and an exit status."""
    try:
        return call()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        error = _explain(exc, args)
        log.debug("command failed", exc_info=exc)
        _note(f"error: {error}")
        return error.status


# ------------------------------------------------------------------------------ client commands


def _sample_line(uri: str, resource: Any) -> str:
    if isinstance(resource, dict) and "value" in resource:
        return f"{_label(uri)} {_show_value(resource['value'])}"
    return f"{_label(uri)} {_show_value(resource)}"


def _print_response(uri: str, response: Command, as_json: bool) -> None:
    resource = response.resource
    if as_json:
        if isinstance(resource, dict):
            _json_line({"uri": uri, **resource})
        else:
            _json_line({"uri": uri, "value": resource})
    elif isinstance(resource, dict) and "items" in resource:
        _print_parameters(resource["items"])
    else:
        _out(_sample_line(uri, resource))


async def _cmd_get(args: argparse.Namespace) -> int:
    uris = [_uri(text) for text in args.uris]  # every name checked before connecting
    channel = await _open(args)
    try:
        for uri in uris:
            _print_response(uri, await channel.get(uri), args.json)
    finally:
        await channel.finish()
    return EXIT_OK


async def _cmd_set(args: argparse.Namespace) -> int:
    value = args.value if args.string else _parse_value(args.value)
    # Every set carries #expires, by default its timeout from now: a set that reaches the
    # server after we gave up on it (a stalled link) is refused with 1001, never applied.
    lifetime = args.timeout if args.expires is None else args.expires
    expires = datetime.now(UTC) + timedelta(seconds=lifetime)
    uri = _uri(args.uri)
    if value is None:
        # LIME omits null fields, so a bare null would arrive as "no value": wrap it.
        from .server.samples import SAMPLE_TYPE  # here: the server package is slow to import

        resource, kind = {"value": None}, SAMPLE_TYPE
    else:
        resource, kind = value, "application/json"
    channel = await _open(args)
    try:
        command = Command(
            CommandMethod.SET, uri, id=channel.new_id(), resource=resource, type=kind,
            metadata={"#expires": expires.isoformat(timespec="milliseconds")},
        )
        response = await channel.send_command(command)
        if response.status is CommandStatus.FAILURE:
            assert response.reason is not None
            raise CommandFailed(response.reason, response)
        _print_response(uri, response, args.json)
    finally:
        await channel.finish()
    return EXIT_OK


def _print_parameters(items: Sequence[Any]) -> None:
    rows = []
    for item in items:
        if not isinstance(item, dict):
            continue
        rows.append((
            str(item.get("name", "?")),
            ",".join(item.get("methods") or []),
            str(item.get("unit") or ""),
            str(item.get("description") or ""),
        ))
    if not rows:
        _out("(no parameters you may use)")
        return
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for name, methods, unit, description in rows:
        line = f"{name:<{widths[0]}}  {methods:<{widths[1]}}  {unit:<{widths[2]}}  {description}"
        _out(line.rstrip())


async def _cmd_list(args: argparse.Namespace) -> int:
    channel = await _open(args)
    try:
        response = await channel.get("/params")
    finally:
        await channel.finish()
    items = (response.resource or {}).get("items", [])
    if args.json:
        _json_line(items)
    else:
        _print_parameters(items)
    return EXIT_OK


async def _cmd_ping(args: argparse.Namespace) -> int:
    channel = await _open(args)
    try:
        for index in range(args.count):
            seconds = await channel.ping()
            if args.json:
                _json_line({"server": str(channel.remote_node), "seconds": seconds})
            else:
                _out(f"pong from {channel.remote_node}: {seconds * 1000:.2f} ms")
            if index + 1 < args.count:
                await asyncio.sleep(args.interval)
    finally:
        await channel.finish()
    return EXIT_OK


def _updates(count: int) -> str:
    return f"{count} update" + ("" if count == 1 else "s")


class _Monitor:
    """Prints updates; notices drops, gaps and server restarts (epoch changes)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.uris = [_uri(text) for text in args.uris]
        self.seqs: dict[str, int] = {}
        self.printed = 0
        self.done = asyncio.Event()

    def show(self, update: Update) -> None:
        if self.done.is_set():
            return
        uri, resource = update.uri, update.sample
        label = _label(uri)
        server_dropped = resource.get("dropped") if isinstance(resource, dict) else None
        server_dropped = server_dropped if isinstance(server_dropped, int) else 0
        if update.restarted:
            _note(f"{label}: the server restarted (epoch {update.epoch}); numbering starts again")
            self.seqs.pop(uri, None)
        seq = resource.get("seq") if isinstance(resource, dict) else None
        if isinstance(seq, int):
            if uri in self.seqs and not update.dropped:
                missed = seq - self.seqs[uri] - 1
                if missed > 0:
                    _note(f"{label}: {_updates(missed)} missed")
            self.seqs[uri] = seq
        if server_dropped:
            _note(f"{label}: the server dropped {_updates(server_dropped)} (we read too slowly)")
        if update.dropped > server_dropped:
            _note(f"{label}: {_updates(update.dropped - server_dropped)} dropped here"
                  " (printing could not keep up)")
        if self.args.json:
            doc = dict(resource) if isinstance(resource, dict) else {"value": resource}
            _json_line({"uri": uri, **doc})
        else:
            stamp = resource.get("timestamp") if isinstance(resource, dict) else None
            value = resource.get("value") if isinstance(resource, dict) else resource
            _out(f"{stamp or time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}  {label}  "
                 f"{_show_value(value)}")
        self.printed += 1
        if self.args.count and self.printed >= self.args.count:
            self.done.set()


class _Session:
    """Follows the reconnecting client's state changes for ``rain monitor``.

    Prints one line when the session is lost and one when it is back; remembers how the first
    connection attempt failed (the monitor then stops: a typo in the endpoint must not retry
    for ever) and why the client gave up (a refused key).
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.established = False
        self.failure: BaseException | None = None
        self.ended = False
        self.changed = asyncio.Event()

    def __call__(self, change: StateChange) -> None:
        state = change.state
        if state is ClientState.ESTABLISHED:
            if self.established:
                _note(f"reconnected to {self.endpoint}; subscribing again")
            self.established = True
        elif state is ClientState.LOST:
            reason = change.reason
            if reason is not None and reason.code == ReasonCode.SESSION_AUTHENTICATION_FAILED:
                # The client gives up on this one; the error line says why.
                self.failure = CliError(
                    f"{self.endpoint} ended our session: {reason}", EXIT_AUTH
                )
            else:
                _note(f"connection to {self.endpoint} lost ({reason or 'closed'});"
                      " reconnecting")
        elif state is ClientState.RETRYING and not self.established and self.failure is None:
            self.failure = change.error or Disconnected(f"no session with {self.endpoint}")
        elif state is ClientState.CLOSED:
            self.ended = True
            if self.failure is None and change.error is not None:
                self.failure = change.error
        self.changed.set()

    async def wait(self, established: bool) -> None:
        """Until the first session (``established``) or the end; raises the failure."""
        while True:
            if self.failure is not None:
                raise self.failure
            if self.ended or (established and self.established):
                return
            self.changed.clear()
            await self.changed.wait()


async def _monitor(
    args: argparse.Namespace, client: Client, session: _Session, monitor: _Monitor
) -> None:
    await client.start(wait=False)
    try:
        await session.wait(established=True)
    except (EstablishTimeout, TransportError) as exc:
        if isinstance(exc, TransportSecurityError):
            raise await _handshake_broken(args, exc) from None
        raise await _no_handshake(args, "session") from None
    for uri in monitor.uris:
        await client.subscribe(uri, monitor.show, timeout=args.timeout)
    await session.wait(established=False)  # the client only ends by giving up


async def _close_soon(client: Client, grace: float = 1.0) -> None:
    """Close the client politely, but within about ``grace`` seconds whatever the link does."""
    channel = client.channel
    closing = asyncio.ensure_future(client.close())
    done, _ = await asyncio.wait({closing}, timeout=grace)
    if not done and channel is not None:
        await channel.close()  # no answer to `finishing`: drop the session at once
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closing, grace)


async def _cmd_monitor(args: argparse.Namespace) -> int:
    monitor = _Monitor(args)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        # Ctrl-C stops at once in every state, and ends an established session politely.
        loop.add_signal_handler(signal.SIGINT, monitor.done.set)
    identity, server_key = _credentials(args)
    session = _Session(args.endpoint)
    security = ClientSecurity(identity=identity, server_key=server_key, insecure=args.insecure)
    # Only to learn which transport options apply; each session makes its own transport.
    probe, transport_options = _make_transport(args, security, args.timeout)
    await probe.close()
    client = Client(
        args.endpoint,
        identity=identity,
        server_key=server_key,
        insecure=args.insecure,
        on_state=session,
        transport_options=transport_options,
        **_channel_options(args),
    )
    work = asyncio.ensure_future(_monitor(args, client, session, monitor))
    stopped = asyncio.ensure_future(monitor.done.wait())
    try:
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        work.cancel()
        await asyncio.gather(work, stopped, return_exceptions=True)
        await _close_soon(client)
    if monitor.done.is_set() or work.cancelled():
        return EXIT_OK
    error = work.exception()
    if error is not None:
        raise error
    return EXIT_OK


# ------------------------------------------------------------------------------ discovery


async def _cmd_discover(args: argparse.Namespace) -> int:
    from .discovery import discover, format_table

    try:
        servers = await discover(args.timeout, interfaces=args.interface)
    except TransportError as exc:  # multicast DNS cannot be used here (no route, port taken)
        raise CliError(f"cannot browse the local network: {exc}", EXIT_UNREACHABLE) from None
    if args.json:
        _json_line([server.to_json() for server in servers])
        return EXIT_OK
    if not servers:
        _note(f"no RAIN server answered within {args.timeout:g} s (servers advertise with"
              " `rain serve --advertise`; multicast DNS does not cross routers)")
        return EXIT_OK
    hosts_file = args.known_hosts or os.environ.get("RAIN_KNOWN_HOSTS")
    hosts = KnownHosts.load(hosts_file) if hosts_file else None
    for line in format_table(servers, (lambda node: hosts.lookup(f"rain://{node}"))
                             if hosts is not None else None):
        _out(line)
    return EXIT_OK


class _Advertising:
    """`rain serve --advertise` (or ``[discovery] advertise = true``): the server's
    advertisement on the local network, started once it listens and withdrawn before it
    closes (as the inner context of ``async with server, advertising``)."""

    def __init__(self, wanted: bool, config: Any) -> None:
        self.wanted = wanted
        self.config = config
        self.advertisement: Any = None
        if wanted:
            from .discovery import require

            require()  # a missing extra is a setup error, found before plugin code runs

    async def start(self, server: Any) -> None:
        if not self.wanted:
            return
        from .discovery import Advertisement

        identity = None if self.config.insecure else server.identity
        advertisement = Advertisement(
            server.node, server.endpoints, identity.public_key if identity else None,
            self.config.discovery.interfaces or None,
        )
        try:
            await advertisement.start()
        except TransportError as exc:
            raise CliError(f"cannot advertise: {exc}", EXIT_FAILED) from None
        self.advertisement = advertisement
        _note(f"advertising {server.node} on the local network ({advertisement.service}):"
              f" {' '.join(advertisement.advertised)}, key fingerprint"
              f" {advertisement.fingerprint or 'none (insecure)'}")

    async def __aenter__(self) -> _Advertising:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.advertisement is not None:
            await self.advertisement.close()


class _Archiving:
    """``[archive] endpoint``: the samples of parameters declared ``archive=True`` go to the
    site stream on that NATS leaf node (``rain_transport_nats.archive``), from once the server
    listens until it closes (what is queued is stored first, for a few seconds at most)."""

    def __init__(self, config: Any) -> None:
        self.config = config.archive
        self.archiver: Any = None
        self.module: Any = None
        if self.config.endpoint is not None:
            # Found by name, and now: a missing extra is a setup error, before plugins run.
            try:
                self.module = importlib.import_module("rain_transport_nats.archive")
            except ImportError as exc:
                raise CliError(
                    "[archive] needs the NATS transport: pip install 'rain-envelopes[nats]'"
                    f" ({exc})", EXIT_USAGE,
                ) from None

    async def start(self, server: Any) -> None:
        if self.module is None:
            return
        if server.identity is None:
            raise CliError("[archive] needs the server's key_file (its NATS user)", EXIT_USAGE)
        archiver = self.module.Archiver(
            self.config.endpoint, server.identity, stream=self.config.stream,
            domain=self.config.domain,
        )
        try:
            await archiver.start()
        except TransportError as exc:
            raise CliError(f"cannot archive: {exc}", EXIT_FAILED) from None
        self.archiver = archiver
        names = archiver.attach(server)
        _note(f"archiving {', '.join(names) or 'no parameter (none declares archive=True)'}"
              f" to stream {self.config.stream} at {self.config.endpoint}")

    async def __aenter__(self) -> _Archiving:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self.archiver is not None:
            await self.archiver.close()


# ------------------------------------------------------------------------------ keys


def _cmd_keygen(args: argparse.Namespace) -> int:
    try:
        node = Node.parse(args.name)
    except ValueError as exc:
        raise CliError(
            f"{args.name!r} is not a node name such as alice@irf: {exc}", EXIT_USAGE
        ) from None
    if not node.name:
        raise CliError(f"{args.name!r} is not a node name such as alice@irf", EXIT_USAGE)
    path = Path(args.out) if args.out else Path(f"{args.name}.key")
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    if not args.force and (path.exists() or Path(f"{path}.pub").exists()):
        # 4, as every key-file refusal (Identity.save refusing the same race says so too).
        raise CliError(f"{path} already exists; pass --force to replace it", EXIT_AUTH)
    identity = Identity.generate()
    identity.save(path, overwrite=args.force)
    if args.json:
        _json_line({"name": args.name, "key_file": str(path), "public_key_file": f"{path}.pub",
                    "public_key": identity.public_key_text})
        return EXIT_OK
    _out(f"secret key:  {path}  (keep it private; mode 0600)")
    _out(f"public key:  {path}.pub")
    _out(f"             {identity.public_key_text}")
    _out("to let this key in, add this line to the server's authorized_keys:")
    _out(f"  {identity.public_key_text} {args.name}")
    return EXIT_OK


def _cmd_authorize(args: argparse.Namespace) -> int:
    key = public_key_argument(args.public_key, "PUBLIC_KEY")
    target = Path(args.authorized_keys)
    table = AuthorizedKeys.load(target) if target.exists() else AuthorizedKeys(path=target)
    table.add(key, args.name)
    table.save(target)
    _out(f"{args.name} may now connect with {format_public_key(key)} ({target})")
    return EXIT_OK


# ------------------------------------------------------------------------------ serve


def _metrics_address(address: str | None) -> tuple[str, int] | None:
    """`rain serve --metrics`: where to serve them (None: not asked), checked with the extra
    before any plugin code runs."""
    if not address:
        return None
    from .metrics import load_prometheus, parse_address

    try:
        load_prometheus()
        return parse_address(address)
    except ImportError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except ValueError as exc:
        raise CliError(f"--metrics {exc}", EXIT_USAGE) from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _cmd_serve(args: argparse.Namespace) -> int:
    from .server import Server, load_config
    from .server.config import configure_logging

    config = load_config(args.config)
    if not config.listen:  # a config error: before any key is read or plugin code runs
        raise CliError(f"{args.config}: listen: expected at least one endpoint", EXIT_USAGE)
    configure_logging(config.logging, verbose=args.verbose)
    wanted = config.discovery.advertise if args.advertise is None else args.advertise
    advertising = _Advertising(wanted, config)  # checks the extra before any plugin runs
    archiving = _Archiving(config)  # so does this
    metrics_at = _metrics_address(args.metrics)  # so does this
    server = Server.from_config(config)
    metrics = None
    if metrics_at is not None:
        from .metrics import ServerMetrics

        metrics = ServerMetrics(server)

    async def serve() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def reload() -> None:
            async def run() -> None:
                try:
                    revoked = await server.reload_keys()
                    if revoked:
                        # Per key: these names' sessions on keys still listed carry on.
                        log.warning("closed the sessions of the revoked keys of %s",
                                    ", ".join(sorted(revoked)))
                except KeyFileError as exc:
                    log.error("keeping the old authorised keys: %s", exc)

            reloads.add(asyncio.ensure_future(run()))

        reloads: set[asyncio.Future[None]] = set()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if hasattr(signal, "SIGHUP"):
            loop.add_signal_handler(signal.SIGHUP, reload)
        # Withdrawn and the archive flushed (exit first), then the server closes.
        async with server, advertising, archiving:
            try:
                await server.listen()
            except TransportError as exc:
                raise CliError(f"cannot serve: {exc}", EXIT_FAILED) from None
            except ConfigError as exc:  # e.g. a bad [transport] option
                raise CliError(f"{args.config}: transport: {exc}", EXIT_USAGE) from None
            await advertising.start(server)
            await archiving.start(server)
            pid = os.getpid()
            if args.pid_file:
                _write_pid_file(Path(args.pid_file), pid)
            try:
                count = len(server.parameters)
                _out(f"rain: serving {server.node} on {' '.join(server.endpoints)}"
                     f" ({count} parameter{'' if count == 1 else 's'}, process {pid})")
                if metrics is not None and metrics_at is not None:
                    port = metrics.serve(*metrics_at)
                    _out(f"rain: metrics at http://{_url_host(metrics_at[0])}:{port}/metrics")
                await stop.wait()
                _out("rain: shutting down")
            finally:
                if metrics is not None:
                    metrics.close()
                if args.pid_file:
                    _remove_pid_file(Path(args.pid_file), pid)
        for future in reloads:
            future.cancel()
        return EXIT_OK

    return _run(lambda _args: serve(), args)


def _write_pid_file(path: Path, pid: int) -> None:
    """Write ``pid`` to ``path`` (folders made as needed), replacing it in one rename so that
    a reader never sees half a number. CliError (usage) when it cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            temp.write_text(f"{pid}\n")
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
    except OSError as exc:
        raise CliError(
            f"--pid-file: cannot write {path}: {exc.strerror or exc}", EXIT_USAGE
        ) from None


def _remove_pid_file(path: Path, pid: int) -> None:
    """Remove the pid file, unless another server has written its own pid there since."""
    with contextlib.suppress(OSError):
        if path.read_text().strip() == str(pid):
            path.unlink()


# ------------------------------------------------------------------------------ demo


def _zmq_ready() -> bool:
    try:
        transport_factory("tcp://127.0.0.1:1")
    except Exception:  # not installed or not finished: the demo falls back to memory
        return False
    return True


def _example_plugins() -> Path | None:
    # The repository's examples/ folder ships inside the wheel as `rain_envelopes.examples`
    # (pyproject maps it), so the demo works from a plain `pip install .` as from a checkout.
    try:
        root = resources.files("rain_envelopes.examples")
    except ModuleNotFoundError:
        return None
    candidate = Path(str(root)) / "weather_station" / "plugins"
    return candidate if candidate.is_dir() else None


async def _cmd_demo(args: argparse.Namespace) -> int:
    from .server import Server, ServerConfig

    plugins = Path(args.plugins) if args.plugins else _example_plugins()
    if plugins is None or not plugins.is_dir():
        raise CliError(
            "cannot find the example plugins (examples/weather_station/plugins); pass --plugins",
            EXIT_USAGE,
        )
    use_tcp = not args.memory and _zmq_ready()
    step = 0

    def say(text: str) -> None:
        nonlocal step
        step += 1
        _out(f"[{step:2}] {text}")

    with tempfile.TemporaryDirectory(prefix="rain-demo-") as folder:
        base = Path(folder)
        station, alice = Identity.generate(), Identity.generate()
        station.save(base / "station.key")
        alice.save(base / "alice.key")
        AuthorizedKeys.from_mapping({alice.public_key_text: "alice@irf"}).save(
            base / "authorized_keys"
        )
        say(f"fresh keys in {base}: station@irf {station.public_key_text[:20]}..., "
            f"alice@irf {alice.public_key_text[:20]}...")
        endpoint = "tcp://127.0.0.1:0" if use_tcp else f"memory://rain-demo-{secrets.token_hex(4)}"
        config = ServerConfig(
            identity=Node.parse("station@irf"),
            listen=(endpoint,),
            key_file=base / "station.key",
            authorized_keys=base / "authorized_keys",
            allow=("127.0.0.1/32",) if use_tcp else (),
            plugins=plugins,
        )
        server = Server.from_config(config)
        async with server:
            try:
                await server.listen()
            except TransportError as exc:
                raise CliError(f"cannot serve: {exc}", EXIT_FAILED) from None
            bound = server.endpoints[0]
            security = "ZeroMQ with CURVE" if use_tcp else "in-process memory transport"
            say(f"server station@irf serving {len(server.parameters)} parameters on {bound}"
                f" ({security})")
            channel = await connect(
                bound, identity=alice, server_key=station.public_key, establish_timeout=5.0
            )
            say(f"session established: we are {channel.local_node}, the server is "
                f"{channel.remote_node} (encryption {channel.transport.encryption.value}, "
                f"compression {channel.compression.value})")
            try:
                await _demo_session(channel, say)
            finally:
                await channel.finish()
            say("session finished")
        say("server closed; keys deleted")
    return EXIT_OK


async def _demo_session(channel: ClientChannel, say: Callable[[str], None]) -> None:
    reply = await channel.get("/params")
    names = ", ".join(item["name"] for item in reply.resource["items"])
    say(f"get /params -> {names}")
    reply = await channel.get("/params/temperature")
    say(f"get /params/temperature -> {reply.resource['value']} degC (seq {reply.resource['seq']})")
    reply = await channel.set("/params/sampling_interval", 0.2)
    say(f"set /params/sampling_interval 0.2 -> {reply.status.value if reply.status else '?'}, "
        f"sample {_show_value(reply.resource)}")
    try:
        await channel.set("/params/sampling_interval", -1)
    except CommandFailed as exc:
        say(f"set /params/sampling_interval -1 -> refused: {exc.reason}")

    receipts: asyncio.Queue[Notification] = asyncio.Queue()
    channel.on_notification = receipts.put_nowait
    message = Message("text/plain", "hello station", id=channel.new_id())
    await channel.send_message(message)
    say(f"message {message.id} sent: {message.content!r}")
    async with asyncio.timeout(5):
        while True:
            receipt = await receipts.get()
            say(f"receipt for {receipt.id}: {receipt.event.value}")
            if receipt.event in (NotificationEvent.CONSUMED, NotificationEvent.FAILED):
                break

    updates: asyncio.Queue[Command] = asyncio.Queue()
    reply = await channel.subscribe("/params/temperature", updates.put_nowait)
    say(f"subscribe /params/temperature -> now {reply.resource['value']} "
        f"(seq {reply.resource['seq']})")
    async with asyncio.timeout(5):
        for _ in range(2):
            update = await updates.get()
            say(f"update: temperature {update.resource['value']} at "
                f"{update.resource['timestamp']} (seq {update.resource['seq']})")
    await channel.unsubscribe("/params/temperature")

    alerts: asyncio.Queue[Command] = asyncio.Queue()
    await channel.subscribe("/params/storm_alert", alerts.put_nowait)
    await channel.set("/params/simulate_storm", True)
    say("set /params/simulate_storm true: the pressure starts to fall")
    async with asyncio.timeout(5):
        while True:
            alert = await alerts.get()
            if alert.resource["value"].get("level") == "warning":
                say(f"triggered update: storm_alert {_show_value(alert.resource['value'])}")
                break
    await channel.set("/params/simulate_storm", False)


# ------------------------------------------------------------------------------ arguments


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"rain: error: {message}\n")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def _seconds_or_never(text: str) -> float:
    value = _seconds(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (never) or more seconds, not {text}")
    return value


#: Dead-link defaults: a link idle for 2 s is pinged, and given up 3 s later without an
#: answer, so a link that died silently is noticed within about 5 s (the Client's defaults).
PING_INTERVAL = 2.0
PING_TIMEOUT = 3.0


def _client_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument("-k", "--key", metavar="FILE",
                       help="your secret key file (default: $RAIN_KEY)")
    group.add_argument("--server-key", metavar="KEY",
                       help="the server's public key: its .pub file or 'ed25519:...' text"
                            " (default: $RAIN_SERVER_KEY)")
    group.add_argument("--known-hosts", metavar="FILE",
                       help="file of '<endpoint> <server key>' lines to look the server key up"
                            " in (default: $RAIN_KNOWN_HOSTS)")
    group.add_argument("--insecure", action="store_true",
                       help="talk to a server without transport security (loopback tests only)")
    group.add_argument("-t", "--timeout", type=_positive_seconds, default=30.0, metavar="SECONDS",
                       help="give up on the session, and on each answer, after this long"
                            " (default: 30, enough for a session over a 2 s round trip)")
    group.add_argument("--ping-interval", type=_seconds_or_never, default=PING_INTERVAL,
                       metavar="SECONDS",
                       help="ping the server when nothing came from it for this long, to"
                            f" notice a dead link (0: never; default: {PING_INTERVAL:g})")
    group.add_argument("--ping-timeout", type=_positive_seconds, default=PING_TIMEOUT,
                       metavar="SECONDS",
                       help="give the link up as dead when a ping gets no answer in this long"
                            f" (default: {PING_TIMEOUT:g})")
    parser.add_argument(
        "--json", action="store_true",
        help="print JSON (one document per result; `list` prints one array)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rain",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-v info, -vv debug)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    keygen = commands.add_parser("keygen", help="make a new key pair for a node",
                                 description="Make a secret key file (mode 0600) and its .pub.")
    keygen.add_argument("name", metavar="NAME", help="the node's identity, e.g. alice@irf")
    keygen.add_argument("-o", "--out", metavar="FILE", help="secret key file (default: NAME.key)")
    keygen.add_argument("--force", action="store_true", help="replace existing key files")
    keygen.add_argument("--json", action="store_true", help="print JSON")

    authorize = commands.add_parser(
        "authorize", help="let a public key in as an identity",
        description="Add '<public key> NAME' to a server's authorised-keys file (created if"
                    " missing). Send the running server SIGHUP to apply changes.")
    authorize.add_argument("authorized_keys", metavar="AUTHORIZED_KEYS", help="the file to edit")
    authorize.add_argument("public_key", metavar="PUBLIC_KEY",
                           help="a .pub file or 'ed25519:...' text")
    authorize.add_argument("name", metavar="NAME", help="the identity it proves, e.g. alice@irf")

    serve = commands.add_parser(
        "serve", help="run a server from a TOML config file",
        description="Run a RAIN server. It prints its process id when it is serving. SIGHUP"
                    " (kill -HUP PID) re-reads the authorised keys and closes the sessions of"
                    " revoked keys; SIGINT/SIGTERM shut down cleanly.")
    serve.add_argument("config", metavar="CONFIG", help="the server's TOML config file")
    serve.add_argument("--advertise", action=argparse.BooleanOptionalAction, default=None,
                       help="advertise this server on the local network for `rain discover`"
                            " and rain://NAME endpoints (default: [discovery] advertise in the"
                            " config, else off; needs the discovery extra)")
    serve.add_argument("--pid-file", metavar="FILE",
                       help="write the process id to FILE once serving (removed on exit), so"
                            ' that `kill -HUP "$(cat FILE)"` reloads the keys')
    serve.add_argument("--metrics", metavar="[HOST:]PORT",
                       help="serve Prometheus metrics at http://HOST:PORT/metrics (HOST default"
                            " 127.0.0.1; PORT 0: any free one); off by default; needs the"
                            " metrics extra")

    discover = commands.add_parser(
        "discover", help="list the servers advertised on the local network",
        description="List the RAIN servers that answer on the local network (mDNS/DNS-SD;"
                    " servers run with --advertise). Connect to one by name with"
                    " rain://NAME@DOMAIN: its key must still be pinned (--server-key or a"
                    " known-hosts line for rain://NAME@DOMAIN); discovery decides nothing.")
    discover.add_argument("-t", "--timeout", type=_positive_seconds, default=2.0,
                          metavar="SECONDS", help="listen for answers this long (default: 2)")
    discover.add_argument("--interface", action="append", metavar="ADDRESS",
                          help="an IPv4 address of this host to browse on, repeatable"
                               " (default: $RAIN_DISCOVERY_INTERFACES, else every interface)")
    discover.add_argument("--known-hosts", metavar="FILE",
                          help="say which advertised keys match the keys pinned there for"
                               " rain://NAME (default: $RAIN_KNOWN_HOSTS)")
    discover.add_argument("--json", action="store_true", help="print one JSON array")

    get = commands.add_parser("get", help="read parameters",
                              description="Read the current value of each parameter.")
    get.add_argument("endpoint", metavar="ENDPOINT", help="e.g. tcp://station:4505")
    get.add_argument("uris", metavar="PARAMETER", nargs="+", help="name or URI")
    _client_options(get)

    put = commands.add_parser("set", help="write a parameter",
                              description="Set a parameter. VALUE is JSON when it parses"
                                          " (0.5, true, [1,2]), else taken as a string.")
    put.add_argument("endpoint", metavar="ENDPOINT")
    put.add_argument("uri", metavar="PARAMETER", help="name or URI")
    put.add_argument("value", metavar="VALUE")
    put.add_argument("--string", action="store_true", help="send VALUE as a string, always")
    put.add_argument("--expires", type=_seconds, metavar="SECONDS",
                     help="the server must not apply the set later than this many seconds"
                          " from now (default: the timeout, -t); 0 or less: already expired")
    _client_options(put)

    monitor = commands.add_parser(
        "monitor", help="print updates until interrupted",
        description="Subscribe and print every update with its timestamp until Ctrl-C."
                    " Reconnects when the link drops and says when updates were dropped.")
    monitor.add_argument("endpoint", metavar="ENDPOINT")
    monitor.add_argument("uris", metavar="PARAMETER", nargs="+", help="name or URI")
    monitor.add_argument("-n", "--count", type=int, default=0, metavar="N",
                         help="stop after N updates (the first value counts)")
    _client_options(monitor)

    listing = commands.add_parser("list", help="list the parameters you may use",
                                  description="List parameters: name, methods, unit, text.")
    listing.add_argument("endpoint", metavar="ENDPOINT")
    _client_options(listing)

    ping = commands.add_parser("ping", help="check a server answers",
                               description="Establish a session and time round trips.")
    ping.add_argument("endpoint", metavar="ENDPOINT")
    ping.add_argument("-c", "--count", type=int, default=1, metavar="N", help="pings to send")
    ping.add_argument("-i", "--interval", type=float, default=1.0, metavar="SECONDS")
    _client_options(ping)

    demo = commands.add_parser(
        "demo", help="run a server and a client here, with fresh keys",
        description="Start the example weather station on loopback with fresh keys in a"
                    " temporary folder, and walk a client through a session.")
    demo.add_argument("--plugins", metavar="DIR", help="plugin folder (default: the example)")
    demo.add_argument("--memory", action="store_true",
                      help="use the in-process transport instead of ZeroMQ")

    nats_config = commands.add_parser(
        "nats-config", help="write a NATS broker's users from RAIN server configs",
        description="Print the nats-server authorization block (users by nkey, subject"
                    " permissions) for the RAIN servers whose config files are given, from"
                    " their keys, authorised keys and access rules. Include it in the"
                    " broker's config and reload the broker after every key change."
                    " Needs the nats extra.")
    nats_config.add_argument("configs", metavar="CONFIG", nargs="+",
                             help="a RAIN server's TOML config file")
    nats_config.add_argument("-o", "--out", metavar="FILE",
                             help="replace FILE (atomically) instead of printing")

    from .dashboard.command import add_parser as add_dashboard  # no aiohttp imported here

    add_dashboard(commands, _client_options)
    return parser


def _cmd_nats_config(args: argparse.Namespace) -> int:
    # Found by name, only now: `rain` imports neither nkeys nor nats-py otherwise.
    try:
        nats_config = importlib.import_module("rain_transport_nats.config")
    except ImportError as exc:
        raise CliError(
            f"nats-config needs the NATS transport: pip install 'rain-envelopes[nats]' ({exc})",
            EXIT_USAGE,
        ) from None
    text, summary = nats_config.generate(args.configs)
    if args.out:
        nats_config.write(text, args.out)
        _note(f"{summary}; wrote {args.out}")
    else:
        _out(text.rstrip("\n"))
        _note(summary)
    return EXIT_OK


async def _cmd_dashboard(args: argparse.Namespace) -> int:
    from .dashboard.command import run  # aiohttp only now, with its extra named if missing

    return await run(args)


_ASYNC_COMMANDS: dict[str, CommandFunction] = {
    "get": _cmd_get,
    "set": _cmd_set,
    "list": _cmd_list,
    "ping": _cmd_ping,
    "monitor": _cmd_monitor,
    "demo": _cmd_demo,
    "discover": _cmd_discover,
    "dashboard": _cmd_dashboard,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rain`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # Errors reach the user as one `rain: error:` line; library warnings that say the same
    # thing again would only add noise, so they show from -v on.
    level = [logging.ERROR, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="rain: %(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command in _ASYNC_COMMANDS:
        return _run(_ASYNC_COMMANDS[args.command], args)
    sync = {"keygen": _cmd_keygen, "authorize": _cmd_authorize, "serve": _cmd_serve,
            "nats-config": _cmd_nats_config}
    return _guarded(lambda: sync[args.command](args), args)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())

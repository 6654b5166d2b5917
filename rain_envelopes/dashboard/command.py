"""The ``rain dashboard`` sub-command: its arguments and what it runs.

Each endpoint gets its own reconnecting client, with the key and pinned server key found as
for every other client command (``-k``, ``--server-key``, ``--known-hosts`` and the RAIN_*
variables; with several endpoints the server keys come from ``--known-hosts``, since one
``--server-key`` cannot be every server's). The page is served on 127.0.0.1 unless
``--host`` names another address, which also needs ``--allow-remote`` and a TLS certificate.
The command prints the URL with its access token and runs until SIGINT or SIGTERM.

This module imports no aiohttp: the parser is built whether or not the extra is installed, and
running the command without it is one error line naming the extra.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
from collections.abc import Callable
from typing import Any

__all__ = ["DEFAULT_PORT", "add_parser", "run"]

DEFAULT_PORT = 8765


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port number (0-65535; 0: any free)")
    return value


def _window(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 10 <= value <= 24 * 3600:
        raise argparse.ArgumentTypeError("the plot window must be 10 s to 24 h")
    return value


def add_parser(commands: Any, client_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``dashboard`` to the ``rain`` sub-commands (``client_options`` adds -k and the rest)."""
    parser = commands.add_parser(
        "dashboard", help="watch and steer servers in a web browser",
        description="Serve a live web page of one or more servers' parameters on this machine:"
                    " values, plots, events, connection state, and set forms. Prints the URL"
                    " to open, with its access token. Needs the 'dashboard' extra (aiohttp).")
    parser.add_argument("endpoints", metavar="ENDPOINT", nargs="+",
                        help="a server to watch, e.g. tcp://station:4505 (several may be given)")
    web = parser.add_argument_group("web page")
    web.add_argument("--host", default="127.0.0.1",
                     help="address to serve the page on (default: 127.0.0.1, this machine only)")
    web.add_argument("--port", type=_port, default=DEFAULT_PORT,
                     help=f"port to serve the page on (default: {DEFAULT_PORT}; 0: any free one)")
    web.add_argument("--allow-remote", action="store_true",
                     help="allow --host beyond loopback (needs --certfile and --keyfile)")
    web.add_argument("--certfile", metavar="FILE", help="TLS certificate (PEM) for https")
    web.add_argument("--keyfile", metavar="FILE", help="TLS private key (PEM) for https")
    web.add_argument("--origin", action="append", default=[], metavar="URL",
                     help="also accept the page from this origin, e.g. https://dash.example.org"
                          " when a reverse proxy serves it (may be repeated)")
    web.add_argument("--window", type=_window, default=300.0, metavar="SECONDS",
                     help="how much history each plot keeps and shows (default: 300)")
    client_options(parser)


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    from ..cli import EXIT_USAGE, CliError

    if not args.certfile and not args.keyfile:
        return None
    if not (args.certfile and args.keyfile):
        raise CliError("TLS needs both --certfile and --keyfile", EXIT_USAGE)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.certfile, args.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"cannot load the TLS certificate or key: {exc}", EXIT_USAGE) from None
    return context


async def run(args: argparse.Namespace) -> int:
    """Run the dashboard as ``args`` say until interrupted; returns the exit status."""
    from .. import cli
    from ..transport import ClientSecurity
    from . import Hub, ServerSpec, load_web

    try:
        web = load_web()
    except ImportError as exc:
        raise cli.CliError(str(exc), cli.EXIT_USAGE) from None
    if len(args.endpoints) > 1 and args.server_key:
        raise cli.CliError(
            "--server-key is one server's key: with several endpoints, give their keys in a"
            " --known-hosts file", cli.EXIT_USAGE)
    specs = []
    for endpoint in args.endpoints:
        one = argparse.Namespace(**{**vars(args), "endpoint": endpoint})
        identity, server_key = cli._credentials(one)
        security = ClientSecurity(identity=identity, server_key=server_key,
                                  insecure=args.insecure)
        # Only to learn which transport options apply; each session makes its own transport.
        probe, transport_options = cli._make_transport(one, security, args.timeout)
        await probe.close()
        specs.append(ServerSpec(endpoint, {
            "identity": identity, "server_key": server_key, "insecure": args.insecure,
            "transport_options": transport_options, **cli._channel_options(args),
        }))
    try:
        dashboard = web.Dashboard(
            Hub(specs), host=args.host, port=args.port, ssl_context=_tls(args),
            allow_remote=args.allow_remote, extra_origins=args.origin, window=args.window,
        )
    except ValueError as exc:
        raise cli.CliError(str(exc), cli.EXIT_USAGE) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await dashboard.start()
    except OSError as exc:
        raise cli.CliError(str(exc), cli.EXIT_FAILED) from None
    try:
        if args.json:
            cli._json_line({"url": dashboard.url, "servers": args.endpoints})
        else:
            cli._out(f"rain: dashboard of {len(specs)} server{'s' if len(specs) > 1 else ''}"
                     f" at {dashboard.url}")
            cli._out("rain: open that URL in a browser; the token in it is the key to the page"
                     " (keep it to yourself). Ctrl-C stops.")
        await stop.wait()
    finally:
        await dashboard.close()
    return cli.EXIT_OK

"""``rain dashboard``: a live web page of instruments (the optional ``dashboard`` extra).

The dashboard is a client of one or more RAIN servers, with its user's identity and under the
servers' access rules, that serves a page on loopback: every server and its parameters, live
values pushed over a websocket, a plot of each numeric parameter, triggered events highlighted,
connection state, drop counts, and set forms built from each parameter's schema.

Layers: :mod:`.hub` is the RAIN side (reconnecting clients and the events the page needs, no
web code); :mod:`.web` is the aiohttp app, its security and the listening site; :mod:`.command`
is the ``rain dashboard`` sub-command. The page itself is ``static/`` (plain HTML, CSS and
JavaScript written for it, shipped in the wheel, nothing fetched from elsewhere).

Importing this package imports neither aiohttp nor the web layer, so the ``rain`` command can
describe the sub-command without the extra installed; :func:`load_web` imports it and names
the extra to install when it is missing.
"""

from __future__ import annotations

from types import ModuleType

from .hub import Hub, ServerSpec, SetOutcome, Station

__all__ = ["Hub", "ServerSpec", "SetOutcome", "Station", "load_web"]


def load_web() -> ModuleType:
    """The web layer (:mod:`rain_envelopes.dashboard.web`); ImportError naming the extra when
    aiohttp is not installed."""
    try:
        import aiohttp  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "rain dashboard needs aiohttp: pip install 'rain-envelopes[dashboard]'"
        ) from exc
    from . import web

    return web

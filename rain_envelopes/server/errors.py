"""The server's errors, where plugin code and the server's modules import them from.

They are defined in :mod:`rain_envelopes.errors`, in the one tree of RAIN's errors::

    RainError
    ├── CommandRefused         any command handler refuses a request; the channel answers it
    │   └── ParameterError     raised by plugin code to answer with a chosen LIME reason code
    │       ├── InvalidValue   the value given to a setter is not acceptable (code 64)
    │       └── NotAllowed     the request is understood but not allowed now (code 66)
    ├── ConfigError            a config value is wrong (names the key)
    └── PluginError            a plugin cannot be loaded or declares something wrong;
                               the message names the file and line

A ParameterError is a CommandRefused: raised anywhere under a request (plugin code, the
server's own checks), it reaches the channel, which answers the request with its code and
description. Anything else a plugin raises is answered with code 101 and a short description
(live.py); the traceback goes to the server log only.
"""

from __future__ import annotations

from ..errors import InvalidValue, NotAllowed, ParameterError, PluginError

__all__ = ["InvalidValue", "NotAllowed", "ParameterError", "PluginError"]

"""The RAIN server: parameters from plugin files, served to authenticated sessions.

Public API::

    Server                 sessions from any TransportListener; /params and /params/{name}
    Parameter, parameter   declare parameters (caproto-like: getter, setter, scan, publish)
    load_plugins           import a plugin folder under a private namespace
    ServerConfig, Limits, LoggingConfig, load_config, parse_config
    AccessPolicy, AccessRule
    ParameterError, InvalidValue, NotAllowed   raise from plugin code to answer with a code
    PluginError            a plugin cannot be loaded (names file and line)

The errors are defined in :mod:`rain_envelopes.errors`, in RAIN's one error tree (a
ParameterError is a :class:`~rain_envelopes.errors.CommandRefused`), and exported here.
    Sample, SAMPLE_TYPE, PARAMETER_TYPE, COLLECTION_TYPE

Plugin authors need only ``Parameter``, ``parameter`` and the three ParameterError classes.
"""

from .access import AccessPolicy, AccessRule
from .config import Limits, LoggingConfig, ServerConfig, load_config, parse_config
from .errors import InvalidValue, NotAllowed, ParameterError, PluginError
from .parameters import Parameter, parameter
from .pipeline import Request, ServedSession
from .plugins import load_plugins
from .samples import COLLECTION_TYPE, PARAMETER_TYPE, SAMPLE_TYPE, Sample
from .server import Server

__all__ = [
    "COLLECTION_TYPE",
    "PARAMETER_TYPE",
    "SAMPLE_TYPE",
    "AccessPolicy",
    "AccessRule",
    "InvalidValue",
    "Limits",
    "LoggingConfig",
    "NotAllowed",
    "Parameter",
    "ParameterError",
    "PluginError",
    "Request",
    "Sample",
    "ServedSession",
    "Server",
    "ServerConfig",
    "load_config",
    "load_plugins",
    "parameter",
    "parse_config",
]

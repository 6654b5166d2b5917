"""Errors of the server side: what plugin code may raise on purpose, and what stops start-up.

::

    RainError (rain_envelopes.errors)
    ├── ConfigError            a config value is wrong (names the key); from rain_envelopes.errors
    └── PluginError            a plugin cannot be loaded or declares something wrong;
                               the message names the file and line
    ParameterError             raised by plugin code to answer with a chosen LIME reason code
    ├── InvalidValue           the value given to a setter is not acceptable (code 64)
    └── NotAllowed             the request is understood but not allowed now (code 66)

Anything else a plugin raises is answered with code 101 and a short description; the traceback
goes to the server log only.
"""

from __future__ import annotations

from ..envelopes import ReasonCode
from ..errors import RainError

__all__ = ["InvalidValue", "NotAllowed", "ParameterError", "PluginError"]


class PluginError(RainError):
    """A plugin failed to import, or declared a parameter wrongly or twice.

    ``path`` and ``line`` locate the culprit when known; they are also in the message.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        where = f"{path}:{line}: " if path and line else f"{path}: " if path else ""
        super().__init__(where + message)
        self.path = path
        self.line = line


class ParameterError(Exception):
    """Raise from plugin code to refuse a request with a specific reason code.

    The description is sent to the client as is, so keep it short and free of secrets.
    """

    code: int = ReasonCode.COMMAND_PROCESSING_ERROR

    def __init__(self, description: str, *, code: int | None = None) -> None:
        super().__init__(description)
        self.description = description
        if code is not None:
            self.code = int(code)


class InvalidValue(ParameterError):
    """The value is not acceptable (LIME code 64, invalid argument)."""

    code = ReasonCode.COMMAND_INVALID_ARGUMENT


class NotAllowed(ParameterError):
    """The request is not allowed in the current state (LIME code 66)."""

    code = ReasonCode.COMMAND_NOT_ALLOWED

"""The server configuration: one TOML file, checked whole before anything starts.

Example (every key but ``identity`` and ``listen`` is optional)::

    identity = "station@irf"               # the server's node name (name@domain[/instance])
    listen = ["tcp://0.0.0.0:4505"]        # endpoints to accept sessions on
    key_file = "keys/station.key"          # the server's secret key (rain keygen)
    authorized_keys = "authorized_keys"    # '<public key> <identity>' per line
    allow = ["127.0.0.1/32", "10.0.0.0/8"] # IP networks allowed to connect (empty: any)
    plugins = "plugins"                    # folder of plugin files
    allow_guest = false                    # accept unauthenticated 'guest' sessions
    state = "state.db"                     # SQLite state file: settings and the SET window
    state_durability = "sync"              # "sync": fsync every set; "batch": at checkpoints

    [limits]
    queue_length = 64                      # samples held per subscription before dropping
    max_requests_in_progress = 64          # per session; beyond, refused at once with 34

    [logging]
    level = "INFO"

    [discovery]                            # advertise on the LAN (off by default; needs
    advertise = true                       # the discovery extra): rain discover, rain://
    interfaces = ["192.168.1.20"]          # addresses to advertise on (default: all IPv4)

    [archive]                              # store-and-forward of parameters declared
    endpoint = "nats://127.0.0.1:4222"     # archive=True to the site leaf node's JetStream
    stream = "RAIN_SITE"                   # (the nats extra; see rain_transport_nats.archive)
    domain = "site1"

    [[access]]                             # no [[access]] at all: every authorised identity
    identity = "*@irf"                     # may do everything
    uri = "/params/*"
    methods = ["get", "subscribe"]

    [transport]                            # passed to the transport (socket options),
                                           # which checks them when the file is loaded

Invariants: paths are resolved relative to the config file's folder; every problem raises
:class:`ConfigError` whose message starts with the file and the dotted key (``limits.queue_length``)
and says what was expected; unknown keys are errors (with a suggestion), since a misspelt limit
silently ignored is worse than a refusal to start.
"""

from __future__ import annotations

import difflib
import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..allowlist import parse_allowlist
from ..discovery import interface_address
from ..errors import ConfigError
from ..node import Node
from ..transport import TransportFactory, transport_factory
from .access import AccessRule

__all__ = [
    "ArchiveConfig", "DiscoveryConfig", "Limits", "LoggingConfig", "ServerConfig", "load_config",
    "parse_config",
]


@dataclass(frozen=True)
class Limits:
    """Resource limits of a server. Each bounds memory, threads or time."""

    #: Sessions served at once; further connections are closed at once.
    max_sessions: int = 256
    #: Samples queued per subscription for a slow subscriber; the oldest are dropped beyond.
    queue_length: int = 64
    #: Subscriptions one session may hold.
    max_subscriptions: int = 256
    #: Worker threads for plain (sync) plugin functions.
    plugin_threads: int = 8
    #: Seconds a getter or setter may take before the client is answered with code 101.
    plugin_timeout: float = 30.0
    #: Seconds a client has to establish its session.
    establish_timeout: float = 10.0
    #: Requests of one session whose answers may be in the works at once (plugin calls,
    #: snapshots, sets); beyond it a request is refused at once with code 34.
    max_requests_in_progress: int = 64
    #: Recent `set` command ids remembered per identity to answer a repeated `set` only once
    #: (in memory, and in the state file when there is one).
    dedup_window: int = 1024
    #: Seconds a `set` command id is remembered at most; keep it above the longest `#expires`
    #: clients use (a retry after its expiry is refused anyway).
    dedup_max_age: float = 86400.0
    #: Seconds `close()` waits for sessions to finish and plugin threads to return.
    shutdown_timeout: float = 5.0


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    #: Log file (relative to the config file); None logs to standard error.
    file: Path | None = None


@dataclass(frozen=True)
class DiscoveryConfig:
    """Advertising the server on the local network (mDNS/DNS-SD, the ``discovery`` extra).

    Off by default: an advertisement tells everyone on the network that an instrument is here,
    its name and where it listens. It never grants anything: clients still pin the key."""

    advertise: bool = False
    #: IPv4 addresses to advertise on and announce; empty: every interface.
    interfaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class ArchiveConfig:
    """Store-and-forward of the parameters declared ``archive=True`` (the ``nats`` extra):
    ``rain serve`` publishes their samples to the site stream on the leaf node at
    ``endpoint`` (see ``rain_transport_nats.archive``). Off while ``endpoint`` is unset."""

    #: The site's NATS leaf node (``nats://host:port``); None: no archiving.
    endpoint: str | None = None
    #: The site stream's name (created by the operator).
    stream: str = "RAIN_SITE"
    #: The leaf's JetStream domain, when it has one.
    domain: str | None = None


@dataclass(frozen=True)
class ServerConfig:
    """A checked server configuration. Build with :func:`load_config` or directly."""

    identity: Node
    listen: tuple[str, ...] = ()
    key_file: Path | None = None
    authorized_keys: Path | None = None
    allow: tuple[str, ...] = ()
    plugins: Path | None = None
    allow_guest: bool = False
    #: Serve without transport security (no CURVE). For loopback experiments only.
    insecure: bool = False
    access: tuple[AccessRule, ...] | None = None
    #: The SQLite state file (values of writable parameters, the SET window); None keeps
    #: them in memory only.
    state: Path | None = None
    #: "sync" (each set reaches the disk before it is answered) or "batch".
    state_durability: str = "sync"
    limits: Limits = field(default_factory=Limits)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    transport: Mapping[str, Any] = field(default_factory=dict)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    #: The file this came from, when it came from one.
    source: Path | None = None


_TOP_KEYS = (
    "identity", "listen", "key_file", "authorized_keys", "allow", "plugins", "allow_guest",
    "insecure", "access", "state", "state_durability", "limits", "logging", "transport",
    "discovery", "archive",
)
_DURABILITY = ("sync", "batch")
_ACCESS_KEYS = ("identity", "uri", "methods")
_LOGGING_KEYS = ("level", "file")
_DISCOVERY_KEYS = ("advertise", "interfaces")
_ARCHIVE_KEYS = ("endpoint", "stream", "domain")
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _Checker:
    """Reads typed values out of the parsed TOML, raising ConfigError that names the key."""

    def __init__(self, source: str, base: Path) -> None:
        self.source = source
        self.base = base

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {message}")

    def unknown(self, table: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.fail(
                    prefix + key, f"unknown key{hint} (expected one of: {', '.join(allowed)})"
                )

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"expected a non-empty string, got {_show(value)}")
        return value

    def strings(self, value: Any, key: str) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list of strings, got {_show(value)}")
        return tuple(self.string(item, f"{key}[{index}]") for index, item in enumerate(value))

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {_show(value)}")
        return value

    def path(self, value: Any, key: str) -> Path:
        text = self.string(value, key)
        path = Path(text).expanduser()
        return path if path.is_absolute() else (self.base / path)

    def table(self, value: Any, key: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected a table, got {_show(value)}")
        return value


def _show(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} ({text if len(text) <= 40 else text[:37] + '...'})"


def _limits(check: _Checker, raw: Mapping[str, Any]) -> Limits:
    names = tuple(f.name for f in fields(Limits))
    check.unknown(raw, names, "limits.")
    values: dict[str, Any] = {}
    for item in fields(Limits):
        if item.name not in raw:
            continue
        value = raw[item.name]
        key = f"limits.{item.name}"
        if item.type == "int":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise check.fail(key, f"expected a positive integer, got {_show(value)}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise check.fail(key, f"expected a positive number of seconds, got {_show(value)}")
        values[item.name] = float(value) if item.type == "float" else value
    return Limits(**values)


def _logging(check: _Checker, raw: Mapping[str, Any]) -> LoggingConfig:
    check.unknown(raw, _LOGGING_KEYS, "logging.")
    level = LoggingConfig.level
    if "level" in raw:
        level = check.string(raw["level"], "logging.level").upper()
        if level not in _LEVELS:
            raise check.fail("logging.level", f"expected one of {', '.join(_LEVELS)}")
    file = check.path(raw["file"], "logging.file") if "file" in raw else None
    return LoggingConfig(level=level, file=file)


def _discovery(check: _Checker, raw: Mapping[str, Any]) -> DiscoveryConfig:
    check.unknown(raw, _DISCOVERY_KEYS, "discovery.")
    advertise = check.boolean(raw.get("advertise", False), "discovery.advertise")
    interfaces = check.strings(raw.get("interfaces", []), "discovery.interfaces")
    for index, text in enumerate(interfaces):
        try:
            interface_address(text)
        except ValueError as exc:
            raise check.fail(
                f"discovery.interfaces[{index}]",
                f"expected an IPv4 address of this host such as 192.168.1.20 ({exc})",
            ) from None
    return DiscoveryConfig(advertise=advertise, interfaces=interfaces)


def _archive(check: _Checker, raw: Mapping[str, Any]) -> ArchiveConfig:
    check.unknown(raw, _ARCHIVE_KEYS, "archive.")
    endpoint = check.string(raw["endpoint"], "archive.endpoint") if "endpoint" in raw else None
    if endpoint is not None and not endpoint.lower().startswith("nats://"):
        raise check.fail(
            "archive.endpoint", f"expected the site's NATS leaf node such as"
            f" nats://127.0.0.1:4222, got {endpoint!r}",
        )
    names: dict[str, str] = {}
    for key in ("stream", "domain"):
        if key in raw:
            text = check.string(raw[key], f"archive.{key}")
            if not text or any(c in text for c in " \t.*>/\\"):
                raise check.fail(
                    f"archive.{key}", f"expected a NATS name (no spaces, '.', '*', '>' or"
                    f" slashes), got {text!r}",
                )
            names[key] = text
    return ArchiveConfig(endpoint=endpoint, **names)


def _durability(check: _Checker, raw: Any) -> str:
    value = check.string(raw, "state_durability")
    if value not in _DURABILITY:
        raise check.fail(
            "state_durability", f"expected one of {', '.join(map(repr, _DURABILITY))}, got {raw!r}"
        )
    return value


def _access(check: _Checker, raw: Any) -> tuple[AccessRule, ...]:
    if not isinstance(raw, list):
        raise check.fail("access", "expected [[access]] tables")
    rules = []
    for index, item in enumerate(raw):
        key = f"access[{index}]"
        table = check.table(item, key)
        check.unknown(table, _ACCESS_KEYS, key + ".")
        if "identity" not in table:
            raise check.fail(
                key + ".identity", "missing: expected an identity glob such as '*@irf'"
            )
        identity = check.string(table["identity"], key + ".identity")
        uri = check.string(table.get("uri", "*"), key + ".uri")
        if "methods" not in table:
            raise check.fail(
                key + ".methods", "missing: expected a list such as ['get', 'subscribe']"
            )
        methods = check.strings(table["methods"], key + ".methods")
        try:
            rules.append(AccessRule(identity, uri, frozenset(methods)))
        except ValueError as exc:
            text = str(exc)
            which = "methods" if "method" in text else "uri" if "uri" in text else "identity"
            raise check.fail(f"{key}.{which}", str(exc)) from None
    return tuple(rules)


def parse_config(raw: Mapping[str, Any], *, base: Path, source: str = "config") -> ServerConfig:
    """Check a parsed config mapping. Paths are taken relative to ``base``.

    Raises ConfigError naming ``source`` and the key.
    """
    check = _Checker(source, base)
    check.unknown(raw, _TOP_KEYS, "")
    if "identity" not in raw:
        raise check.fail("identity", "missing: expected the server's node name, e.g. 'station@irf'")
    identity_text = check.string(raw["identity"], "identity")
    try:
        identity = Node.parse(identity_text)
    except ValueError as exc:
        raise check.fail("identity", f"expected name@domain: {exc}") from None
    if not identity.name or not identity.domain:
        raise check.fail("identity", f"expected name@domain, got {identity_text!r}")

    listen = check.strings(raw.get("listen", []), "listen")
    for index, endpoint in enumerate(listen):
        if "://" not in endpoint:
            raise check.fail(
                f"listen[{index}]",
                f"expected an endpoint such as tcp://0.0.0.0:4505, got {endpoint!r}",
            )
    allow = check.strings(raw.get("allow", []), "allow")
    for index, network in enumerate(allow):
        # The same parser the transport enforces with, so what loads here also serves.
        try:
            parse_allowlist([network])
        except ConfigError:
            raise check.fail(
                f"allow[{index}]",
                f"expected an IP network such as 10.0.0.0/8 (no host bits set), got {network!r}",
            ) from None

    config = ServerConfig(
        identity=identity,
        listen=listen,
        key_file=check.path(raw["key_file"], "key_file") if "key_file" in raw else None,
        authorized_keys=(
            check.path(raw["authorized_keys"], "authorized_keys")
            if "authorized_keys" in raw else None
        ),
        allow=allow,
        plugins=check.path(raw["plugins"], "plugins") if "plugins" in raw else None,
        allow_guest=check.boolean(raw.get("allow_guest", False), "allow_guest"),
        insecure=check.boolean(raw.get("insecure", False), "insecure"),
        access=_access(check, raw["access"]) if "access" in raw else None,
        state=check.path(raw["state"], "state") if "state" in raw else None,
        state_durability=_durability(check, raw.get("state_durability", "sync")),
        limits=_limits(check, check.table(raw.get("limits", {}), "limits")),
        logging=_logging(check, check.table(raw.get("logging", {}), "logging")),
        transport=dict(check.table(raw.get("transport", {}), "transport")),
        discovery=_discovery(check, check.table(raw.get("discovery", {}), "discovery")),
        archive=_archive(check, check.table(raw.get("archive", {}), "archive")),
        source=Path(source) if source != "config" else None,
    )
    if "state_durability" in raw and config.state is None:
        raise check.fail(
            "state_durability", "set, but there is no state file: add state = \"state.db\""
        )
    if config.plugins is not None and not config.plugins.is_dir():
        raise check.fail(
            "plugins", f"expected a folder of plugin files; {config.plugins} is not one"
        )
    secured = []
    factories: dict[int, TransportFactory] = {}
    for index, endpoint in enumerate(listen):
        try:
            factory = transport_factory(endpoint)
        except ConfigError as exc:
            raise check.fail(f"listen[{index}]", str(exc)) from None
        factories[id(factory)] = factory
        if factory.secure:
            secured.append(endpoint)
    for factory in factories.values():
        # Here, not when listening: a typo in [transport] must stop the server before any
        # plugin code runs (plugins may touch hardware).
        try:
            factory.check_options(config.transport)
        except ConfigError as exc:
            raise check.fail("transport", str(exc)) from None
    if secured and not config.insecure and config.key_file is None:
        raise check.fail(
            "key_file",
            f"missing: {secured[0]} is CURVE-secured and needs the server's secret key file"
            " (make one with `rain keygen`), or insecure = true for loopback tests",
        )
    if not config.insecure and config.authorized_keys is None and not config.allow_guest:
        raise check.fail(
            "authorized_keys",
            "missing: expected the path of the authorised-keys file (or allow_guest = true)",
        )
    return config


def load_config(path: str | Path) -> ServerConfig:
    """Read and check a TOML config file. Raises ConfigError naming the file and key."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config file: {exc.strerror or exc}") from None
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    return parse_config(raw, base=file.resolve().parent, source=str(file))


def configure_logging(config: LoggingConfig, *, verbose: int = 0) -> None:
    """Apply a LoggingConfig to the root logger (used by ``rain serve``), replacing its
    handlers. ``verbose`` (the CLI's -v count) can only make logging more detailed."""
    handler: logging.Handler
    if config.file is not None:
        try:
            config.file.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(config.file)
        except OSError as exc:
            raise ConfigError(f"logging.file: cannot write {config.file}: {exc}") from None
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    level = logging.getLevelName(config.level)
    if verbose:
        level = min(level, logging.INFO if verbose == 1 else logging.DEBUG)
    root.setLevel(level)

"""The TOML config: relative paths, and refusals that name the key and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from rain_envelopes.errors import ConfigError
from rain_envelopes.server import load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "weather_station" / "rain.toml"

GOOD = """
identity = "station@irf"
listen = ["tcp://127.0.0.1:4505"]
key_file = "keys/station.key"
authorized_keys = "authorized_keys"
allow = ["127.0.0.1/32", "10.0.0.0/8", "::1"]
plugins = "plugins"

[limits]
queue_length = 8
plugin_timeout = 2.5

[logging]
level = "debug"

[[access]]
identity = "*@irf"
uri = "/params/*"
methods = ["get", "subscribe"]

[transport]
server_max_message_size = 65536
"""


def write(folder: Path, text: str) -> Path:
    (folder / "plugins").mkdir(exist_ok=True)
    path = folder / "rain.toml"
    path.write_text(text)
    return path


def test_good_config_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert str(config.identity) == "station@irf"
    assert config.key_file == tmp_path.resolve() / "keys" / "station.key"
    assert config.plugins == tmp_path.resolve() / "plugins"
    assert config.limits.queue_length == 8
    assert config.limits.plugin_timeout == 2.5
    assert config.limits.max_sessions == 256
    assert config.logging.level == "DEBUG"
    assert config.access is not None
    assert config.access[0].methods == {"get", "subscribe"}
    assert config.transport == {"server_max_message_size": 65536}


def test_the_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert config.plugins is not None
    assert config.plugins.is_dir()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("listen = [", "lisen = ["), r"lisen: unknown key; did you mean 'listen'\?"),
        (('identity = "station@irf"', 'identity = "station"'), r"identity: expected name@domain"),
        (('identity = "station@irf"', "identity = 7"), r"identity: expected a non-empty string"),
        (("queue_length = 8", "queue_length = 0"), r"limits\.queue_length: expected a positive"),
        (("queue_length = 8", 'queue_length = "8"'), r"limits\.queue_length: expected a positive"),
        (("plugin_timeout = 2.5", "plugin_timout = 2.5"), r"limits\.plugin_timout: unknown key"),
        (('"10.0.0.0/8"', '"10.0.0/33"'), r"allow\[1\]: expected an IP network"),
        (('methods = ["get", "subscribe"]', 'methods = ["get", "fly"]'),
         r"access\[0\]\.methods: unknown method 'fly'"),
        (('level = "debug"', 'level = "loud"'), r"logging\.level: expected one of"),
        (('plugins = "plugins"', 'plugins = "nowhere"'), r"plugins: expected a folder"),
        (('["tcp://127.0.0.1:4505"]', '["127.0.0.1:4505"]'), r"listen\[0\]: expected an endpoint"),
        (('key_file = "keys/station.key"', "key_file = ["), r"not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    old, new = change
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert str(caught.value).startswith(str(path))


def test_missing_required_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="identity: missing"):
        load_config(write(tmp_path, 'listen = ["tcp://127.0.0.1:1"]\n'))
    with pytest.raises(ConfigError, match="authorized_keys: missing"):
        load_config(write(tmp_path, 'identity = "s@d"\n'))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")

"""Plugin loading: namespacing, packages, helpers, and start-up refusals naming file and line."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

from rain_envelopes.server import PluginError, load_plugins
from rain_envelopes.server.plugins import plugin_namespace

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "weather_station"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_files_and_packages_load_under_a_private_namespace(tmp_path: Path) -> None:
    write(tmp_path, "json.py", """
        from rain_envelopes.server import Parameter
        shadow = Parameter("shadow", value=1)
    """)
    write(tmp_path, "_helpers.py", "FACTOR = 3\n")
    write(tmp_path, "station/__init__.py", """
        from rain_envelopes.server import parameter
        from .._helpers import FACTOR
        from . import sensors

        @parameter()
        def wind() -> int:
            return sensors.read() * FACTOR
    """)
    write(tmp_path, "station/sensors.py", "def read() -> int:\n    return 2\n")
    write(tmp_path, "notes.txt", "not a plugin")
    params = load_plugins(tmp_path)
    assert sorted(p.name for p in params) == ["shadow", "wind"]
    wind = next(p for p in params if p.name == "wind")
    assert wind.get_function is not None
    assert wind.get_function() == 6
    # The plugin called json.py shadows nothing.
    assert sys.modules["json"] is json
    assert f"{plugin_namespace(tmp_path)}.json" in sys.modules


def test_each_load_runs_the_plugins_afresh(tmp_path: Path) -> None:
    write(tmp_path, "p.py", "from rain_envelopes.server import Parameter\nx = Parameter('x')\n")
    first, second = load_plugins(tmp_path), load_plugins(tmp_path)
    assert first[0] is not second[0]


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "broken.py", "x = 1\ndef oops(:\n")
    with pytest.raises(PluginError, match=r"broken\.py:2: plugin failed to import: SyntaxError"):
        load_plugins(tmp_path)


def test_import_error_names_the_plugin_line(tmp_path: Path) -> None:
    write(tmp_path, "needs.py", "import os\n\nimport no_such_module_for_rain\n")
    with pytest.raises(PluginError, match=r"needs\.py:3: .*ModuleNotFoundError"):
        load_plugins(tmp_path)


def test_error_raised_while_running_names_the_line(tmp_path: Path) -> None:
    write(tmp_path, "boom.py", "def f():\n    raise RuntimeError('no sensor')\n\nf()\n")
    with pytest.raises(PluginError, match=r"boom\.py:2: .*RuntimeError: no sensor"):
        load_plugins(tmp_path)


def test_duplicate_parameter_names_both_places(tmp_path: Path) -> None:
    write(tmp_path, "a.py", "from rain_envelopes.server import Parameter\nt = Parameter('t')\n")
    write(tmp_path, "b.py", "from rain_envelopes.server import Parameter\n\nt = Parameter('t')\n")
    with pytest.raises(PluginError) as caught:
        load_plugins(tmp_path)
    message = str(caught.value)
    assert re.search(r"b\.py:3: parameter 't' is declared twice \(first at .*a\.py:2\)", message)


def test_duplicate_in_one_file_is_caught_too(tmp_path: Path) -> None:
    write(tmp_path, "a.py", """
        from rain_envelopes.server import parameter

        @parameter()
        def t() -> int:
            return 1

        @parameter()
        def t() -> int:  # noqa: F811
            return 2
    """)
    with pytest.raises(PluginError, match=r"a\.py:\d+: parameter 't' is declared twice"):
        load_plugins(tmp_path)


def test_bad_declaration_inside_a_plugin_names_it(tmp_path: Path) -> None:
    write(tmp_path, "s.py", """
        from rain_envelopes.server import Parameter

        p = Parameter("p", schema={"type": 12})
    """)
    with pytest.raises(PluginError, match=r"s\.py:4: .*JSON schema does not compile"):
        load_plugins(tmp_path)


def test_missing_folder_and_bad_plugin_names(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match="does not exist"):
        load_plugins(tmp_path / "nope")
    write(tmp_path, "bad-name.py", "")
    with pytest.raises(PluginError, match="identifier"):
        load_plugins(tmp_path)


def test_the_weather_station_example_loads() -> None:
    names = sorted(p.name for p in load_plugins(EXAMPLES / "plugins"))
    assert names == [
        "pressure", "sampling_interval", "simulate_storm", "storm_alert", "temperature"
    ]




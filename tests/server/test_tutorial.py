"""The weather-station tutorial shows the example's files as they are, so it cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "tutorial" / "weather-station.md"
EXAMPLE = ROOT / "examples" / "weather_station"


def _blocks(language: str) -> list[str]:
    text = PAGE.read_text("utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def test_tutorial_shows_the_plugin_file_and_the_watch_script_verbatim() -> None:
    plugin, watch = _blocks("python")
    assert plugin == (EXAMPLE / "plugins" / "weather.py").read_text("utf-8")
    assert watch == (EXAMPLE / "watch.py").read_text("utf-8")
    compile(watch, "watch.py", "exec")


def test_tutorial_shows_the_config_file_without_its_header_comment() -> None:
    (config,) = _blocks("toml")
    lines = (EXAMPLE / "rain.toml").read_text("utf-8").splitlines(keepends=True)
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)
    assert config == "".join(lines)

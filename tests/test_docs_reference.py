"""The server, configuration and command references cannot drift from the code.

- Every key the config loader accepts is named in docs/reference/config.md, the full example
  there loads, and the bad-config example fails with exactly the message the page shows.
- Every ``rain`` subcommand, each of its options, each exit status and each environment
  variable the CLI reads appear in docs/reference/cli.md.
- The worked example of docs/howto/access-rules.md decides as its table says.
- The example project of docs/howto/write-a-plugin.md (blocks marked
  ``<!-- test: tree PATH -->``, written to PATH in a fresh folder) passes its own tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from rain_envelopes import cli
from rain_envelopes.server import AccessPolicy, ParameterError, parse_config
from rain_envelopes.server.config import _ACCESS_KEYS, _LOGGING_KEYS, _TOP_KEYS, Limits

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TIMEOUT = 60.0


def _page(relative: str) -> str:
    return (DOCS / relative).read_text("utf-8")


def _marked_block(text: str, marker: str) -> str:
    """The fenced block just below ``<!-- test: MARKER -->``."""
    match = re.search(
        rf"<!-- test: {re.escape(marker)} -->\n```\w*\n(?P<code>.*?)```", text, re.DOTALL
    )
    assert match, f"no block marked 'test: {marker}'"
    return match["code"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=TIMEOUT, check=False,
    )


# ------------------------------------------------------------------------------ config


def test_every_config_key_is_documented() -> None:
    page = _page("reference/config.md")
    keys = [
        *_TOP_KEYS,
        *(f"logging.{key}" for key in _LOGGING_KEYS),
        *(f"limits.{item.name}" for item in dataclasses.fields(Limits)),
    ]
    missing = [key for key in keys if f"`{key}`" not in page]
    missing += [
        f"access.{key}" for key in _ACCESS_KEYS if f"`[[access]]` `{key}`" not in page
    ]
    assert not missing, f"docs/reference/config.md does not document {missing}"


def test_full_config_example_loads_and_uses_every_key(tmp_path: Path) -> None:
    page = _page("reference/config.md")
    example = page.split("## A full example", 1)[1]
    text = re.search(r"```toml\n(.*?)```", example, re.DOTALL)
    assert text
    raw = tomllib.loads(text[1])
    (tmp_path / "plugins").mkdir()
    config = parse_config(raw, base=tmp_path, source="rain.toml")
    assert config.plugins == tmp_path / "plugins"
    assert set(raw) == set(_TOP_KEYS)
    assert set(raw["limits"]) == {item.name for item in dataclasses.fields(Limits)}
    assert set(raw["logging"]) == set(_LOGGING_KEYS)
    assert {key for rule in raw["access"] for key in rule} == set(_ACCESS_KEYS)


@pytest.mark.timeout(TIMEOUT + 10)
def test_bad_config_message_is_the_real_one(tmp_path: Path) -> None:
    page = _page("reference/config.md")
    (tmp_path / "rain.toml").write_text(_marked_block(page, "config-error"), "utf-8")
    result = _run(["-m", "rain_envelopes", "serve", "rain.toml"], tmp_path)
    assert result.returncode == cli.EXIT_USAGE
    shown = page.split("<!-- test: config-error -->", 1)[1]
    message = re.search(r"```text\n(.*?)\n```", shown, re.DOTALL)
    assert message
    assert result.stderr.strip() == message[1]


# ------------------------------------------------------------------------------ cli


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("rain has no subcommands")


def test_every_subcommand_and_option_is_documented() -> None:
    page = _page("reference/cli.md")
    missing = []
    for name, parser in _subcommands().items():
        if f"## `rain {name}`" not in page:
            missing.append(f"section for rain {name}")
        for action in parser._actions:
            missing += [
                f"rain {name} {option}" for option in action.option_strings
                if f"`{option}" not in page
            ]
    assert not missing, f"docs/reference/cli.md lacks {missing}"


def test_exit_statuses_and_environment_are_documented() -> None:
    page = _page("reference/cli.md")
    statuses = {value for name, value in vars(cli).items() if name.startswith("EXIT_")}
    assert statuses, "cli.py defines no EXIT_* statuses"
    missing = [status for status in sorted(statuses) if f"\n| {status} |" not in page]
    assert not missing, f"exit statuses {missing} are not in the table of docs/reference/cli.md"
    source = Path(cli.__file__).read_text("utf-8")
    variables = set(re.findall(r"environ\.get\(\"(RAIN_\w+)\"", source))
    assert variables, "the CLI reads no RAIN_* variables?"
    assert not [v for v in sorted(variables) if f"`{v}`" not in page]


# ------------------------------------------------------------------------------ how-tos


def test_access_rules_example_decides_as_documented() -> None:
    page = _page("howto/access-rules.md")
    rules = tomllib.loads(_marked_block(page, "access-rules"))
    config = parse_config(
        {"identity": "magnetometer@irf", "insecure": True, **rules}, base=ROOT, source="example"
    )
    policy = AccessPolicy(config.access)
    table = page.split("<!-- test: access-rules -->", 1)[1]
    rows = re.findall(r"^\| `([^`]+)` \| `(\w+) ([^`]+)` \| (allowed|\d+) \|$", table, re.M)
    assert len(rows) >= 10
    for identity, method, path, expected in rows:
        try:
            policy.check(identity, method, path)
            answer = "allowed"
        except ParameterError as refusal:
            answer = str(int(refusal.code))
        assert answer == expected, f"{identity} {method} {path}: {answer}, page says {expected}"


_TREE = re.compile(
    r"<!-- test: tree (?P<path>[\w./-]+) -->\n```\w*\n(?P<code>.*?)```", re.DOTALL
)


@pytest.mark.timeout(3 * TIMEOUT)
def test_plugin_howto_project_passes_its_tests(tmp_path: Path) -> None:
    files = {m["path"]: m["code"] for m in _TREE.finditer(_page("howto/write-a-plugin.md"))}
    assert {"rain.toml", "plugins/cryostat.py", "tests/test_cryostat.py"} <= set(files)
    for relative, content in files.items():
        target = tmp_path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, "utf-8")
    # The page's configuration is valid and points at the plugin folder.
    config = parse_config(
        tomllib.loads(files["rain.toml"]), base=tmp_path, source="rain.toml"
    )
    assert config.plugins == tmp_path / "plugins"
    result = _run(
        [
            "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--rootdir={tmp_path}",
            "-o", "asyncio_mode=auto", "-o", "asyncio_default_fixture_loop_scope=function",
            "tests",
        ],
        tmp_path,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"

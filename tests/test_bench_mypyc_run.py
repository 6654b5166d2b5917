"""The mypyc trial still works: its copy, its source workarounds, and (slow) a whole run.

Nothing about speed is asserted: ``benchmarks/mypyc_trial.py`` measures, tests do not. The fast
tests check that the trial copies the packages without touching the tree and that its
workarounds still find the text they edit (so a change to the source cannot silently turn the
``--workarounds`` run into a plain one); the slow one compiles one small module and runs the
whole trial with tiny counts.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from tests.benchrun import BENCHMARKS, import_benchmark, run_benchmark

ROOT = BENCHMARKS.parent


def _trial() -> ModuleType:
    return import_benchmark("mypyc_trial")


def test_the_copy_carries_the_workarounds_and_the_tree_stays_pure(tmp_path: Path) -> None:
    trial = _trial()
    before = (ROOT / "rain_envelopes" / "protocol.py").read_text()
    assert trial.copy_tree(tmp_path, True) == []  # every workaround still applies
    copied = (tmp_path / "rain_envelopes" / "protocol.py").read_text()
    assert "error: _Error" in copied
    assert copied != before
    assert (ROOT / "rain_envelopes" / "protocol.py").read_text() == before
    assert not list((ROOT / "rain_envelopes").glob("*.so"))
    assert (tmp_path / "rain_transport_zmq" / "__init__.py").is_file()
    assert (tmp_path / "pyproject.toml").is_file()


def test_a_workaround_whose_text_is_gone_is_reported(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    trial = _trial()
    monkeypatch.setattr(trial, "WORKAROUNDS", {"protocol": [("no such text", "x")]})
    notes = trial.copy_tree(tmp_path, True)
    assert len(notes) == 1
    assert "protocol: workaround no longer applies" in notes[0]


def test_bad_arguments_are_refused() -> None:
    trial = _trial()
    with pytest.raises(SystemExit):
        trial.parse_args(["--modules", "channel"])
    with pytest.raises(SystemExit):
        trial.parse_args(["--window", "64", "--pipelined", "100"])


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_quick_trial_compiles_node_and_prints_the_table() -> None:
    if importlib.util.find_spec("mypyc") is None:
        pytest.skip("mypyc is not installed (it ships with mypy, the dev extra)")
    out = run_benchmark("mypyc_trial.py", "--quick", "--modules", "node", timeout=380)
    assert "node       compiles alone" in out, out
    assert "smoke: compiled: ['node']" in out, out
    assert "codec request encode+decode (ns)" in out, out
    assert not list((ROOT / "rain_envelopes").glob("*.so"))

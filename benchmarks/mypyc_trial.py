"""The mypyc trial of issue 9 (item 7): the pure core compiled, measured against itself pure.

Run ``python benchmarks/mypyc_trial.py`` (a few minutes on 2 cores; ``--quick`` for a smoke
run, ``--help`` for the knobs). Nothing in the repository or the installed package changes:

1. the import packages (``rain_envelopes``, ``rain_transport_zmq``) and ``pyproject.toml`` (for
   mypy's settings) are copied into a temporary folder, and only that copy is compiled, so no
   compiled artefact ever lands in the tree and the default install stays pure Python;
2. each candidate module (``--modules``; by default the core's pure modules ``codec``,
   ``envelopes``, ``node``, ``session`` and ``protocol``) is first compiled *alone*, in a copy
   of its own, and checked by a smoke script that imports the package and drives envelopes,
   the codec and a client/server session over the memory link. A module that fails to
   compile, or works differently compiled, is reported with its error and left pure;
   ``--workarounds`` first makes the small source edits listed in ``WORKAROUNDS`` to the copy
   (never to the tree), to show what a module would give once changed to suit mypyc;
3. the modules that passed are compiled *together* (mypyc then calls across them natively),
   smoke-checked again and, with ``--tests``, checked by the project's own core and codec test
   suites run against the compiled copy;
4. the pure tree and the compiled copy are measured in back-to-back pairs (``--repeats`` pairs
   of round-trip runs, ``--codec-repeats`` pairs of codec runs), every measurement in a fresh
   interpreter whose ``PYTHONPATH`` selects the tree (the worker reports
   which files it imported, and a compiled run that imported pure code is an error): the
   codec micro-benchmarks of ``bench_roundtrip.py`` and its raw echo and full server with 64
   requests in flight (the server's child process inherits the same ``PYTHONPATH``).

The table gives medians and the ratio compiled / pure (below 1 is faster for times, above 1 for
rates), and the raw pyzmq figures of the same runs, so the distance to issue 9's targets shows.
How to build and use the compiled modules is in ``docs/reference/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PACKAGES = ("rain_envelopes", "rain_transport_zmq")
CANDIDATES = ("codec", "envelopes", "node", "session", "protocol")
#: ``--workarounds``: source edits, made in the copy only, that let a module compile. protocol:
#: mypyc's dataclass support looks the names of field annotations up in the module's globals
#: at import time, where a builtin such as ``Exception`` is not (``KeyError: 'Exception'``); a
#: module-level alias is. (envelopes has none: ``Command`` fills its slots by switching the
#: object's ``__class__`` to a twin class, which native classes refuse.)
WORKAROUNDS: dict[str, list[tuple[str, str]]] = {
    "protocol": [
        ("\n@dataclass(frozen=True)\nclass RequestFailed",
         "\n_Error = Exception\n\n\n@dataclass(frozen=True)\nclass RequestFailed"),
        ("    id: str\n    error: Exception\n", "    id: str\n    error: _Error\n"),
    ],
}
COMPILE_TIMEOUT = 600.0
RUN_TIMEOUT = 300.0

#: Run in a fresh interpreter against one tree: must print "smoke ok" and nothing else fails.
SMOKE = r'''
import asyncio, sys
import rain_envelopes
from rain_envelopes import codec
from rain_envelopes.codec import decode, encode
from rain_envelopes.envelopes import (Command, CommandMethod, CommandStatus, Message,
    Notification, NotificationEvent, Session, SessionState)
from rain_envelopes.errors import EnvelopeDecodeError

request = Command(CommandMethod.GET, "/params/x", id="0badcafe-1")
response = request.success({"value": 21.5, "seq": 1}, "application/json")
assert response.status is CommandStatus.SUCCESS and response.id == "0badcafe-1"
for envelope in (request, response, request.failure(13, "nope"),
                 Message(type="text/plain", content="hi", id="m1"),
                 Notification(NotificationEvent.RECEIVED, id="m1"),
                 Session(SessionState.NEW)):
    assert decode(encode(envelope)) == envelope, envelope
assert Command("get", "/params/x", id="a") == Command(CommandMethod.GET, "/params/x", id="a")
for bad in (b'{"method":"get"}', b'{"id":"","method":"get","uri":"/x"}', b"[1]",
            b'{"method":"nope","uri":"/x"}'):
    try:
        decode(bad)
    except EnvelopeDecodeError:
        pass
    else:
        raise AssertionError(f"decoded {bad!r}")
try:
    Command("get", "/x", status="bogus")
except (TypeError, ValueError):
    pass
else:
    raise AssertionError("accepted a bogus status")

from rain_envelopes.auth import ServerAuthenticator  # noqa: E402
from rain_envelopes.channel import ClientChannel, ServerChannel  # noqa: E402
from rain_envelopes.keys import AuthorizedKeys, Identity  # noqa: E402
from rain_envelopes.memory import memory_transport_pair  # noqa: E402


async def session() -> None:
    alice = Identity.generate()
    keys = AuthorizedKeys.from_mapping({alice.public_key: "alice@bench"})
    client_end, server_end = memory_transport_pair()
    server = ServerChannel(server_end, node="server@bench",
                           authenticator=ServerAuthenticator(keys))
    server.on_command = lambda cmd: cmd.success({"value": 1}, "application/json")
    client = ClientChannel(client_end, node="alice@bench", identity=alice)
    async with asyncio.timeout(20):
        await asyncio.gather(server.establish_session(), client.establish_session())
        reply = await client.get("/params/x")
        assert reply.resource == {"value": 1}, reply
        assert server.remote_identity == "alice@bench", server.remote_identity
        await client.finish()
        await server.close()

asyncio.run(session())
print("compiled:", sorted(m for m in ("codec", "envelopes", "node", "session", "protocol")
                          if getattr(sys.modules.get("rain_envelopes." + m), "__file__", "")
                          .endswith(".so")))
print("smoke ok")
'''


# =========================================================================== building


@dataclass
class Build:
    folder: Path
    modules: tuple[str, ...]
    seconds: float


def copy_tree(into: Path, workarounds: bool) -> list[str]:
    """Copy the packages into ``into``; with ``workarounds``, edit the copy (never the tree).

    Returns a note per workaround that no longer applies (its text is gone from the source).
    """
    for package in PACKAGES:
        shutil.copytree(ROOT / package, into / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.c"))
    shutil.copy2(ROOT / "pyproject.toml", into / "pyproject.toml")
    stale = []
    for module, edits in WORKAROUNDS.items() if workarounds else ():
        path = into / "rain_envelopes" / f"{module}.py"
        text = path.read_text()
        for old, new in edits:
            if text.count(old) != 1:
                stale.append(f"{module}: workaround no longer applies ({old.strip()[:40]!r})")
                break
            text = text.replace(old, new)
        else:
            path.write_text(text)
    return stale


def compile_modules(folder: Path, modules: tuple[str, ...]) -> tuple[bool, str, float]:
    """mypyc the modules inside ``folder``: (built, the log's tail, seconds)."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mypyc", *(f"rain_envelopes/{m}.py" for m in modules)],
            cwd=folder, capture_output=True, text=True, timeout=COMPILE_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return False, f"mypyc took longer than {COMPILE_TIMEOUT:g} s", COMPILE_TIMEOUT
    seconds = time.perf_counter() - started
    built = done.returncode == 0 and all(
        any((folder / "rain_envelopes").glob(f"{m}.*.so")) for m in modules)
    log = (done.stdout + done.stderr).strip().splitlines()
    errors = [line for line in log if "error" in line.lower()]
    return built, "\n".join((errors or log)[-12:]), seconds


def run_in(folder: Path | None, code: list[str], timeout: float = RUN_TIMEOUT
           ) -> subprocess.CompletedProcess[str]:
    """Python with ``folder`` (None: the pure tree) first on its path, from that folder."""
    env = dict(os.environ)
    if folder is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(folder), env.get("PYTHONPATH", "")]).strip(
            os.pathsep)
    return subprocess.run([sys.executable, *code], cwd=folder or HERE, env=env,
                          capture_output=True, text=True, timeout=timeout)


def smoke(folder: Path | None) -> tuple[bool, str]:
    try:
        done = run_in(folder, ["-c", SMOKE], timeout=120)
    except subprocess.TimeoutExpired:
        return False, "the smoke script took longer than 120 s"
    if done.returncode == 0 and done.stdout.rstrip().endswith("smoke ok"):
        return True, done.stdout.strip().splitlines()[0]
    lines = done.stderr.strip().splitlines()
    return False, "\n".join(lines[-4:])


def run_tests(folder: Path, paths: list[str], modules: list[str]) -> tuple[bool, list[str]]:
    """The project's own tests against the compiled copy: (passed, the summary and failures).

    Append mode keeps the copy ahead of the tree on ``sys.path``; one more test, written into
    the copy, fails unless the compiled ``modules`` are the ones the tests imported.
    """
    check = folder / "_check_compiled" / "test_compiled_in_use.py"
    check.parent.mkdir(exist_ok=True)
    check.write_text(
        "import importlib\n\n\ndef test_the_compiled_modules_are_in_use():\n"
        f"    for name in {modules!r}:\n"
        "        module = importlib.import_module('rain_envelopes.' + name)\n"
        "        assert (module.__file__ or '').endswith('.so'), module.__file__\n"
    )
    code = ["-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", "--import-mode=append",
            "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT),
            *(str(ROOT / p) for p in paths), str(check)]
    try:
        done = run_in(folder, code, timeout=900)
    except subprocess.TimeoutExpired:
        return False, ["the tests took longer than 900 s"]
    out = done.stdout.strip().splitlines()
    failed = [line for line in out if line.startswith("FAILED")]
    return done.returncode == 0, (out[-1:] or done.stderr.strip().splitlines()[-3:]) + failed


# =========================================================================== measuring


def worker(part: str, window: int, pipelined: int, iterations: int) -> dict[str, Any]:
    """In the measuring interpreter: which files it uses, and the codec rows (``codec``) or the
    raw and server scenarios (``rt``)."""
    import asyncio
    import importlib

    sys.path.insert(0, str(HERE))
    import bench_roundtrip

    files = {f"rain_envelopes.{name}": Path(
        importlib.import_module(f"rain_envelopes.{name}").__file__ or "").name
        for name in CANDIDATES}
    config = bench_roundtrip.Settings(sequential=min(3000, pipelined // 4), pipelined=pipelined,
                                      window=window, warmup=min(300, pipelined // 10),
                                      codec_iterations=iterations, rounds=3)
    results: dict[str, Any] = {"files": files}
    if part == "codec":
        results["codec"] = bench_roundtrip.codec_rows(iterations)
        return results
    for scenario in ("raw", "server"):
        r = asyncio.run(bench_roundtrip.run_scenario(scenario, config))
        results[scenario] = {"throughput": r.throughput, "p50_us": r.p50_us,
                             "server_cpu_us": r.server_cpu_us, "client_cpu_us": r.client_cpu_us}
    return results


def measure(folder: Path | None, settings: Settings, part: str) -> dict[str, Any]:
    done = run_in(folder, [str(Path(__file__).resolve()), "--worker", part,
                           str(settings.window), str(settings.pipelined),
                           str(settings.iterations)])
    if done.returncode != 0:
        raise RuntimeError(f"measuring {'compiled' if folder else 'pure'} failed:\n"
                           f"{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# =========================================================================== main


@dataclass(frozen=True)
class Settings:
    modules: tuple[str, ...] = CANDIDATES
    repeats: int = 3
    window: int = 64
    pipelined: int = 20000
    iterations: int = 20000
    codec_repeats: int = 9
    tests: bool = False
    workarounds: bool = False
    keep: Path | None = None

    @classmethod
    def quick(cls) -> Settings:
        return cls(repeats=1, window=8, pipelined=400, iterations=300, codec_repeats=1)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def trial(settings: Settings, base: Path) -> list[str]:
    lines = [
        "mypyc trial: the hot pure modules compiled, against the same code pure",
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; medians of"
        f" {settings.repeats} interleaved run(s) per tree"
        + ("; with the workarounds (--workarounds)" if settings.workarounds else ""),
        "",
    ]
    ok, note = smoke(None)
    if not ok:
        raise RuntimeError(f"the smoke script fails on the pure tree itself:\n{note}")
    passed: list[str] = []
    for module in settings.modules:
        folder = base / f"alone-{module}"
        lines += copy_tree(folder, settings.workarounds)
        built, log, seconds = compile_modules(folder, (module,))
        if not built:
            lines.append(f"{module:<10} does not compile ({seconds:.0f} s):")
            lines += [f"    {line}" for line in log.splitlines()]
            continue
        works, note = smoke(folder)
        if works:
            passed.append(module)
            lines.append(f"{module:<10} compiles alone ({seconds:.0f} s) and passes the smoke")
        else:
            lines.append(f"{module:<10} compiles ({seconds:.0f} s) but fails compiled:")
            lines += [f"    {line}" for line in note.splitlines()]
        if settings.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    if not passed:
        return [*lines, "", "no module works compiled: nothing to measure"]
    together = base / "together"
    copy_tree(together, settings.workarounds)
    built, log, seconds = compile_modules(together, tuple(passed))
    works, note = smoke(together) if built else (False, log)
    if not works:
        return [*lines, "", f"{', '.join(passed)} together: failed:", note]
    lines.append(f"together: {', '.join(passed)} ({seconds:.0f} s); smoke: {note}")
    if settings.tests:
        ok, summary = run_tests(together, ["tests/core", "tests/codec"], passed)
        lines.append(f"tests/core and tests/codec against the compiled copy: "
                     f"{'pass' if ok else 'FAIL'}: {summary[0]}")
        lines += [f"    {line}" for line in summary[1:]]
    # Pairs, each measured back to back and in alternating order, so a busy minute of the shared
    # machine hits both trees of a pair alike; a ratio is the median of the pairs' ratios.
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        part: {"pure": [], "compiled": []} for part in ("rt", "codec")}
    for part, count in (("rt", settings.repeats), ("codec", settings.codec_repeats)):
        for index in range(count):
            order = [("pure", None), ("compiled", together)]
            for kind, tree in order if index % 2 == 0 else order[::-1]:
                result = measure(tree, settings, part)
                extension = [name for name, file in result["files"].items()
                             if file.endswith(".so")]
                expected = {f"rain_envelopes.{m}" for m in passed} if kind == "compiled" else set()
                if set(extension) != expected:
                    raise RuntimeError(f"the {kind} run imported {result['files']}")
                runs[part][kind].append(result)
    lines += render(runs, settings)
    return lines


def render(runs: dict[str, dict[str, list[dict[str, Any]]]], settings: Settings) -> list[str]:
    header = f"{'figure':<48}{'pure':>11}{'compiled':>11}{'ratio':>8}{'raw':>11}"
    lines = ["", header, "-" * len(header)]

    def row(part: str, label: str, pick: Any, digits: int = 0, raw: Any = None) -> None:
        pures = [pick(r) for r in runs[part]["pure"]]
        compileds = [pick(r) for r in runs[part]["compiled"]]
        pair_ratios = [c / p for p, c in zip(pures, compileds, strict=True) if p]
        raw_text = ""
        if raw is not None:
            everything = runs[part]["pure"] + runs[part]["compiled"]
            raw_text = f"{_median([raw(r) for r in everything]):,.{digits}f}"
        lines.append(f"{label:<48}{_median(pures):>11,.{digits}f}"
                     f"{_median(compileds):>11,.{digits}f}"
                     f"{_median(pair_ratios) if pair_ratios else 0:>7.2f}x{raw_text:>11}")

    window = settings.window
    row("rt", f"pipelined gets, {window} in flight (req/s)",
        lambda r: r["server"]["throughput"], raw=lambda r: r["raw"]["throughput"])
    row("rt", "p50, one request in flight (us)", lambda r: r["server"]["p50_us"], 1,
        raw=lambda r: r["raw"]["p50_us"])
    row("rt", f"server CPU per get, {window} in flight (us)",
        lambda r: r["server"]["server_cpu_us"], 1, raw=lambda r: r["raw"]["server_cpu_us"])
    row("rt", f"client CPU per get, {window} in flight (us)",
        lambda r: r["server"]["client_cpu_us"], 1, raw=lambda r: r["raw"]["client_cpu_us"])
    labels = [label for label, _, _ in runs["codec"]["pure"][0]["codec"]]
    for index, label in enumerate(labels):
        row("codec", label, lambda r, i=index: r["codec"][i][1],
            raw=lambda r, i=index: r["codec"][i][2])
    lines.append(f"(ratio = compiled / pure, the median of {settings.repeats} (round trips) and"
                 f" {settings.codec_repeats} (codec) back-to-back pairs; raw: raw pyzmq, or"
                 " orjson / a dict for the codec rows)")
    return lines


def parse_args(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny counts (a smoke run)")
    parser.add_argument("--modules", help=f"comma-separated, of {','.join(CANDIDATES)}")
    parser.add_argument("--repeats", type=int, help="interleaved runs per tree (medians)")
    parser.add_argument("--window", type=int, help="requests in flight when pipelined")
    parser.add_argument("--pipelined", type=int, help="pipelined requests per run")
    parser.add_argument("--iterations", type=int, help="calls per codec timing")
    parser.add_argument("--codec-repeats", type=int, help="pure/compiled pairs of codec runs")
    parser.add_argument("--tests", action="store_true",
                        help="also run tests/core and tests/codec against the compiled copy")
    parser.add_argument("--workarounds", action="store_true",
                        help="apply WORKAROUNDS to the copy (so protocol compiles)")
    parser.add_argument("--keep", metavar="DIR", type=Path,
                        help="build in DIR and keep it (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    changes: dict[str, Any] = {"tests": args.tests, "workarounds": args.workarounds,
                               "keep": args.keep}
    if args.modules:
        modules = tuple(m.strip() for m in args.modules.split(",") if m.strip())
        if not modules or not set(modules) <= set(CANDIDATES):
            parser.error(f"--modules takes {', '.join(CANDIDATES)}")
        changes["modules"] = modules
    for name in ("repeats", "window", "pipelined", "iterations", "codec_repeats"):
        value = getattr(args, name)
        if value is not None:
            if not 1 <= value <= 10_000_000:
                parser.error(f"--{name} must be between 1 and 10,000,000")
            changes[name] = value
    merged = Settings(**{**settings.__dict__, **changes})
    if merged.pipelined < 3 * merged.window:
        parser.error("--pipelined must be at least 3 x --window")
    return merged


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["--worker"]:
        window, pipelined, iterations = (int(a) for a in arguments[2:5])
        print(json.dumps(worker(arguments[1], window, pipelined, iterations)))
        return 0
    try:
        import mypyc  # noqa: F401  (ships with mypy, the dev extra)
    except ImportError:
        print("mypyc is not installed: pip install -e '.[dev]' (it ships with mypy)",
              file=sys.stderr)
        return 2
    settings = parse_args(argv)
    started = time.perf_counter()
    if settings.keep is not None:
        settings.keep.mkdir(parents=True, exist_ok=True)
        lines = trial(settings, settings.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="rain-mypyc-") as base:
            lines = trial(settings, Path(base))
    lines += ["", f"total wall time {time.perf_counter() - started:.1f} s"]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

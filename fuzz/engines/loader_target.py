#!/usr/bin/env python3
"""memslot-fuzz loader target: the tool's input loaders under atheris (libFuzzer).

    fuzz/engines/loader_target.py -max_total_time=600 CORPUS_DIR corpus/seeds corpus/x86-shadow oracles/known

Each input is handed, as a file, to every loader of user input:

    language.trace.load            a trace file
    fuzz.corpus.load           a corpus entry
    oracles.triage.load_known  a known-list directory holding the input as its one .toml file
    fuzz.reports.summary.validate_report   the input's JSON value, when it parses, as a report

A loader may only raise the tool's one-line input error (`EXPECTED`: TraceError,
KnownListError, ReportError, with a message of one line); any other exception, or a message
of more than one line, is a bug: libFuzzer records the input as a crash.  tests/test_loaders.py
replays every such input saved under tests/data/loader_crashes/.  `ci --mode batch` runs this
target for ten minutes (fuzz/engines/ci_modes.py).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent

if not getattr(sys, "frozen", False):          # run from a checkout: make the packages importable
    sys.path.insert(0, str(REPO))


class LoaderBug(AssertionError):
    """A loader's input error that is not one line."""


def expected_errors() -> tuple[type[BaseException], ...]:
    from fuzz.reports.summary import ReportError
    from language.trace import TraceError
    from oracles.triage import KnownListError
    return (TraceError, KnownListError, ReportError)


def check_loaders(data: bytes, workdir: Path) -> list[str]:
    """Run every loader on `data` (written under `workdir`).  Returns the one-line input errors
    they raised; any other exception propagates (a bug), and so does LoaderBug for an input
    error that is not one line."""
    from fuzz import corpus
    from fuzz.reports import summary as report
    from language import trace
    from oracles import triage
    expected = expected_errors()
    entry = workdir / "input.json"
    entry.write_bytes(data)
    known_dir = workdir / "known"
    known_dir.mkdir(exist_ok=True)
    (known_dir / "x86-shadow.toml").write_bytes(data)
    errors: list[str] = []

    def attempt(load, *args) -> None:
        try:
            load(*args)
        except expected as e:
            msg = str(e)
            if not msg or "\n" in msg or "\r" in msg:
                raise LoaderBug(f"{load.__module__}.{load.__name__}: {type(e).__name__} is not one "
                                f"line: {msg!r:.200}") from e
            errors.append(msg)

    attempt(trace.load, entry)
    attempt(corpus.load, entry)
    attempt(triage.load_known, known_dir)
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):        # not JSON at all: nothing for the validator
        return errors
    attempt(report.validate_report, doc)
    return errors


@dataclass
class LoaderRun:
    crashes: list[Path] = field(default_factory=list)     # inputs a loader failed on
    execs: int = 0
    launches: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    log_tail: list[str] = field(default_factory=list)


# the tests' loader seeds exist only in a checkout; an installed package has the others
SEEDS = [d for d in (REPO / "tests" / "data" / "loader_seeds", REPO / "tests" / "data" / "loader_crashes",
                     REPO / "corpus" / "seeds", REPO / "oracles" / "known") if d.is_dir()]
_FORK_STATUS = re.compile(r"^#(\d+): cov: ")
DICT = Path(__file__).resolve().with_suffix(".dict")      # the loaders' keywords


def fuzz_loaders(seconds: float, corpus_dir: Path, crash_dir: Path, max_len: int = 16384,
                 extra_args: list[str] | tuple[str, ...] = ()) -> LoaderRun:
    """Run this target for `seconds` in libFuzzer's fork mode (-fork=1 -ignore_crashes=1, so
    a failing input does not end the run): its corpus in `corpus_dir` (kept), seeded from
    SEEDS; each input a loader fails on is saved as crash_dir/crash-<sha1>.  Ctrl-C or
    SIGTERM stop it (interrupted=True).  The target dies with this process."""
    from fuzz.lifetime import preexec_die_with_parent
    corpus_dir, crash_dir = Path(corpus_dir), Path(crash_dir)
    corpus_dir.mkdir(parents=True, exist_ok=True)
    crash_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # fork mode re-executes this script through its #! line: this Python first on PATH
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    res = LoaderRun(launches=1)
    started = time.monotonic()
    before = set(crash_dir.iterdir())
    cmd = [sys.executable, str(Path(__file__).resolve()), "-fork=1", "-ignore_crashes=1",
           f"-max_total_time={max(1, int(seconds))}", f"-max_len={max_len}",
           f"-artifact_prefix={crash_dir.resolve()}/", f"-dict={DICT}", *extra_args,
           str(corpus_dir.resolve()), *(str(d) for d in SEEDS if d.is_dir())]
    proc = subprocess.Popen(cmd, env=env, cwd=corpus_dir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True, preexec_fn=preexec_die_with_parent(os.getpid()))
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            res.log_tail = (res.log_tail + [line.rstrip("\n")])[-40:]
            m = _FORK_STATUS.match(line)
            if m:
                res.execs = int(m.group(1))
        proc.wait()
    except KeyboardInterrupt:
        res.interrupted = True
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    res.crashes = sorted(set(crash_dir.iterdir()) - before)
    res.seconds = time.monotonic() - started
    return res


def main() -> None:
    import atheris
    with atheris.instrument_imports(include=["language", "fuzz", "oracles"]):
        import fuzz.corpus  # noqa: F401
        import fuzz.reports.summary  # noqa: F401
        import language.trace  # noqa: F401
        import oracles.triage  # noqa: F401
    workdir = Path(tempfile.mkdtemp(prefix="memslot-loaders-"))

    def test_one_input(data: bytes) -> None:
        check_loaders(data, workdir)

    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

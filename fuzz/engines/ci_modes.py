"""CI fuzzing modes without Docker: what ClusterFuzzLite does, on any CI runner.

    memslot-fuzz ci --mode code-change --seconds 120 --jobs 2   # a short slice, warm-started
    memslot-fuzz ci --mode batch --seconds 3600 --jobs 8        # a long run
    memslot-fuzz ci --mode prune                                # corpus pruning by coverage

The fuzzing corpus (libFuzzer's inputs, not the regression corpus) lives under
STATE/corpus/<arch>/ (STATE default memslot-fuzz-out/ci): a CI cache keeps it between runs.
code-change and batch read corpus/seeds/ and the regression entries corpus/<arch>/ as
read-only seed directories (they are JSON traces, which the atheris decoder reads as
themselves) and add what they find to STATE/corpus/<arch>/.  Divergences not on the known list
are minimized and saved under OUT/<arch>/ (OUT default memslot-fuzz-out); the mode "fails"
when there is one.  prune replaces each STATE/corpus/<arch>/ by the smallest subset with the
same coverage (libFuzzer -merge=1 into a fresh directory, then a swap by rename).
batch also fuzzes the input loaders (fuzz/engines/loader_target.py) for LOADER_SECONDS (ten minutes)
after the architectures, corpus in STATE/loader-corpus/; an input a loader fails on is saved
under OUT/loader-crashes/ and fails the mode (copy it to tests/data/loader_crashes/ with the fix).
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fuzz import output
from fuzz.engines.atheris_engine import (REPO, TARGET, TargetConfig, console_progress, run_atheris_stats,
                             target_env)

MODES = ("code-change", "batch", "prune")
DEFAULT_SECONDS = {"code-change": 120.0, "batch": 3600.0, "prune": 600.0}
LOADER_SECONDS = 600.0          # batch's loader-fuzzing slice, on top of --seconds


class CiError(ValueError):
    """Bad arguments to ci_mode: one line naming what is wrong."""


@dataclass
class CiRun:
    arch: str
    seconds: float = 0.0
    execs: int = 0
    events: int = 0
    corpus_before: int = 0
    corpus_after: int = 0
    interrupted: bool = False


@dataclass
class CiResult:
    mode: str
    runs: list[CiRun] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)           # divergence files written
    signatures: dict[Path, str] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False
    loader_crashes: list[Path] = field(default_factory=list)  # inputs a loader failed on (batch)
    loader_execs: int = 0

    @property
    def failed(self) -> bool:
        """A divergence outside the known list was found, or a loader failed on an input with
        something else than its one-line input error (the CI job should fail)."""
        return bool(self.paths) or bool(self.loader_crashes)


def _inputs(d: Path) -> int:
    return sum(1 for p in d.iterdir() if p.is_file()) if d.is_dir() else 0


def ci_mode(mode: str, seconds: float | None = None, jobs: int = 1, arches: list[str] | None = None,
            old: str = "v5.12", new: str = "v5.13", state_dir: Path = Path("memslot-fuzz-out/ci"),
            out_dir: Path = Path("memslot-fuzz-out"), corpus_root: Path = REPO / "corpus",
            minimize_seconds: float = 5.0, quiet: bool = False,
            extra_args: list[str] | tuple[str, ...] = (),
            loader_seconds: float | None = None) -> CiResult:
    """Run one CI mode over `arches` (default: every implemented arch), `seconds` in all
    (default per mode: code-change 120, batch 3600, prune 600), split evenly over arches.
    Returns per-arch figures and the divergence files written; Ctrl-C stops cleanly with
    what was found saved (interrupted=True).  batch then fuzzes the loaders for
    `loader_seconds` (default LOADER_SECONDS; 0: not)."""
    from impls import registry
    if mode not in MODES:
        raise CiError(f"ci: --mode {mode!r}: expected one of {', '.join(MODES)}")
    seconds = DEFAULT_SECONDS[mode] if seconds is None else seconds
    if not math.isfinite(seconds) or seconds <= 0:
        raise CiError(f"ci: --seconds {seconds:g}: must be positive and finite")
    if jobs < 1:
        raise CiError(f"ci: --jobs {jobs}: must be at least 1")
    arches = arches or registry.implemented_arches()
    for a in arches:
        registry.check_arch(a)
        registry.resolve(a, old), registry.resolve(a, new)     # bad names fail before any run
    state_dir, out_dir, corpus_root = Path(state_dir), Path(out_dir), Path(corpus_root)
    res = CiResult(mode)
    started = time.monotonic()
    per_arch = seconds / len(arches)
    for arch in arches:
        mine = state_dir / "corpus" / arch
        with output.errors(mine, "--state", "cannot create directory"):
            mine.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        run = CiRun(arch, corpus_before=_inputs(mine))
        res.runs.append(run)
        if mode == "prune":
            run.interrupted = _prune(arch, old, new, mine, per_arch, quiet)
        else:
            seeds = [corpus_root / "seeds", corpus_root / arch]
            progress = None if quiet else console_progress(f"{mode} {arch} {old}..{new}")
            r = run_atheris_stats(arch, old, new, per_arch, out_dir, mine, jobs, extra_args,
                                  seed_dirs=seeds, minimize_seconds=minimize_seconds,
                                  progress=progress)
            run.execs, run.events, run.interrupted = r.execs, r.events, r.interrupted
            res.paths += r.paths
            res.signatures.update(r.signatures)
        run.corpus_after = _inputs(mine)
        run.seconds = round(time.monotonic() - t0, 3)
        if not quiet:
            print(f"  [{mode} {arch}] {run.seconds:.1f}s, {run.execs} traces, corpus "
                  f"{run.corpus_before} -> {run.corpus_after}", file=sys.stderr, flush=True)
        if run.interrupted:
            res.interrupted = True
            break
    loader_seconds = (LOADER_SECONDS if mode == "batch" else 0.0) if loader_seconds is None else loader_seconds
    if loader_seconds > 0 and not res.interrupted:
        from fuzz.engines.loader_target import fuzz_loaders
        if not quiet:
            print(f"  [{mode} loaders] {loader_seconds:.0f}s over the trace, corpus-entry, "
                  "known-list and report loaders", file=sys.stderr, flush=True)
        lcorpus, lcrashes = state_dir / "loader-corpus", out_dir / "loader-crashes"
        with output.errors(lcorpus, "--state", "cannot create directory"):
            lcorpus.mkdir(parents=True, exist_ok=True)
        with output.errors(lcrashes, "--out", "cannot create directory"):
            lcrashes.mkdir(parents=True, exist_ok=True)
        lr = fuzz_loaders(loader_seconds, lcorpus, lcrashes)
        res.loader_crashes, res.loader_execs = lr.crashes, lr.execs
        res.interrupted |= lr.interrupted
    res.seconds = time.monotonic() - started
    return res


def _prune(arch: str, old: str, new: str, mine: Path, seconds: float, quiet: bool) -> bool:
    """libFuzzer -merge=1 of `mine` into a fresh directory, then swap it in.  Returns True if
    interrupted (the old corpus is left as it was)."""
    if _inputs(mine) == 0:
        return False
    with tempfile.TemporaryDirectory(prefix="memslot-prune-") as work:
        work_p = Path(work)
        fresh = mine.parent / f".{mine.name}.pruned"
        shutil.rmtree(fresh, ignore_errors=True)
        with output.errors(fresh, "--state", "cannot create directory"):
            fresh.mkdir()
        # a divergence met while merging is not this mode's business: saved in the temp dir
        cfg = TargetConfig(arch, old, new, work_p / "out", minimize_seconds=0.0, skip_saved=True)
        cmd = [sys.executable, str(TARGET), "-merge=1", f"-max_total_time={max(1, int(seconds))}",
               f"-artifact_prefix={work_p}/", "-max_len=1048576", str(fresh), str(mine.resolve())]
        proc = subprocess.Popen(cmd, env=target_env(cfg), cwd=work_p, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        try:
            log, _ = proc.communicate()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            shutil.rmtree(fresh, ignore_errors=True)
            return True
        if proc.returncode != 0 or (_inputs(fresh) == 0 and _inputs(mine) > 0):
            shutil.rmtree(fresh, ignore_errors=True)
            tail = " / ".join(log.strip().splitlines()[-3:])
            raise CiError(f"ci prune {arch}: libFuzzer -merge=1 failed (exit {proc.returncode}): {tail}")
        stale = mine.parent / f".{mine.name}.old"
        shutil.rmtree(stale, ignore_errors=True)
        with output.errors(mine, "--state", "cannot swap in the pruned corpus"):
            os.replace(mine, stale)
            os.replace(fresh, mine)
        shutil.rmtree(stale, ignore_errors=True)
    return False


def print_summary(res: CiResult, stream=None) -> None:
    out = stream or sys.stdout
    print(f"memslot-fuzz ci --mode {res.mode}: {res.seconds:.1f}s"
          + (" (interrupted)" if res.interrupted else ""), file=out)
    for r in res.runs:
        print(f"  {r.arch:13s} {r.seconds:7.1f}s {r.execs:9d} traces  corpus {r.corpus_before} -> "
              f"{r.corpus_after}", file=out)
    for p in res.paths:
        print(f"  NEW {res.signatures.get(p, '?')}\n      -> {p}", file=out)
    print(f"  {len(res.paths)} new divergence(s)", file=out)
    if res.loader_execs or res.loader_crashes:
        print(f"  loaders: {res.loader_execs} inputs, {len(res.loader_crashes)} failed", file=out)
    for p in res.loader_crashes:
        print(f"  LOADER BUG (replay: fuzz/engines/loader_target.py {p}) -> {p}", file=out)

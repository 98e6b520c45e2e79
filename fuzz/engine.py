"""The fuzzing loop: generate traces, run both sides, minimize every new divergence
signature, save it, then report it.  Stops at --max-time or Ctrl-C with everything found
already on disk.
"""
from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from oracles.compare import Divergence
from oracles.triage import KnownEntry

from . import corpus
from .generate import GenConfig, RandomSource, generate
from .minimize import minimize
from .runner import Side, run_trace
from .trace import Event


@dataclass
class Job:
    arch: str
    old: Side
    new: Side
    max_time: float
    seed: int
    out_dir: Path
    gen: GenConfig = field(default_factory=GenConfig)
    minimize_seconds: float = 10.0
    stop_on_new: bool = False        # end the job at the first divergence not on the known list
    engine: str = "random"           # random | hypothesis | atheris | exhaustive (for reports)


@dataclass
class JobResult:
    job: Job
    divergences: list[Divergence] = field(default_factory=list)
    saved: dict[str, Path] = field(default_factory=dict)     # signature -> file
    events: int = 0
    traces: int = 0
    seconds: float = 0.0
    interrupted: bool = False


def reproduce(events: list[Event], job: Job, known: list[KnownEntry], signature: str) -> Divergence | None:
    for d in run_trace(events, job.arch, job.old, job.new, known).divergences:
        if d.signature == signature:
            return d
    return None


def minimized(events: list[Event], job: Job, known: list[KnownEntry], d: Divergence,
              seconds: float | None = None) -> Divergence:
    """Minimize the trace of `d` and return the divergence as the minimized trace shows it."""
    sig = d.signature
    small = minimize(events, lambda c: reproduce(c, job, known, sig) is not None,
                     job.minimize_seconds if seconds is None else seconds)
    out = reproduce(small, job, known, sig) or d
    out.trace = small
    return out


def save_divergence(d: Divergence, job: Job, known: list[KnownEntry]) -> Path:
    """On disk before it is reported: the minimized trace with everything it shows."""
    shown = [x.signature for x in run_trace(d.trace, job.arch, job.old, job.new, known).divergences]
    entry = corpus.CorpusEntry(job.arch, job.old.name, job.new.name, shown, d.trace,
                               note=f"found by memslot-fuzz run (seed {job.seed}): {d.signature}")
    return corpus.save(entry, job.out_dir)


Progress = Callable[[JobResult, str], None]


def run_job(job: Job, known: list[KnownEntry], progress: Progress | None = None,
            seen: set[str] | None = None) -> JobResult:
    """Fuzz one (arch, old, new) pair until max_time (or Ctrl-C)."""
    res = JobResult(job)
    seen = set() if seen is None else seen
    rng = random.Random(job.seed)
    start = time.monotonic()
    last_tick = start
    try:
        while time.monotonic() - start < job.max_time:
            events = generate(RandomSource(rng), job.gen)
            r = run_trace(events, job.arch, job.old, job.new, known)
            res.traces += 1
            res.events += r.events
            for d in r.divergences:
                if d.signature in seen:
                    continue
                seen.add(d.signature)
                # minimization may run past max_time by a little, never by much
                budget = max(2.0, min(job.minimize_seconds, job.max_time - (time.monotonic() - start)))
                d = minimized(events[:d.event_index + 1], job, known, d, budget)
                res.saved[d.signature] = save_divergence(d, job, known)
                res.divergences.append(d)
                if progress:
                    progress(res, "found")
            if job.stop_on_new and any(not d.known for d in res.divergences):
                break
            now = time.monotonic()
            if progress and now - last_tick >= 2.0:
                last_tick = now
                res.seconds = now - start
                progress(res, "tick")
    except KeyboardInterrupt:
        res.interrupted = True
    res.seconds = time.monotonic() - start
    return res


def console_progress(res: JobResult, what: str) -> None:
    j = res.job
    if what == "found":
        d = res.divergences[-1]
        tag = "known" if d.known else "NEW"
        print(f"  [{j.arch} {j.old.name}..{j.new.name}] {tag} {d.cls} ({d.wrong_side} wrong) at "
              f"{d.op}, {len(d.trace)} events -> {res.saved[d.signature]}", file=sys.stderr, flush=True)
        return
    rate = res.events / res.seconds if res.seconds else 0.0
    new = sum(not d.known for d in res.divergences)
    print(f"  [{j.arch} {j.old.name}..{j.new.name}] {res.seconds:5.1f}s {res.events} events "
          f"({rate:.0f}/s), {res.traces} traces, divergences {len(res.divergences)} ({new} new)",
          file=sys.stderr, flush=True)

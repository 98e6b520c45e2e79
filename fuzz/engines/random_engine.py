"""The fuzzing loop: generate traces, run both sides, minimize every new divergence
signature, save it, then report it.  Stops at --max-time, after --max-traces traces, or on
SIGINT/SIGTERM (fuzz/lifetime.py) with everything found already on disk.

Two clocks per job, so that minimization never eats fuzzing time: `max_time` bounds the
fuzzing window (generating and running traces, and nothing else), and minimization runs on
its own clock: each new signature gets at most `minimize_seconds`, all of a job's
minimizations together at most `minimize_budget`.  A signature met once that budget is spent
is saved as found (the trace up to the diverging event, not minimized) and says so.

With `max_traces` the findings are a function of the seed alone: the loop stops after that
many generated traces and minimization is bounded by attempts, not seconds (max_time stays a
safety limit on the fuzzing window; a job it cuts short says so in `stopped_by`).
"""
from __future__ import annotations

import hashlib
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from oracles.compare import Divergence
from oracles.triage import KnownEntry

from fuzz import corpus, rootcause
from fuzz.engines.explore import explore, program_tasks, strip_schedule
from fuzz.engines.generate import GenConfig, RandomSource, generate
from fuzz.minimize import minimize
from fuzz.runner import Side, run_trace
from language.trace import repro_prefix, Event, TraceError
from language.wellformed import well_formed


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
    max_traces: int | None = None    # stop after this many traces (reproducible mode)
    minimize_attempts: int | None = None   # minimization budget in calls, not seconds
    schedules: str = "pct"           # pct: the generated schedule | exhaustive: every one (fuzz/engines/explore.py)
    preemptions: int = 2             # exhaustive: the preemption bound
    skipped_yields: int = 0          # exhaustive: most yields skipped (need_resched() answered no)
    max_schedules: int = 200         # exhaustive: schedules per program at most
    minimize_budget: float | None = None   # seconds for all minimizations of the job (None: no cap)
    claims: Path | None = None       # --jobs: a directory where workers claim signatures (fuzz/engines/parallel.py)


@dataclass
class JobResult:
    job: Job
    divergences: list[Divergence] = field(default_factory=list)
    saved: dict[str, Path] = field(default_factory=dict)     # signature -> file
    events: int = 0
    traces: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    stopped_by: str = ""             # max-time | max-traces | stop-on-new | interrupted
    schedules: int = 0               # exhaustive schedules: schedules run, over every program
    explored: int = 0                # programs explored (of several tasks)
    explored_complete: int = 0       # of those, explored up to the bound without hitting a cap
    fuzz_seconds: float = 0.0        # the fuzzing window: generating and running traces
    minimize_seconds: float = 0.0    # minimizing (and saving) new signatures, on its own clock
    unminimized: int = 0             # signatures saved as found: the minimization budget was spent


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
                     job.minimize_seconds if seconds is None else seconds,
                     max_attempts=job.minimize_attempts)
    out = reproduce(small, job, known, sig) or d
    out.trace = small
    return out


def save_divergence(d: Divergence, job: Job, known: list[KnownEntry]) -> Path:
    """On disk before it is reported: the minimized trace with everything it shows, as the one
    file for d's signature (a file another worker or run saved first is kept)."""
    shown = [x.signature for x in run_trace(d.trace, job.arch, job.old, job.new, known).divergences]
    entry = corpus.CorpusEntry(job.arch, job.old.name, job.new.name, shown, d.trace,
                               note=corpus.signature_note(f"found by memslot-fuzz run (seed {job.seed})", d.signature))
    return corpus.save_divergence_entry(entry, job.out_dir, d.signature)[0]


def already_saved(d: Divergence, job: Job, known: list[KnownEntry]) -> Divergence | None:
    """d as the file saved for its signature by another worker or an earlier run shows it
    (None if there is no such file, or it no longer shows d): no need to minimize again."""
    path = corpus.path_for(job.out_dir, job.arch, d.signature)
    if not path.is_file():
        return None
    try:
        entry = corpus.load(path)
    except TraceError:
        return None
    if getattr(job.gen, "kernel_only", False) and not well_formed(entry.events, strict=True):
        return None     # an earlier run's trace breaks a rule this run keeps: minimize this one
    out = reproduce(entry.events, job, known, d.signature)
    if out is not None:
        out.trace = entry.events
    return out


def found(events: list[Event], d: Divergence, job: Job, known: list[KnownEntry], res: JobResult,
          seconds: float | None = None) -> Divergence:
    """Minimize a divergence met for the first time in this job (unless its file exists
    already), save it, and add it to res: on disk before anyone is told.  `seconds` 0 (the
    job's minimization budget is spent) saves the trace up to the diverging event as it is."""
    small = already_saved(d, job, known)
    if small is None and seconds is not None and seconds <= 0:
        small = reproduce(repro_prefix(events, d.event_index), job, known, d.signature) or d
        small.trace = repro_prefix(events, d.event_index)
        res.unminimized += 1
    elif small is None:
        small = minimized(repro_prefix(events, d.event_index), job, known, d, seconds)
    small = rootcause.attribute(small, job.arch, job.old, job.new, known)
    res.saved[small.signature] = save_divergence(small, job, known)
    res.divergences.append(small)
    return small


def explored(events: list[Event], job: Job, known: list[KnownEntry], res: JobResult, seed: int,
             deadline: float) -> list[tuple[list[Event], Divergence]]:
    """Every schedule of a generated program up to job.preemptions (at most job.max_schedules,
    the seed picking the order of siblings), instead of its one generated schedule: each
    distinct divergence with the trace (program and the simplest directive) that shows it."""
    ex = explore(events, job.arch, job.old, job.new, known, job.preemptions, job.max_schedules, seed, deadline,
                 skipped_yields=job.skipped_yields)
    res.schedules += len(ex.schedules)
    res.events += sum(s.result.events for s in ex.schedules if s.result is not None)
    res.explored += 1
    res.explored_complete += ex.complete
    program = strip_schedule(events)
    return [([sched] + program, d) for d, sched in ex.findings()]


Progress = Callable[[JobResult, str], None]


def claim(job: Job, signature: str) -> bool:
    """True if this worker is the first of its run to meet `signature` (always, without
    --jobs): only the claimant minimizes and saves it, the other workers go on fuzzing."""
    if job.claims is None:
        return True
    name = hashlib.sha256(f"{job.arch}|{signature}".encode()).hexdigest()[:24]
    try:
        os.close(os.open(job.claims / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return True
    except FileExistsError:
        return False


def run_job(job: Job, known: list[KnownEntry], progress: Progress | None = None,
            seen: set[str] | None = None) -> JobResult:
    """Fuzz one (arch, old, new) pair until max_time seconds of fuzzing, max_traces, or a stop
    signal; minimization of new signatures runs on its own clock (see the module doc)."""
    res = JobResult(job)
    seen = set() if seen is None else seen
    rng = random.Random(job.seed)
    start = time.monotonic()
    last_tick = start
    try:
        while True:
            if job.max_traces is not None and res.traces >= job.max_traces:
                res.stopped_by = "max-traces"
                break
            res.fuzz_seconds = time.monotonic() - start - res.minimize_seconds
            if res.fuzz_seconds >= job.max_time:
                res.stopped_by = "max-time"
                break
            events = generate(RandomSource(rng), job.gen)
            if job.schedules == "exhaustive" and len(program_tasks(events)) > 1:
                shown = explored(events, job, known, res, rng.randrange(1 << 32),
                                 time.monotonic() + job.max_time - res.fuzz_seconds)
            else:
                r = run_trace(events, job.arch, job.old, job.new, known)
                res.events += r.events
                shown = [(events, d) for d in r.divergences]
            res.traces += 1
            for events, d in shown:
                if d.signature in seen:
                    continue
                seen.add(d.signature)
                if not claim(job, d.signature):
                    continue
                budget = None
                if job.minimize_attempts is None:
                    budget = job.minimize_seconds
                    if job.minimize_budget is not None:
                        budget = max(0.0, min(budget, job.minimize_budget - res.minimize_seconds))
                t0 = time.monotonic()
                try:
                    found(events, d, job, known, res, budget)
                finally:
                    res.minimize_seconds += time.monotonic() - t0
                if progress:
                    progress(res, "found")
            if job.stop_on_new and any(not d.known for d in res.divergences):
                res.stopped_by = "stop-on-new"
                break
            now = time.monotonic()
            if progress and now - last_tick >= 2.0:
                last_tick = now
                res.seconds = now - start
                res.fuzz_seconds = res.seconds - res.minimize_seconds
                progress(res, "tick")
    except KeyboardInterrupt:          # SIGINT or SIGTERM (fuzz.lifetime.Interrupted)
        res.interrupted = True
        res.stopped_by = "interrupted"
    res.seconds = time.monotonic() - start
    res.fuzz_seconds = res.seconds - res.minimize_seconds
    return res


def console_progress(res: JobResult, what: str) -> None:
    j = res.job
    if what == "found":
        d = res.divergences[-1]
        tag = ("known" if d.known else "NEW") + (f" {d.cause}" if d.cause else "")
        n = len(d.trace)
        print(f"  [{j.arch} {j.old.name}..{j.new.name}] {tag} {d.cls} ({d.wrong_side} wrong) at "
              f"{d.op}: {d.shape}, {n} event{'' if n == 1 else 's'} -> {res.saved[d.signature]}",
              file=sys.stderr, flush=True)
        return
    rate = res.events / res.fuzz_seconds if res.fuzz_seconds > 0 else 0.0
    new = sum(not d.known for d in res.divergences)
    print(f"  [{j.arch} {j.old.name}..{j.new.name}] {res.fuzz_seconds:5.1f}s fuzzing, "
          f"{res.minimize_seconds:.1f}s minimizing, {res.events} events ({rate:.0f}/s), "
          f"{res.traces} traces, divergences {len(res.divergences)} ({new} new)",
          file=sys.stderr, flush=True)

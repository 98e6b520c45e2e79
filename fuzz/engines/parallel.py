"""`memslot-fuzz run --jobs N`: N worker processes per (arch, old, new), each with its own
seed, all saving into the same output directory; the parent merges their results by
signature and prints one progress line for all of them.

Workers save every divergence before reporting it, as the one file named by its signature
(fuzz/corpus.py: an exclusive create, never a replacement), so a killed run loses nothing
already reported and two workers that find the same divergence leave one file.  With
max_traces, worker k runs a share of the traces fixed by the seed and k alone.

Workers never outlive the parent: each asks the kernel for SIGKILL when the parent dies
(fuzz/lifetime.py), SIGKILL of the parent included.  A SIGINT or SIGTERM to the parent alone
is passed on to the workers, which stop, save and send what they found.
"""
from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue
import signal
import sys
import tempfile
import time
from pathlib import Path

from oracles.triage import KnownEntry

from fuzz import lifetime
from fuzz.engines.random_engine import Job, JobResult, run_job

SEED_STRIDE = 1_000_003
_STOP_ORDER = ["interrupted", "max-time", "stop-on-new", "max-traces", ""]   # what a merge says


def _worker(index: int, job: Job, known: list[KnownEntry], results, progress, parent: int) -> None:
    lifetime.die_with_parent(parent)
    lifetime.worker_signals()
    def tell(res: JobResult, what: str) -> None:
        if what == "found":
            d = res.divergences[-1]
            progress.put(("found", d.signature, d.known, d.cls, d.wrong_side, d.op,
                          len(d.trace), str(res.saved[d.signature])))
        else:
            progress.put(("tick", index, res.events, res.traces))
    try:
        res = run_job(job, known, tell)
    except KeyboardInterrupt:          # interrupted before run_job could catch it
        res = JobResult(job, interrupted=True, stopped_by="interrupted")
    # the parent has the job; its Sides may hold classes the registry composes at run time
    # (RISC-V's later layers), which pickle cannot name, and the result must reach the parent
    res.job = None
    results.put(res)


def share(total: int | None, jobs: int, k: int) -> int | None:
    """Worker k's part of `total` traces (the first total % jobs workers run one more)."""
    if total is None:
        return None
    return total // jobs + (1 if k < total % jobs else 0)


def run_parallel(job: Job, jobs: int, known: list[KnownEntry], quiet: bool = False) -> JobResult:
    """Run `job` on `jobs` processes and merge what they found (first finder of a signature wins)."""
    with tempfile.TemporaryDirectory(prefix="memslot-fuzz-claims-") as claims:
        return _run_parallel(job, jobs, known, quiet, Path(claims))


def _run_parallel(job: Job, jobs: int, known: list[KnownEntry], quiet: bool, claims: Path) -> JobResult:
    ctx = mp.get_context("fork")
    results, progress = ctx.Queue(), ctx.Queue()
    procs = []
    parent = os.getpid()
    for k in range(jobs):
        # the first worker to meet a signature claims it and minimizes it; the others fuzz on
        sub = dataclasses.replace(job, seed=job.seed + k * SEED_STRIDE, max_traces=share(job.max_traces, jobs, k),
                                  claims=claims)
        p = ctx.Process(target=_worker, args=(k, sub, known, results, progress, parent), daemon=True)
        p.start()
        procs.append(p)
    merged = JobResult(job, stopped_by="")
    per_worker: dict[int, tuple[int, int]] = {}
    seen: set[str] = set()
    start = last = time.monotonic()
    collected: list[JobResult] = []
    try:
        while len(collected) < jobs:
            try:
                collected.append(results.get(timeout=0.2))
            except queue.Empty:
                pass
            _drain(progress, seen, per_worker, job, quiet)
            now = time.monotonic()
            if not quiet and now - last >= 2.0:
                last = now
                events = sum(e for e, _ in per_worker.values())
                print(f"  [{job.arch} {job.old.name}..{job.new.name}] {now - start:5.1f}s {jobs} jobs, "
                      f"{events} events ({events / (now - start):.0f}/s), divergences {len(seen)}",
                      file=sys.stderr, flush=True)
            if not any(p.is_alive() for p in procs) and results.empty():
                break
    except KeyboardInterrupt:          # SIGINT or SIGTERM: the workers stop too, and report
        merged.interrupted = True
        signum = lifetime.stop_signal() or signal.SIGINT
        for p in procs:
            if p.is_alive() and p.pid is not None:
                try:
                    os.kill(p.pid, signum)     # a worker that has one already ignores a second
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 30
        while len(collected) < jobs and time.monotonic() < deadline:
            try:
                collected.append(results.get(timeout=0.5))
            except (queue.Empty, KeyboardInterrupt):
                if not any(p.is_alive() for p in procs):
                    break
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join()
    _drain(progress, seen, per_worker, job, quiet)
    if len(collected) < jobs and not merged.interrupted:
        print(f"memslot-fuzz: {job.arch}: {jobs - len(collected)} of {jobs} workers ended without a "
              "result (see above); what they saved is on disk, their counts are missing",
              file=sys.stderr, flush=True)
    for res in collected:
        res.job = job
        merged.events += res.events
        merged.traces += res.traces
        merged.schedules += res.schedules
        merged.explored += res.explored
        merged.explored_complete += res.explored_complete
        merged.seconds = max(merged.seconds, res.seconds)
        merged.fuzz_seconds = max(merged.fuzz_seconds, res.fuzz_seconds)
        merged.minimize_seconds += res.minimize_seconds
        merged.unminimized += res.unminimized
        merged.interrupted |= res.interrupted
        merged.stopped_by = min(merged.stopped_by, res.stopped_by, key=_STOP_ORDER.index)
        for d in res.divergences:
            if d.signature not in merged.saved:
                merged.saved[d.signature] = res.saved[d.signature]
                merged.divergences.append(d)
    return merged


def _drain(progress, seen: set[str], per_worker: dict, job: Job, quiet: bool) -> None:
    while True:
        try:
            msg = progress.get_nowait()
        except queue.Empty:
            return
        if msg[0] == "tick":
            per_worker[msg[1]] = (msg[2], msg[3])
        elif msg[0] == "found" and msg[1] not in seen:
            seen.add(msg[1])
            if not quiet:
                _, _, known, cls, side, op, n, path = msg
                tag = "known" if known else "NEW"
                print(f"  [{job.arch} {job.old.name}..{job.new.name}] {tag} {cls} ({side} wrong) at {op}, "
                      f"{n} events -> {path}", file=sys.stderr, flush=True)

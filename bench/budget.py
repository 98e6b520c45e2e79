#!/usr/bin/env python3
"""Benchmark: where an architecture's seconds go in the main job, and what --jobs 2 buys
(issue 10, goals 5 and 6).  Prints one JSON object; figures depend on the machine and on what
else runs, so every ratio is taken between figures measured in this same run, and nothing is
asserted.

    .venv/bin/python bench/budget.py [--max-time 60] [--seed 1] [--jobs-time 40] [--root DIR]

* "main_job": `memslot-fuzz run --arch all --max-time 60 --seed 1` in this process; per arch
  the traces and events it ran, its wall seconds, the seconds spent minimizing and saving new
  signatures (timed around fuzz.engines.random_engine.found, which every version of the engine calls for
  each new signature) and the rest, the fuzzing seconds.
* "jobs": the same command with --jobs 1 and with --jobs 2 (same seed, same --max-time), each
  timed as a whole, alternately --repeat times: events per wall second of the best run of
  each, their ratio, and the CPU seconds each run got (the machine is shared: a --jobs 2 run
  cannot go twice as fast when something else holds one of the two cores).

--root runs another checkout of the project (e.g. `git archive <commit> | tar -x -C DIR`), so
the "before" figures come from the same script; bench/results/budget-before.json and
budget-after.json are its output at the commit before the budget change and after it.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path


def main_job(args, root: Path) -> dict:
    from fuzz import cli
    from fuzz.engines import random_engine as engine
    spent: dict[str, float] = defaultdict(float)
    count: dict[str, int] = defaultdict(int)
    real_found = engine.found

    def timed_found(events, d, job, *rest, **kw):
        t0 = time.monotonic()
        try:
            return real_found(events, d, job, *rest, **kw)
        finally:
            spent[job.arch] += time.monotonic() - t0
            count[job.arch] += 1

    engine.found = timed_found
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rep = Path(tmp) / "report.json"
            t0 = time.monotonic()
            with contextlib.redirect_stdout(io.StringIO()):
                code = cli.main(["run", "--arch", "all", "--max-time", str(args.max_time), "--seed",
                                 str(args.seed), "--quiet", "--out", str(Path(tmp) / "out"),
                                 "--report", str(rep)])
            wall = time.monotonic() - t0
            doc = json.loads(rep.read_text())
    finally:
        engine.found = real_found
    arches = {}
    for r in doc["runs"]:
        a = r["arch"]
        found = [d for d in doc["divergences"] if d["arch"] == a]
        arches[a] = {"traces": r["traces"], "events": r["events"], "seconds": r["seconds"],
                     "minimize_seconds": round(spent[a], 2),
                     "fuzz_seconds": round(r["seconds"] - spent[a], 2),
                     "minimizations": count[a], "signatures": len(found),
                     "mean_saved_events": round(sum(len(d["trace"]["events"]) for d in found) / len(found), 1)
                     if found else 0.0}
    e500 = [d["shape"] for d in doc["divergences"] if d["arch"] == "e500" and d["class"] == "missed-invalidation"]
    return {"command": f"memslot-fuzz run --arch all --max-time {args.max_time:g} --seed {args.seed}",
            "exit": code, "wall_seconds": round(wall, 1), "arches": arches,
            "fuzz_seconds_min": min(a["fuzz_seconds"] for a in arches.values()),
            "fuzz_seconds_max": max(a["fuzz_seconds"] for a in arches.values()),
            "e500_missed_invalidation": sorted(e500)}


def jobs(args, root: Path) -> dict:
    """--jobs 1 and --jobs 2 alternately, --repeat times each; the best run of each counts
    (the least disturbed: this machine is shared).  cpu_seconds is what the run and its
    workers got of the CPUs: on 2 cores a --jobs 2 run that gets less than 2 CPU-seconds per
    second is sharing them with something else."""
    runs: dict[str, list[dict]] = {"1": [], "2": []}
    for _ in range(args.repeat):
        for n in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                rep = Path(tmp) / "report.json"
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.monotonic()
                subprocess.run([sys.executable, "-m", "fuzz.cli", "run", "--arch", "all", "--max-time",
                                str(args.jobs_time), "--seed", str(args.seed), "--quiet", "--jobs", str(n),
                                "--out", str(Path(tmp) / "out"), "--report", str(rep)],
                               cwd=root, stdout=subprocess.DEVNULL, check=False)
                wall = time.monotonic() - t0
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                doc = json.loads(rep.read_text())
            ev = doc["totals"]["events"]
            cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            runs[str(n)].append({"events": ev, "traces": doc["totals"]["traces"], "wall_seconds": round(wall, 1),
                                 "cpu_seconds": round(cpu, 1), "events_per_second": round(ev / wall),
                                 "events_per_cpu_second": round(ev / cpu) if cpu else None,
                                 "signatures": len(doc["divergences"])})
    out: dict = {"runs": runs}
    for n in ("1", "2"):
        out[n] = max(runs[n], key=lambda r: r["events_per_second"])
    out["ratio_2_over_1"] = round(out["2"]["events_per_second"] / out["1"]["events_per_second"], 2)
    out["load_average_after"] = os.getloadavg()[0]
    out["command"] = f"memslot-fuzz run --arch all --max-time {args.jobs_time:g} --seed {args.seed} --jobs N"
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-time", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs-time", type=float, default=40.0, help="--max-time of the --jobs 1/2 runs (0: skip)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each of --jobs 1 and 2 (the best counts)")
    ap.add_argument("--skip-main", action="store_true")
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                    help="the checkout to measure (default: this one)")
    args = ap.parse_args()
    root = args.root.resolve()
    sys.path.insert(0, str(root))
    sys.argv[0] = "memslot-fuzz"
    doc: dict = {"root": str(root)}
    try:
        doc["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                       text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, OSError):
        doc["commit"] = None
    if not args.skip_main:
        doc["main_job"] = main_job(args, root)
    if args.jobs_time > 0:
        doc["jobs"] = jobs(args, root)
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()

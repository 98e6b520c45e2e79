#!/usr/bin/env python3
"""Benchmark: the atheris engine inside the libFuzzer loop, against the random engine in the
same time (issue 10, goal 2).  Prints one JSON object; figures depend on the machine and on
what else runs, so every ratio is taken between figures measured in this same run, and nothing
is asserted.

    .venv/bin/python bench/atheris_speed.py [--seconds 30] [--arch x86-shadow ...] \
        [--instrument models imports all none] [--trace-cmp off|on|both] [--runs 1]

Per architecture (v5.12 vs v5.13, RISC-V v5.17 vs v6.19), alternately:
* atheris, once per `--instrument` mode (fuzz.engines.atheris_engine.run_atheris_stats, one job,
  warm-started from corpus/seeds as `run --engine atheris` is, known divergences left to the
  launcher): the events the target ran and its own loop seconds (its stats lines: events since
  the loop started, libFuzzer's corpus replay and the mutator included), traces, and the
  distinct signatures met (saved or left for minimization);
* the random engine for the same fuzzing seconds (fuzz.engines.random_engine.run_job), with
  minimization off (minimize_budget 0: a signature is saved as found), so both columns are
  fuzzing only: events/s and distinct signatures.
`--runs K` repeats each pair K times, run i with seed i (the random engine's seed, libFuzzer's
-seed): one run of each engine is one sample of what it finds, and a fixed random seed finds
the same rare signatures every time (seed 1 meets arm64's three new-side wrong-young shapes
between its 10,000th and 20,500th trace), so a signature counts as found by one engine more
than the other only over several runs.  Per engine row: the mean events/s and distinct
signatures over the runs, and per run.
`--trace-cmp` (default on, the engine's default): atheris' comparison tracing
(TargetConfig.trace_cmp) on, off, or both, each a row of its own ("atheris_models" and
"atheris_models-cmp").  `ratio` is atheris events/s over random events/s; `found_vs_random`
lists, per row, each signature random found in more runs than atheris did ("random_more",
with both counts) and how many atheris found in more runs than random ("atheris_more").
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fuzz.engines.atheris_engine import INSTRUMENT_MODES, TargetConfig, run_atheris_stats   # noqa: E402
from fuzz.engines.generate import GenConfig                   # noqa: E402
from fuzz.engines.random_engine import Job, run_job           # noqa: E402
from fuzz.runner import Side                                   # noqa: E402
from impls import registry                                     # noqa: E402
from oracles.triage import load_known                          # noqa: E402


def atheris_once(arch: str, old: str, new: str, seconds: float, instrument: str, trace_cmp: bool,
                 seed: int = 1) -> dict:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.process_time()
        run = run_atheris_stats(arch, old, new, seconds, Path(out), None, 1, [f"-seed={seed}"],
                                seed_dirs=[ROOT / "corpus" / "seeds"],
                                save_known=True, minimize_seconds=0.0, instrument=instrument,
                                trace_cmp=trace_cmp)
        sigs = set(run.signatures.values()) | {s for _, s in run.pending}
        loop = run.events / run.events_per_second if run.events_per_second else 0.0
        return {"events": run.events, "traces": run.execs, "wall_seconds": round(run.seconds, 2),
                "loop_seconds": round(loop, 2), "events_per_second": round(run.events_per_second),
                "launches": run.launches, "signatures": sorted(sigs),
                "parent_cpu_seconds": round(time.process_time() - t0, 2)}


def random_once(arch: str, old: str, new: str, seconds: float, known, seed: int = 1) -> dict:
    o, n = Side(old, registry.resolve(arch, old)), Side(new, registry.resolve(arch, new))
    with tempfile.TemporaryDirectory() as out:
        job = Job(arch, o, n, seconds, seed, Path(out),
                  GenConfig(address_space_num=o.cls.address_space_num, x86_shadow_paging=arch.startswith("x86")),
                  minimize_seconds=0.0, minimize_budget=0.0)
        res = run_job(job, known)
        return {"events": res.events, "traces": res.traces, "fuzz_seconds": round(res.fuzz_seconds, 2),
                "events_per_second": round(res.events / res.fuzz_seconds) if res.fuzz_seconds else 0,
                "signatures": sorted({d.signature for d in res.divergences})}


def summary(runs: list[dict]) -> dict:
    """An engine's row: means over its runs, each run (with its distinct count), and in how
    many runs each signature was met."""
    found: dict[str, int] = {}
    for r in runs:
        for sig in r["signatures"]:
            found[sig] = found.get(sig, 0) + 1
        r["distinct"] = len(r.pop("signatures"))
    return {"events_per_second": round(sum(r["events_per_second"] for r in runs) / len(runs)),
            "distinct": round(sum(r["distinct"] for r in runs) / len(runs), 1),
            "distinct_all_runs": len(found), "runs": runs, "found_in_runs": found}


def compare(rnd: dict, ath: dict) -> dict:
    keys = set(rnd["found_in_runs"]) | set(ath["found_in_runs"])
    r, a = (lambda k: rnd["found_in_runs"].get(k, 0)), (lambda k: ath["found_in_runs"].get(k, 0))
    return {"random_more": {k: f"{r(k)} against {a(k)}" for k in sorted(keys) if r(k) > a(k)},
            "atheris_more": sum(1 for k in keys if a(k) > r(k))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--arch", nargs="*", default=None)
    # default: the engine's own default scope, so the bench measures what `run --engine atheris` runs
    ap.add_argument("--instrument", nargs="*", default=[TargetConfig.instrument], choices=list(INSTRUMENT_MODES))
    ap.add_argument("--trace-cmp", choices=("off", "on", "both"),
                    default="on" if TargetConfig.trace_cmp else "off")
    ap.add_argument("--runs", type=int, default=1)
    args = ap.parse_args()
    cmps = {"off": [False], "on": [True], "both": [False, True]}[args.trace_cmp]
    rows = [(m, c) for m in args.instrument for c in cmps]
    known = load_known()
    out = {"seconds": args.seconds, "runs": args.runs, "arches": {}}
    for arch in args.arch or registry.implemented_arches():
        old, new = registry.default_pair(arch)
        runs: dict[str, list[dict]] = {"random": []}
        for seed in range(1, args.runs + 1):        # alternately, so each run shares its conditions
            runs["random"].append(random_once(arch, old, new, args.seconds, known, seed))
            for mode, cmp in rows:
                name = f"atheris_{mode}" + ("" if cmp else "-cmp")
                runs.setdefault(name, []).append(atheris_once(arch, old, new, args.seconds, mode, cmp, seed))
        row = {"versions": f"{old}..{new}"} | {name: summary(rs) for name, rs in runs.items()}
        for name in runs:
            if name != "random":
                rnd, a = row["random"], row[name]
                a["ratio"] = round(a["events_per_second"] / rnd["events_per_second"], 3) if rnd["events_per_second"] else None
                a["found_vs_random"] = compare(rnd, a)
        out["arches"][arch] = row
        print(json.dumps({arch: {k: {kk: vv for kk, vv in v.items() if kk not in ("runs", "found_in_runs")}
                                 if isinstance(v, dict) else v for k, v in row.items()}}), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

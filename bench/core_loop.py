#!/usr/bin/env python3
"""Benchmark: events/s of the core loop (fuzz.runner.run_trace: both models, their snapshots,
the reference and the comparison, one task) per architecture, and what it finds (issue 10,
goal 1).  Prints one JSON object; figures depend on the machine and on what else runs, so
every ratio is taken between figures measured in this same run, and nothing is asserted.

    .venv/bin/python bench/core_loop.py [--traces 300] [--seed 1] [--repeat 3] \
        [--baseline COMMIT] [--arch x86-shadow ...]

Per architecture: a fixed batch of traces (fuzz.engines.generate with RandomSource(seed), `--traces`
of them, the GenConfig the `run` command uses: the arch's address spaces, sync_page on x86),
run through v5.12 vs v5.13 with the known list.  Timed: the batch, the minimum over
`--repeat` passes (the least disturbed one), in wall-clock and in this process's CPU time.  Findings, from one untimed pass: the distinct
signatures, and a digest of every divergence of every trace (index, signature, event index,
detail, known) and of every observation both sides made (Observation.to_json), so equal
digests mean the same findings reached the same way.

`--baseline COMMIT` extracts that commit's tree (git archive, into a temporary directory; the
working tree and the repository are not touched) and measures it with this same script in a
subprocess, arch by arch alternating with the working tree, so "before" and "after" share one
run's conditions.  The JSON then carries both, their ratio, and whether the findings agree.
bench/results/core-loop-before.json / core-loop-after.json keep the output.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = Path(os.environ.get("CORE_LOOP_ROOT") or HERE.parent.parent)
sys.path.insert(0, str(ROOT))

from fuzz.engines.generate import GenConfig, RandomSource, generate   # noqa: E402
from fuzz.runner import Side, run_trace                       # noqa: E402
from impls import registry                                    # noqa: E402
from oracles.triage import load_known                         # noqa: E402

OLD, NEW = "v5.12", "v5.13"


def batch(arch: str, seed: int, n: int) -> tuple[Side, Side, list]:
    old, new = (Side(v, registry.resolve(arch, v)) for v in (OLD, NEW))
    cfg = GenConfig(address_space_num=old.cls.address_space_num, x86_shadow_paging=arch.startswith("x86"))
    rng = random.Random(seed)
    return old, new, [generate(RandomSource(rng), cfg) for _ in range(n)]


def measure(arch: str, seed: int, n: int, repeat: int) -> dict:
    known = load_known()
    old, new, traces = batch(arch, seed, n)
    best = best_cpu = None
    events = 0
    for _ in range(repeat):
        events = 0
        t0, c0 = time.perf_counter(), time.process_time()
        for tr in traces:
            events += run_trace(tr, arch, old, new, known).events
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        best = dt if best is None else min(best, dt)
        best_cpu = dc if best_cpu is None else min(best_cpu, dc)
    sigs: set[str] = set()
    h_div, h_obs = hashlib.sha256(), hashlib.sha256()
    for i, tr in enumerate(traces):
        r = run_trace(tr, arch, old, new, known, keep_observations=True)
        for d in r.divergences:
            sigs.add(d.signature)
            h_div.update(json.dumps([i, d.signature, d.event_index, d.detail, d.known]).encode())
        for o, nw in r.observations:
            h_obs.update(json.dumps([o.to_json(), nw.to_json()], sort_keys=True).encode())
    return {"events": events, "seconds": round(best, 4), "events_per_s": round(events / best),
            "events_per_cpu_s": round(events / max(best_cpu, 1e-9)),
            "signatures": sorted(sigs), "divergence_digest": h_div.hexdigest()[:16],
            "observation_digest": h_obs.hexdigest()[:16]}


def commit_of(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--arch", action="append", help="default: every implemented arch")
    ap.add_argument("--baseline", help="a commit to measure alongside the working tree")
    ap.add_argument("--one", help=argparse.SUPPRESS)    # worker mode: one arch, JSON on stdout
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.seed, args.traces, args.repeat)))
        return
    arches = args.arch or registry.implemented_arches()
    out: dict = {"commit": commit_of(ROOT), "command": " ".join(["bench/core_loop.py"] + sys.argv[1:]),
                 "old": OLD, "new": NEW, "seed": args.seed, "traces": args.traces,
                 "repeat": args.repeat, "arches": {}}
    base_dir = None
    if args.baseline:
        base_dir = tempfile.TemporaryDirectory(prefix="core-loop-base-")
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", base_dir.name], input=archive, check=True)
        out["baseline"] = args.baseline
    total = {"after": [0, 0.0], "before": [0, 0.0]}
    for arch in arches:
        after = measure(arch, args.seed, args.traces, args.repeat)
        entry = {"after" if base_dir else "run": after}
        total["after"][0] += after["events"]
        total["after"][1] += after["seconds"]
        if base_dir:
            env = dict(os.environ, CORE_LOOP_ROOT=base_dir.name, PYTHONHASHSEED=os.environ.get("PYTHONHASHSEED", "0"))
            proc = subprocess.run([sys.executable, str(HERE), "--one", arch, "--seed", str(args.seed),
                                   "--traces", str(args.traces), "--repeat", str(args.repeat)],
                                  env=env, check=True, capture_output=True, text=True, cwd=base_dir.name)
            before = json.loads(proc.stdout)
            entry["before"] = before
            entry["speedup"] = round(after["events_per_s"] / before["events_per_s"], 2)
            entry["speedup_cpu"] = round(after["events_per_cpu_s"] / before["events_per_cpu_s"], 2)
            entry["same_signatures"] = before["signatures"] == after["signatures"]
            entry["same_divergences"] = before["divergence_digest"] == after["divergence_digest"]
            entry["same_observations"] = before["observation_digest"] == after["observation_digest"]
            total["before"][0] += before["events"]
            total["before"][1] += before["seconds"]
        out["arches"][arch] = entry
        print(f"{arch}: {json.dumps({k: v for k, v in entry.items() if not isinstance(v, dict)})}"
              f" {after['events_per_s']} ev/s", file=sys.stderr)
    out["all_events_per_s"] = {"after" if base_dir else "run": round(total["after"][0] / total["after"][1])}
    if base_dir:
        out["all_events_per_s"]["before"] = round(total["before"][0] / total["before"][1])
        out["all_speedup"] = round(out["all_events_per_s"]["after"] / out["all_events_per_s"]["before"], 2)
        out["speedup_min"] = min(e["speedup"] for e in out["arches"].values())
        out["speedup_cpu_min"] = min(e["speedup_cpu"] for e in out["arches"].values())
        base_dir.cleanup()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

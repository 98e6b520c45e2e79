#!/usr/bin/env python3
"""Benchmark: the `--profile large-vm` generator (issue 10, goal 4): events/s of its traces
through both sides and the oracle, and the per-event cost as the memslot count grows.  Prints
one JSON object; figures depend on the machine and on what else runs, so every ratio is taken
between figures measured in this same run, and nothing is asserted.

    .venv/bin/python bench/large_vm.py [--traces 3] [--seed 1] [--arch x86-tdp ...] \
        [--baseline COMMIT]

* "profile": --traces traces of the profile as `run --profile large-vm` makes them (400
  memslots or the arch's limit, a 1 TiB guest in 1 GiB host pages, 5,000-10,000 events), run
  as the engine runs them (run_trace): events, seconds, events/s; generation and the
  well-formedness check timed apart.
* "memslots": the same profile with 25 / 50 / 100 / 200 / 400 slots and --events events
  per trace (same seed): CPU microseconds per event (best of --repeat), and the growth from the fewest to the most
  slots next to the growth of the slot count.  The kernel's own walk is linear in the slots
  in both versions compared: v5.12's per-arch hva handlers and v5.13's __kvm_handle_hva_range
  both loop over every memslot of every address space for each notifier event (the interval
  tree arrives in v5.17), so a per-event cost that grows less than the slot count grows no
  faster than the kernel's walk.
* "digest": of every divergence and every observation of both sides over all those traces,
  so two trees that find the same the same way show the same digest.

`--baseline COMMIT` extracts that commit's tree (git archive into a temporary directory; the
working tree and the repository are untouched) and runs the same traces there, in a
subprocess of this script, arch by arch after the working tree: the traces are generated here
once and handed over as JSON, so both trees run exactly the same events.  Each arch then
carries "before", the ratios of events/s (wall and CPU) and whether the digests agree.
bench/results/large_vm.json keeps the output.
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
ROOT = Path(os.environ.get("LARGE_VM_ROOT") or HERE.parent.parent)
sys.path.insert(0, str(ROOT))

from fuzz.runner import Side, run_trace                             # noqa: E402
from impls import registry                                          # noqa: E402
from oracles.triage import load_known                               # noqa: E402

try:                                                                # the layout since cb6b1f0
    from language.trace import FaultBegin, SetMemoryRegion, dumps, loads    # noqa: E402
except ImportError:                                                 # older trees (--baseline)
    from fuzz.trace import FaultBegin, SetMemoryRegion, dumps, loads        # noqa: E402

OLD, NEW = "v5.12", "v5.13"


def sides(arch: str) -> tuple[Side, Side]:
    return tuple(Side(v, registry.resolve(arch, v)) for v in (OLD, NEW))


def config(arch: str, old: Side, **kw):
    from fuzz.engines.generate import profile_config
    return profile_config("large-vm", address_space_num=old.cls.address_space_num,
                          x86_shadow_paging=arch.startswith("x86"), max_slots=old.cls.user_mem_slots, **kw)


def make_traces(arch: str, args) -> tuple[dict, list, dict]:
    """The profile's traces and the memslot-count traces of one arch, and generation figures."""
    from fuzz.engines.generate import RandomSource, generate
    from language.wellformed import check_well_formed
    old, _ = sides(arch)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    traces = [generate(RandomSource(rng), config(arch, old)) for _ in range(args.traces)]
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    for tr in traces:
        check_well_formed(tr)
    t_wf = time.perf_counter() - t0
    events = sum(len(tr) for tr in traces)
    first = traces[0]
    layout = first[1:first.index(next(e for e in first[1:] if not isinstance(e, SetMemoryRegion)))]
    info = {"generate_events_per_second": round(events / t_gen),
            "wellformed_events_per_second": round(events / t_wf),
            "shape_of_first": {"events": len(first), "layout_memslots": len(layout),
                               "memslot_updates_after": sum(isinstance(e, SetMemoryRegion) for e in first) - len(layout),
                               "faults": sum(isinstance(e, FaultBegin) for e in first),
                               "guest_host_map": {"bytes": first[0].size, "page_size": first[0].page_size}}}
    by_slots = {n: generate(RandomSource(random.Random(args.seed)), config(arch, old, slots=n, max_events=args.events))
                for n in args.slots}
    return info, traces, by_slots


def measure(arch: str, traces: list, by_slots: dict, repeat: int) -> dict:
    """Run the traces in this process's tree: the profile's events/s, the per-event cost per
    memslot count, and the digest of what both sides and the oracle made of them."""
    known = load_known()
    old, new = sides(arch)
    t0, c0 = time.perf_counter(), time.process_time()
    events = sum(run_trace(tr, arch, old, new, known).events for tr in traces)
    t_run, c_run = time.perf_counter() - t0, time.process_time() - c0
    profile = {"traces": len(traces), "events": events, "run_seconds": round(t_run, 2),
               "cpu_seconds": round(c_run, 2), "events_per_second": round(events / t_run),
               "events_per_cpu_second": round(events / c_run)}
    slots = {}
    for n, tr in by_slots.items():
        best = float("inf")
        for _ in range(repeat):
            c0 = time.process_time()
            r = run_trace(tr, arch, old, new, known)
            best = min(best, time.process_time() - c0)
        slots[str(n)] = {"events": r.events, "memslots": sum(isinstance(e, SetMemoryRegion) for e in tr[:n + 1]),
                         "cpu_us_per_event": round(best / r.events * 1e6, 1)}
    lo, hi = slots[str(min(by_slots))], slots[str(max(by_slots))]
    slots["growth"] = {"slots": round(hi["memslots"] / lo["memslots"], 1),
                       "cpu_us_per_event": round(hi["cpu_us_per_event"] / lo["cpu_us_per_event"], 2)}
    h_div, h_obs = hashlib.sha256(), hashlib.sha256()
    for i, tr in enumerate(list(traces) + list(by_slots.values())):
        r = run_trace(tr, arch, old, new, known, keep_observations=True)
        for d in r.divergences:
            h_div.update(json.dumps([i, d.signature, d.event_index, d.detail, d.known]).encode())
        for o, nw in r.observations:
            h_obs.update(json.dumps([o.to_json(), nw.to_json()], sort_keys=True).encode())
    return {"profile": profile, "memslots": slots,
            "digest": {"divergences": h_div.hexdigest()[:16], "observations": h_obs.hexdigest()[:16]}}


def commit_of(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", type=int, default=3)
    ap.add_argument("--events", type=int, default=3000, help="--max-events of the memslot-count runs")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--slots", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    ap.add_argument("--arch", nargs="+", default=["x86-tdp", "arm64", "ppc-hv-radix", "e500"])
    ap.add_argument("--baseline", help="a commit to run the same traces on, alongside the working tree")
    ap.add_argument("--one", help=argparse.SUPPRESS)       # worker mode: ARCH, traces from --dir
    ap.add_argument("--dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        d = Path(args.dir)
        traces = [loads(p.read_text()) for p in sorted(d.glob("profile-*.json"))]
        by_slots = {int(p.stem.split("-")[1]): loads(p.read_text())
                    for p in sorted(d.glob("slots-*.json"), key=lambda p: int(p.stem.split("-")[1]))}
        print(json.dumps(measure(args.one, traces, by_slots, args.repeat)))
        return
    doc = {"commit": commit_of(ROOT), "command": "bench/large_vm.py " + " ".join(sys.argv[1:]),
           "old": OLD, "new": NEW, "arches": {}}
    base_dir = None
    if args.baseline:
        base_dir = tempfile.TemporaryDirectory(prefix="large-vm-base-")
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", base_dir.name], input=archive, check=True)
        doc["baseline"] = args.baseline
    for arch in args.arch:
        info, traces, by_slots = make_traces(arch, args)
        after = measure(arch, traces, by_slots, args.repeat)
        after["profile"].update(info)
        entry = {"after" if base_dir else "run": after}
        if base_dir:
            with tempfile.TemporaryDirectory(prefix="large-vm-traces-") as tdir:
                for i, tr in enumerate(traces):
                    Path(tdir, f"profile-{i:03d}.json").write_text(dumps(tr))
                for n, tr in by_slots.items():
                    Path(tdir, f"slots-{n}.json").write_text(dumps(tr))
                env = dict(os.environ, LARGE_VM_ROOT=base_dir.name)
                proc = subprocess.run([sys.executable, str(HERE), "--one", arch, "--dir", tdir,
                                       "--repeat", str(args.repeat)],
                                      env=env, check=True, capture_output=True, text=True, cwd=base_dir.name)
            before = json.loads(proc.stdout)
            entry["before"] = before
            pa, pb = after["profile"], before["profile"]
            entry["speedup"] = round(pa["events_per_second"] / pb["events_per_second"], 2)
            entry["speedup_cpu"] = round(pa["events_per_cpu_second"] / pb["events_per_cpu_second"], 2)
            entry["same_digests"] = before["digest"] == after["digest"]
        doc["arches"][arch] = entry
        print(f"{arch}: {after['profile']['events_per_second']} ev/s "
              f"{json.dumps({k: v for k, v in entry.items() if not isinstance(v, dict)})}", file=sys.stderr)
    key = "after" if base_dir else "run"
    doc["events_per_second_min"] = min(a[key]["profile"]["events_per_second"] for a in doc["arches"].values())
    doc["events_per_cpu_second_min"] = min(a[key]["profile"]["events_per_cpu_second"] for a in doc["arches"].values())
    if base_dir:
        doc["before_events_per_second_min"] = min(a["before"]["profile"]["events_per_second"]
                                                  for a in doc["arches"].values())
        doc["speedup_min"] = min(a["speedup"] for a in doc["arches"].values())
        doc["all_same_digests"] = all(a["same_digests"] for a in doc["arches"].values())
        base_dir.cleanup()
    doc["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()

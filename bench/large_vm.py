#!/usr/bin/env python3
"""Benchmark: the `--profile large-vm` generator (issue 10, goal 4): events/s of its traces
through both sides and the oracle, and the per-event cost as the memslot count grows.  Prints
one JSON object; figures depend on the machine and on what else runs, so every ratio is taken
between figures measured in this same run, and nothing is asserted.

    .venv/bin/python bench/large_vm.py [--traces 3] [--seed 1] [--arch x86-tdp ...]

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
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.engines.generate import RandomSource, generate, profile_config    # noqa: E402
from fuzz.runner import Side, run_trace                             # noqa: E402
from language.trace import FaultBegin, HostMap, SetMemoryRegion         # noqa: E402
from language.wellformed import check_well_formed                       # noqa: E402
from impls import registry                                          # noqa: E402
from oracles.triage import load_known                               # noqa: E402


def config(arch: str, old: Side, **kw):
    return profile_config("large-vm", address_space_num=old.cls.address_space_num,
                          x86_shadow_paging=arch.startswith("x86"), max_slots=old.cls.user_mem_slots, **kw)


def profile(arch, old, new, known, args) -> dict:
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    traces = [generate(RandomSource(rng), config(arch, old)) for _ in range(args.traces)]
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    for tr in traces:
        check_well_formed(tr)
    t_wf = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), time.process_time()
    events = sum(run_trace(tr, arch, old, new, known).events for tr in traces)
    t_run, c_run = time.perf_counter() - t0, time.process_time() - c0
    first = traces[0]
    layout = [e for e in first[1:first.index(next(e for e in first[1:] if not isinstance(e, SetMemoryRegion)))]]
    return {"traces": len(traces), "events": events, "run_seconds": round(t_run, 2),
            "cpu_seconds": round(c_run, 2), "events_per_second": round(events / t_run),
            "events_per_cpu_second": round(events / c_run),
            "generate_events_per_second": round(events / t_gen),
            "wellformed_events_per_second": round(events / t_wf),
            "shape_of_first": {"events": len(first), "layout_memslots": len(layout),
                               "memslot_updates_after": sum(isinstance(e, SetMemoryRegion) for e in first) - len(layout),
                               "faults": sum(isinstance(e, FaultBegin) for e in first),
                               "guest_host_map": {"bytes": first[0].size, "page_size": first[0].page_size}}}


def memslots(arch, old, new, known, args) -> dict:
    out = {}
    for n in args.slots:
        cfg = config(arch, old, slots=n, max_events=args.events)
        tr = generate(RandomSource(random.Random(args.seed)), cfg)
        best = float("inf")
        for _ in range(args.repeat):
            t0 = time.process_time()
            r = run_trace(tr, arch, old, new, known)
            best = min(best, time.process_time() - t0)
        out[str(n)] = {"events": r.events, "memslots": sum(isinstance(e, SetMemoryRegion) for e in tr[:n + 1]),
                       "cpu_us_per_event": round(best / r.events * 1e6, 1)}
    lo, hi = out[str(args.slots[0])], out[str(args.slots[-1])]
    out["growth"] = {"slots": round(hi["memslots"] / lo["memslots"], 1),
                     "cpu_us_per_event": round(hi["cpu_us_per_event"] / lo["cpu_us_per_event"], 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", type=int, default=3)
    ap.add_argument("--events", type=int, default=3000, help="--max-events of the memslot-count runs")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--slots", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    ap.add_argument("--arch", nargs="+", default=["x86-tdp", "arm64", "ppc-hv-radix", "e500"])
    args = ap.parse_args()
    known = load_known()
    doc = {"command": "bench/large_vm.py " + " ".join(sys.argv[1:]), "old": "v5.12", "new": "v5.13",
           "arches": {}}
    for arch in args.arch:
        old, new = (Side(v, registry.resolve(arch, v)) for v in ("v5.12", "v5.13"))
        doc["arches"][arch] = {"profile": profile(arch, old, new, known, args),
                               "memslots": memslots(arch, old, new, known, args)}
    doc["events_per_second_min"] = min(a["profile"]["events_per_second"] for a in doc["arches"].values())
    doc["events_per_cpu_second_min"] = min(a["profile"]["events_per_cpu_second"] for a in doc["arches"].values())
    doc["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()

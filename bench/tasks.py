#!/usr/bin/env python3
"""Benchmark: what task mode costs, measured within one run (prints JSON).

* one_task_events_per_s: the default generator's one-task traces (v5.12 vs v5.13, x86-shadow),
  which take the atomic path: compare with the same figure from a checkout before task mode
  (`git stash; python bench/tasks.py; git stash pop`, or a worktree of the older commit).
* one_task_forced_task_mode_events_per_s: the same traces forced through the scheduler (every
  event a task's, default schedule): the price the atomic path avoids.
* three_task_schedules_per_s: one fixed three-task program (an mm task with a nested
  invalidation, the memslot ioctl, a vCPU) run under N different PCT schedules on series-v1.
* exhaustive_*: every schedule (fuzz/engines/explore.py) of a smaller three-task program (the mm maps
  and invalidates, the ioctl adds a slot, a vCPU faults: 6 events) on v5.13 vs series-v1, for
  each preemption bound K = 0 .. --preemptions: how many schedules (each run on both sides and
  compared), and schedules/s over all of them.

    .venv/bin/python bench/tasks.py [--traces 300] [--schedules 300] [--seed 1] [--preemptions 2]
"""
import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.engines.explore import explore                                 # noqa: E402
from fuzz.engines.generate import GenConfig, RandomSource, generate      # noqa: E402
from fuzz.runner import Side, run_trace                          # noqa: E402
from language.trace import (FaultBegin, FaultCommit, HostMap, InvalidateRangeEnd,   # noqa: E402
                        InvalidateRangeStart, Schedule, SetMemoryRegion)
from impls import registry                                       # noqa: E402
from oracles.triage import load_known                            # noqa: E402

P, H = 4096, 0x7f0000000000
SMALL = [HostMap(H, 16 * P, 0x1000, task="mm0"), SetMemoryRegion(0, 0, 0, 0x100000, 16 * P, H, task="ioctl"),
         FaultBegin(1, 0, 0x100, task="vcpu0"), FaultCommit(1, task="vcpu0"),
         InvalidateRangeStart(H, H + 4 * P, task="mm0"), InvalidateRangeEnd(H, H + 4 * P, task="mm0")]


def side(arch, v):
    return Side(v, registry.resolve(arch, v))


def rate(traces, arch, old, new, known):
    t = time.perf_counter()
    n = 0
    for tr in traces:
        n += run_trace(tr, arch, old, new, known).events
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", type=int, default=300)
    ap.add_argument("--schedules", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--preemptions", type=int, default=2, help="exhaustive: bounds 0..K (K=2 takes about a minute)")
    args = ap.parse_args()
    known = load_known()
    arch = "x86-shadow"
    rng = random.Random(args.seed)
    traces = [generate(RandomSource(rng), GenConfig()) for _ in range(args.traces)]
    old, new = side(arch, "v5.12"), side(arch, "v5.13")
    one = rate(traces, arch, old, new, known)
    forced = [[Schedule()] + tr for tr in traces if not any(isinstance(e, Schedule) for e in tr)]
    forced_rate = rate(forced, arch, old, new, known)
    program = [HostMap(H, 16 * P, 0x1000, task="mm0"),
               SetMemoryRegion(0, 0, 0, 0x100000, 16 * P, H, task="ioctl"),
               FaultBegin(1, 0, 0x100, task="vcpu0"), FaultCommit(1, task="vcpu0"),
               InvalidateRangeStart(H, H + 4 * P, task="mm0"),
               SetMemoryRegion(0, 1, 0, 0x200000, 4 * P, H + 0x100000, task="ioctl"),
               FaultBegin(2, 0, 0x101, task="vcpu0"), FaultCommit(2, task="vcpu0"),
               InvalidateRangeStart(H, H + 2 * P, task="mm0"), InvalidateRangeEnd(H, H + 2 * P, task="mm0"),
               InvalidateRangeEnd(H, H + 4 * P, task="mm0")]
    o, n = side(arch, "v5.13"), side(arch, "series-v1")
    sigs = set()
    t = time.perf_counter()
    for k in range(args.schedules):
        for d in run_trace([Schedule(pct=(args.seed * 100003 + k, 3))] + program, arch, o, n, known).divergences:
            sigs.add(d.signature.split("|", 4)[4])
    sched_rate = args.schedules / (time.perf_counter() - t)
    counts, found, total, spent = {}, set(), 0, 0.0
    for k in range(args.preemptions + 1):
        ex = explore(SMALL, arch, o, n, known, k)
        counts[str(k)] = len(ex.schedules) if ex.complete else ex.status
        total, spent = total + len(ex.schedules), spent + ex.seconds
        found |= {d.signature.split("|", 4)[4] for d, _ in ex.findings()}
    print(json.dumps({
        "arch": arch, "traces": len(traces), "seed": args.seed,
        "one_task_events_per_s": round(one),
        "one_task_forced_task_mode_events_per_s": round(forced_rate),
        "atomic_over_task_mode_ratio": round(one / forced_rate, 2),
        "three_task_schedules_per_s": round(sched_rate, 1),
        "three_task_distinct_findings": sorted(sigs),
        "exhaustive_program_events": len(SMALL),
        "exhaustive_schedules_by_preemptions": counts,
        "exhaustive_schedules_per_s": round(total / spent, 1),
        "exhaustive_distinct_findings": sorted(found),
    }, indent=2))


if __name__ == "__main__":
    main()

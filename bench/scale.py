#!/usr/bin/env python3
"""Benchmark: how the per-event cost scales with the host mapping size and the memslot count
(issue 10, goals 3 and 4).  Prints one JSON object; figures depend on the machine and on what
else runs, so every ratio is taken between figures measured in this same run, and nothing is
asserted.

    .venv/bin/python bench/scale.py [--repeat 5] [--events 300] [--arch x86-shadow ...]

* "backing": one 512-page slot backed by 4K / 2M / 1G host pages, the same workload of
  notifier events, faults and accesses on it (one change_pte inside an invalidation, as KSM
  sends).  Per event: the whole trace's time over its events ("all"), and the workload alone
  ("workload": the time of the setup prefix run alone subtracted, over the workload events).
* "memslots": 1 / 10 / 100 / 500 slots of 512 pages each (2M backing), the same workload
  spread over them.
* "host_map": one host_map of 4 KiB, 2 MiB, 1 GiB and 16 TiB on a fresh model, then a lookup
  of its last page.  A size is not run when the sizes before it show the cost growing with the
  mapping and it would take more than --budget seconds (the old per-page table would need
  4 G entries for 16 TiB); the estimate is printed instead.

Each figure is the minimum over --repeat runs (the least disturbed one).  bench/results/ keeps
the output before (scale-before.json, at ed69521: a dict entry per 4K host page, an interval
tree of all memslots per notifier event) and after the issue 10 changes (scale-after.json).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.runner import Side, run_trace                     # noqa: E402
from language.trace import (ChangePte, ClearYoung, FaultBegin, FaultCommit, GuestAccess,  # noqa: E402
                        HostMap, InvalidateRangeEnd, InvalidateRangeStart, SetMemoryRegion,
                        TestYoung)
from language.wellformed import check_well_formed               # noqa: E402
from impls import registry                                  # noqa: E402
from oracles.triage import load_known                       # noqa: E402

P = 4096
M2 = 2 << 20
G1 = 1 << 30
HVA = 0x7f0000000000          # 1 GiB aligned
SLOT_PAGES = 512


def workload(rng: random.Random, slots: list[tuple[int, int]], n: int, with_change_pte: bool) -> list:
    """n events over the slots [(base_gfn, hva)]: faults, accesses, aging, invalidations."""
    out: list = []
    fid = 0
    pfn_new = 0x7000000
    while len(out) < n:
        base_gfn, hva = rng.choice(slots)
        page = rng.randrange(SLOT_PAGES)
        gfn, addr = base_gfn + page, hva + page * P
        kind = rng.randrange(6)
        if kind == 0:
            out += [FaultBegin(fid, 0, gfn, rng.random() < 0.5), FaultCommit(fid)]
            fid += 1
        elif kind == 1:
            out.append(GuestAccess(0, gfn, rng.random() < 0.5))
        elif kind == 2:
            out.append(ClearYoung(addr, addr + P))
        elif kind == 3:
            out.append(TestYoung(addr))
        elif kind == 4:
            out += [InvalidateRangeStart(addr, addr + P, True), InvalidateRangeEnd(addr, addr + P, True)]
        else:
            out += [FaultBegin(fid, 0, gfn, False), FaultCommit(fid), GuestAccess(0, gfn, False)]
            fid += 1
    out = out[:n]
    if with_change_pte:
        # KSM: an invalidation of one page, the new pte inside it, then its end
        base_gfn, hva = slots[0]
        addr = hva + 7 * P
        out[n // 2:n // 2] = [InvalidateRangeStart(addr, addr + P, True), ChangePte(addr, pfn_new, False),
                              InvalidateRangeEnd(addr, addr + P, True)]
    return out


def timed(events: list, arch: str, old: Side, new: Side, known, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        run_trace(events, arch, old, new, known)
        best = min(best, time.perf_counter() - t0)
    return best


def per_event(setup: list, work: list, arch: str, old: Side, new: Side, known, repeat: int) -> dict:
    check_well_formed(setup + work)
    t_setup = timed(setup, arch, old, new, known, repeat)
    t_all = timed(setup + work, arch, old, new, known, repeat)
    return {"all_us": round(t_all / len(setup + work) * 1e6, 1),
            "workload_us": round(max(t_all - t_setup, 0.0) / len(work) * 1e6, 1),
            "events": len(setup + work), "setup_events": len(setup)}


def backing(arch, old, new, known, args) -> dict:
    out = {}
    gfn0 = 0x40000              # 1 GiB aligned, like HVA
    for name, page_size in (("4K", P), ("2M", M2), ("1G", G1)):
        size = max(SLOT_PAGES * P, page_size)
        setup = [SetMemoryRegion(0, 0, 0, gfn0 * P, SLOT_PAGES * P, HVA),
                 HostMap(HVA, size, 0x100000, page_size, True)]
        work = workload(random.Random(args.seed), [(gfn0, HVA)], args.events, True)
        out[name] = per_event(setup, work, arch, old, new, known, args.repeat)
    base = out["4K"]
    out["ratio_1G_over_4K"] = {k: round(out["1G"][k] / base[k], 2) if base[k] else None
                               for k in ("all_us", "workload_us")}
    out["ratio_2M_over_4K"] = {k: round(out["2M"][k] / base[k], 2) if base[k] else None
                               for k in ("all_us", "workload_us")}
    return out


def memslots(arch, old, new, known, args) -> dict:
    out = {}
    for n in args.slots:
        if n > old.cls.user_mem_slots or n > new.cls.user_mem_slots:
            out[str(n)] = None
            continue
        layout = [(0x100000 + i * SLOT_PAGES, HVA + i * M2) for i in range(n)]
        setup = [SetMemoryRegion(0, i, 0, g * P, SLOT_PAGES * P, h) for i, (g, h) in enumerate(layout)]
        setup.append(HostMap(HVA, n * M2, 0x100000, M2, True))
        work = workload(random.Random(args.seed), layout, args.events, False)
        out[str(n)] = per_event(setup, work, arch, old, new, known, args.repeat)
    first = out[str(args.slots[0])]
    out["ratio_over_first"] = {k: {"all_us": round(v["all_us"] / first["all_us"], 2),
                                   "workload_us": round(v["workload_us"] / first["workload_us"], 2)
                                   if first["workload_us"] else None}
                               for k, v in out.items() if isinstance(v, dict) and k != "ratio_over_first"}
    return out


def host_map(arch, cls, args) -> dict:
    out = {}
    sizes = (("4K", P, P), ("2M", M2, M2), ("1G", G1, G1), ("16T", 16 << 40, G1))
    prev = None
    for name, size, page_size in sizes:
        if prev is not None:
            psize, pt = prev
            est = pt * size / psize
            if pt > 0.05 and est > args.budget:
                out[name] = {"s": None, "estimated_s": round(est, 1),
                             "why": f"not run: {pt:.3f} s for {psize:#x} bytes grows with the size"}
                prev = (size, est)
                continue
        best = float("inf")
        for _ in range(args.repeat):
            m = cls()
            t0 = time.perf_counter()
            m.host_map(HVA, size, 0x100000, page_size, True)
            pte = m.host.lookup(HVA + size - P)
            best = min(best, time.perf_counter() - t0)
            assert pte is not None and pte.pfn == 0x100000 + size // P - 1
            del m
        out[name] = {"s": best}
        prev = (size, best)
    t4k = out["4K"]["s"]
    out["ratio_16T_over_4K"] = (round(out["16T"]["s"] / t4k, 2) if out["16T"]["s"] is not None
                                else f"not run (estimated {out['16T']['estimated_s'] / t4k:.3g})")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", nargs="*", default=["x86-shadow", "x86-tdp"])
    ap.add_argument("--old", default="v5.12")
    ap.add_argument("--new", default="v5.13")
    ap.add_argument("--events", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--slots", type=int, nargs="*", default=[1, 10, 100, 500])
    ap.add_argument("--budget", type=float, default=30.0, help="longest host_map to attempt, seconds")
    ap.add_argument("--only", nargs="*", default=["backing", "memslots", "host_map"])
    args = ap.parse_args()
    known = load_known()
    result = {"old": args.old, "new": args.new, "events": args.events, "repeat": args.repeat, "arches": {}}
    for arch in args.arch:
        old, new = Side(args.old, registry.resolve(arch, args.old)), Side(args.new, registry.resolve(arch, args.new))
        r = {}
        if "backing" in args.only:
            r["backing"] = backing(arch, old, new, known, args)
        if "memslots" in args.only:
            r["memslots"] = memslots(arch, old, new, known, args)
        if "host_map" in args.only:
            r["host_map"] = host_map(arch, old.cls, args)
        result["arches"][arch] = r
        print(json.dumps({arch: r}), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

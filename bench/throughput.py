#!/usr/bin/env python3
"""Benchmark: events/s of the run engine per architecture (no minimization: a pre-generated
batch of traces is run through both sides and the oracle), and the cost of minimizing one
divergence.  Figures depend on the machine; they are printed, never asserted.

    .venv/bin/python bench/throughput.py [--traces 300] [--seed 1]
"""
import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzz.engines.random_engine import Job, minimized            # noqa: E402
from fuzz.engines.generate import GenConfig, RandomSource, generate   # noqa: E402
from fuzz.runner import Side, run_trace            # noqa: E402
from impls import registry                          # noqa: E402
from oracles.triage import load_known              # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--traces", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    known = load_known()
    print(f"{'arch':13s} {'events/s':>9s} {'traces/s':>9s} {'min. ms (median)':>17s}")
    for arch in registry.implemented_arches():
        old, new = (Side(v, registry.resolve(arch, v)) for v in ("v5.12", "v5.13"))
        cfg = GenConfig(address_space_num=old.cls.address_space_num, x86_shadow_paging=arch.startswith("x86"))
        rng = random.Random(args.seed)
        traces = [generate(RandomSource(rng), cfg) for _ in range(args.traces)]
        t0 = time.perf_counter()
        events = 0
        found = []
        for tr in traces:
            r = run_trace(tr, arch, old, new, known)
            events += r.events
            found += [(tr, d) for d in r.divergences[:1]]
        dt = time.perf_counter() - t0
        job = Job(arch, old, new, 1, 0, Path("/tmp"))
        costs = []
        for tr, d in found[:10]:
            t1 = time.perf_counter()
            minimized(tr[:d.event_index + 1], job, known, d, seconds=10)
            costs.append((time.perf_counter() - t1) * 1000)
        med = sorted(costs)[len(costs) // 2] if costs else 0.0
        print(f"{arch:13s} {events / dt:9.0f} {len(traces) / dt:9.0f} {med:17.1f}")


if __name__ == "__main__":
    main()

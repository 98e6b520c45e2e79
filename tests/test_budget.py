"""Fair budgets and the large-vm profile (issue 10, goals 4 and 5): minimization runs on its own
clock, so however slow it is every architecture gets its fuzzing window; once an arch's
minimization budget is spent a new signature is still saved (unminimized) before it is
reported; --jobs workers minimize a signature once between them; --max-traces stays a function
of the seed; the large-vm profile's traces are well formed and have the promised shape.
No timing is asserted: only what the loop's clocks decide."""
import json
import random
import time
from pathlib import Path

import pytest

from fuzz import corpus

from fuzz.engines import random_engine as engine
from fuzz.cli import main
from fuzz.engines.random_engine import Job, run_job
from fuzz.engines.generate import GIB, RandomSource, generate, profile_config
from fuzz.engines.parallel import run_parallel
from fuzz.runner import Side
from language.trace import FaultBegin, HostMap, SetMemoryRegion
from language.wellformed import check_well_formed
from impls import registry
from oracles.triage import load_known


def job(arch: str, tmp_path: Path, **kw) -> Job:
    old, new = (Side(v, registry.resolve(arch, v)) for v in ("v5.12", "v5.13"))
    return Job(arch, old, new, kw.pop("max_time", 0.6), 1, tmp_path / "out", **kw)


@pytest.fixture
def slow_minimizer(monkeypatch):
    """A minimizer that takes 0.1 s and returns its input: far slower than fuzzing."""
    calls = []

    def slow(events, job, known, d, seconds=None):
        calls.append(seconds)
        time.sleep(0.1)
        d.trace = events
        return d
    monkeypatch.setattr(engine, "minimized", slow)
    return calls


def test_slow_minimization_does_not_eat_the_fuzzing_window(tmp_path, slow_minimizer):
    known = load_known()
    for arch in ("e500", "arm64"):          # both find several signatures in their first traces
        res = run_job(job(arch, tmp_path, max_time=0.4, minimize_budget=100.0), known)
        assert res.stopped_by == "max-time"
        assert res.fuzz_seconds >= 0.4                      # the whole window went to fuzzing
        assert res.minimize_seconds > 0 and len(res.divergences) >= 2
        assert res.seconds == pytest.approx(res.fuzz_seconds + res.minimize_seconds)
    assert slow_minimizer and all(s is not None and s > 0 for s in slow_minimizer)


def test_spent_minimization_budget_saves_unminimized_before_reporting(tmp_path, slow_minimizer):
    known = load_known()
    told = []

    def progress(res, what):
        if what == "found":
            d = res.divergences[-1]
            assert res.saved[d.signature].is_file()         # on disk before it is reported
            told.append(d)

    res = run_job(job("e500", tmp_path, max_time=0.6, minimize_budget=0.15), known, progress)
    assert res.fuzz_seconds >= 0.6
    assert res.unminimized >= 1 and len(told) == len(res.divergences)
    assert len(slow_minimizer) < len(res.divergences)       # the rest were saved as found
    for d in res.divergences:                               # and every saved file replays as found
        entry = corpus.load(res.saved[d.signature])
        assert d.signature in entry.expect


def test_jobs_workers_minimize_each_signature_once(tmp_path, monkeypatch):
    log = tmp_path / "minimized.log"
    real = engine.minimized

    def logged(events, job, known, d, seconds=None):
        with open(log, "a") as f:               # the forked workers inherit this patch
            f.write(d.signature + "\n")
        return real(events, job, known, d, seconds)
    monkeypatch.setattr(engine, "minimized", logged)
    j = job("e500", tmp_path, max_time=60, max_traces=40, minimize_attempts=100)
    merged = run_parallel(j, 2, load_known(), quiet=True)
    assert merged.traces == 40 and merged.divergences
    lines = log.read_text().splitlines()
    assert len(lines) == len(set(lines)) == len(merged.divergences)    # never twice, never lost
    saved = list((tmp_path / "out" / "e500").glob("*.json"))
    assert len(saved) == len(merged.divergences)


def test_claim_is_first_come(tmp_path):
    j = job("mips", tmp_path, claims=tmp_path)
    assert engine.claim(j, "sig-a") and not engine.claim(j, "sig-a") and engine.claim(j, "sig-b")
    assert engine.claim(job("mips", tmp_path), "sig-a")          # without --jobs: always


def test_max_traces_findings_are_a_function_of_the_seed(tmp_path):
    sigs = []
    for name in ("a", "b"):
        rc = main(["run", "--arch", "e500", "--seed", "3", "--max-traces", "30", "--minimize-attempts", "100",
                   "--quiet", "--out", str(tmp_path / name), "--report", str(tmp_path / f"{name}.json")])
        assert rc == 0
        doc = json.loads((tmp_path / f"{name}.json").read_text())
        assert doc["totals"]["traces"] == 30
        sigs.append(sorted(d["signature"] for d in doc["divergences"]))
    assert sigs[0] and sigs[0] == sigs[1]


@pytest.mark.parametrize("arch", ["x86-tdp", "mips"])
def test_large_vm_profile_traces_are_well_formed_and_large(arch):
    cls = registry.resolve(arch, "v5.13")
    cfg = profile_config("large-vm", address_space_num=cls.address_space_num, max_slots=cls.user_mem_slots,
                         x86_shadow_paging=arch.startswith("x86"))
    assert cfg.max_events == 10_000
    for seed in range(2):
        tr = generate(RandomSource(random.Random(seed)), cfg)
        check_well_formed(tr)
        assert 5_000 <= len(tr) <= 10_000 + 8          # a budget of events, then the open ends close
        host = tr[0]
        assert isinstance(host, HostMap) and host.page_size == GIB and host.size == 1 << 40
        layout = []
        for ev in tr[1:]:
            if not isinstance(ev, SetMemoryRegion):
                break
            layout.append(ev)
        want = min(400, cls.user_mem_slots - 8)
        assert len(layout) == want and len({e.slot for e in layout}) == want
        # the slots tile the guest: contiguous in gfn and in hva, 2 MiB multiples, 1 TiB in all
        assert sum(e.memory_size for e in layout) == 1 << 40
        for a, b in zip(layout, layout[1:]):
            assert a.guest_phys_addr + a.memory_size == b.guest_phys_addr
            assert a.userspace_addr + a.memory_size == b.userspace_addr
            assert a.memory_size % (2 << 20) == 0
        faults = sum(isinstance(e, FaultBegin) for e in tr)
        assert 100 <= faults <= 2_000                       # hundreds


def test_run_with_large_vm_profile(tmp_path):
    rc = main(["run", "--arch", "ppc-hv-radix", "--profile", "large-vm", "--max-traces", "1", "--seed", "2",
               "--minimize-attempts", "20", "--quiet", "--out", str(tmp_path / "o"),
               "--report", str(tmp_path / "r.json")])
    assert rc in (0, 1)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["totals"]["traces"] == 1 and doc["totals"]["events"] >= 5_000


def test_profile_is_refused_by_engines_that_do_not_generate(tmp_path, capsys):
    rc = main(["run", "--arch", "mips", "--engine", "exhaustive", "--profile", "large-vm",
               "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "--profile" in capsys.readouterr().err


def test_jobs_results_reach_the_parent_for_composed_models(tmp_path):
    """RISC-V's versions are classes the registry composes at run time: a worker's result used to
    carry them and fail to pickle, so --jobs 2 reported 0 traces for riscv."""
    old, new = (Side(v, registry.resolve("riscv-sv39", v)) for v in ("v5.17", "v6.19"))
    j = Job("riscv-sv39", old, new, 60, 1, tmp_path / "out", profile_config("default", tasks=True),
            max_traces=10, minimize_attempts=20)
    merged = run_parallel(j, 2, load_known(), quiet=True)
    assert merged.traces == 10 and merged.events > 0 and merged.job is j

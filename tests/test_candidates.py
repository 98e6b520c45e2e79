"""A KVM developer's patch with an off-by-one in one arch's gfn handler is caught by the run
engine (well within a minute), minimized to a handful of events, and blamed on the patch."""
import pytest

from util import HVA, P, diverge, host, slot

from fuzz.engines.random_engine import Job, run_job
from language.trace import FaultBegin, FaultCommit, HostMap, InvalidateRangeEnd, InvalidateRangeStart
from fuzz.engines.generate import GenConfig
from fuzz.runner import Side
from impls import registry
from oracles.triage import load_known


def off_by_one(arch, version="v5.13"):
    """kvm_unmap_gfn_range of the arch's model of `version`, handed one gfn too many."""
    base = registry.resolve(arch, version)

    def kvm_unmap_gfn_range(self, range):
        range.end += 1
        return base.kvm_unmap_gfn_range(self, range)
    return type(f"OffByOne_{base.__name__}", (base,), {"kvm_unmap_gfn_range": kvm_unmap_gfn_range})


@pytest.mark.parametrize("arch", registry.implemented_arches())
def test_off_by_one_in_any_arch_handler_is_caught(arch, tmp_path):
    cand = off_by_one(arch)
    job = Job(arch, Side("v5.13", registry.resolve(arch, "v5.13")), Side("patch.py:OffByOne", cand),
              max_time=60, seed=1, out_dir=tmp_path,
              gen=GenConfig(address_space_num=cand.address_space_num, x86_shadow_paging=arch.startswith("x86")),
              minimize_seconds=5, stop_on_new=True)
    res = run_job(job, load_known())
    new = [d for d in res.divergences if not d.known]
    assert new, f"{arch}: the off-by-one was not caught"
    assert all(d.wrong_side in ("new", "both") for d in new)
    assert min(len(d.trace) for d in new) <= 8


def broken_retry(arch):
    """The arch's v5.13 model with a fault path that never retries (mmu_notifier_retry* gone)."""
    base = registry.resolve(arch, "v5.13")
    return type(f"NoRetry_{base.__name__}", (base,), {"fault_is_stale": lambda self, f: False})


@pytest.mark.parametrize("arch", registry.implemented_arches())
def test_a_broken_retry_check_is_not_hidden_by_the_known_list(arch):
    # the known list explains stale pfns after a bare change_pte; a fault that ignores a real
    # invalidation (the mm remaps the page under it) is something else and must come out NEW
    ev = [host(HVA, 16, 0x1000), slot(0, 0, 0x100, 4, HVA), FaultBegin(1, 0, 0x101),
          InvalidateRangeStart(HVA + P, HVA + 2 * P), HostMap(HVA + P, P, 0x9000, P, True),
          InvalidateRangeEnd(HVA + P, HVA + 2 * P), FaultCommit(1)]
    v513 = ("v5.13", registry.resolve(arch, "v5.13"))
    # the real fault path retries: against itself only shared, known behaviour shows
    assert all(d.wrong_side == "both" and d.known for d in diverge(arch, v513, v513, ev))
    ds = diverge(arch, v513, ("patch.py:NoRetry", broken_retry(arch)), ev)
    assert [(d.cls, d.wrong_side, d.shape, d.known) for d in ds if d.wrong_side != "both"] == [
        ("stale-mapping", "new", "fault-installed-stale-pfn", False)]


SAME_TRACES = 60


@pytest.mark.parametrize("arch, version", [(a, v) for a in registry.implemented_arches()
                                           for v in registry.versions_for(a)])
def test_a_patch_that_changes_nothing_is_never_blamed(arch, version):
    # A developer's model of a patch starts as a subclass of the version it changes.  Before the
    # patch changes anything, every divergence against that version is the version's own, on
    # both sides: the known list must explain it, also where an entry was written for the
    # version on one side of a pair (v6.19's elided clear_flush_young flush on x86 was NEW
    # against a v6.19-based patch, and so were its lockless aging's gfn sets on x86-tdp).
    import random
    from fuzz.engines.generate import RandomSource, generate
    from fuzz.runner import run_trace
    from fuzz.runner_tasks import needs_task_mode
    cls = registry.resolve(arch, version)
    same = type("Same", (cls,), {})
    known = load_known()
    cfg = GenConfig(address_space_num=cls.address_space_num, x86_shadow_paging=arch.startswith("x86"),
                    tasks=needs_task_mode([], cls, cls))
    src = RandomSource(random.Random(5))
    shown, blamed = set(), set()
    for _ in range(SAME_TRACES):
        for old, new in ((Side(version, cls), Side("patch.py:Same", same)),
                         (Side("patch.py:Same", same), Side(version, cls))):
            for d in run_trace(generate(src, cfg), arch, old, new, known).divergences:
                assert d.wrong_side == "both", d.signature       # the same code on both sides
                shown.add(d.signature)
                if not d.known:
                    blamed.add(d.signature)
    assert not blamed, sorted(blamed)

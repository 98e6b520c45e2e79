"""A KVM developer's patch with an off-by-one in one arch's gfn handler is caught by the run
engine (well within a minute), minimized to a handful of events, and blamed on the patch."""
import pytest

from fuzz.engine import Job, run_job
from fuzz.generate import GenConfig
from fuzz.runner import Side
from impls import registry
from oracles.triage import load_known


def off_by_one(arch):
    """kvm_unmap_gfn_range of the arch's v5.13 model, handed one gfn too many."""
    base = registry.resolve(arch, "v5.13")

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

"""The kernel's timeline after v5.15: v5.17 (hva interval tree), v6.8 (gfn-based invalidation
range and retry, change_pte skipping INVALID slots from v6.4), arm64's aging fix of v6.5,
v6.10 (change_pte removed) and current mainline (v6.19, alias `mainline`).

Each case is worked by hand from the kernel source named in the model's comment."""
from __future__ import annotations

import pytest

from fuzz.runner import Side, apply_event, run_trace
from language.trace import (ChangePte, ClearYoung, FaultBegin, FaultCommit, HostMap, InvalidateRangeEnd,
                        InvalidateRangeStart, SetMemoryRegion, TestYoung)
from impls import registry
from impls.kvm_main_v6_8 import INVALID_GPA
from impls.machine import KVM_MEMSLOT_INVALID
from oracles.compare import SideResult, check_side
from oracles.reference import expect
from oracles.triage import load_known

P = 4096
H = 0x7f0000000000
KNOWN = load_known()
LATER = ["v5.17", "v6.8", "v6.10", "v6.19"]


def make(arch: str, version: str):
    return registry.model(arch, version)()


def run(m, *events):
    return [apply_event(m, ev) for ev in events]


def two_slots(m, gap_slot: bool = False):
    """slot 0: gfn 0x100.. (4 pages) at hva H; slot 1: gfn 0x400.. (4 pages) at hva H + 4P;
    optionally slot 2: gfn 0x180 (one page) at hva H + 16P, between the two in gfn space."""
    evs = [HostMap(H, 32 * P, 0x1000),
           SetMemoryRegion(0, 0, 0, 0x100 * P, 4 * P, H),
           SetMemoryRegion(0, 1, 0, 0x400 * P, 4 * P, H + 4 * P)]
    if gap_slot:
        evs.append(SetMemoryRegion(0, 2, 0, 0x180 * P, P, H + 16 * P))
    run(m, *evs)


# ----- registry: order, alias, overrides keyed by release ----------------------------------
def test_versions_in_kernel_order_and_mainline_alias():
    assert registry.VERSIONS == ["v5.12", "series-v1", "v5.13-rc1", "v5.13", "v5.15", "v5.17",
                                 "v6.8", "v6.10", "v6.19"]
    keys = [registry.release_key(v) for v in registry.VERSIONS]
    assert keys == sorted(keys)
    assert registry.release_key("v6.4") < registry.release_key("v6.5") < registry.release_key("v6.8")
    for arch in registry.implemented_arches():
        assert registry.versions_for(arch) == registry.VERSIONS
        assert registry.resolve(arch, "mainline") is registry.resolve(arch, "v6.19")


def test_layers_chain_each_on_the_one_before():
    from impls.kvm_main_v5_15 import KvmMainV5_15
    from impls.kvm_main_v5_17 import KvmMainV5_17
    from impls.kvm_main_v6_8 import KvmMainV6_8
    from impls.kvm_main_v6_10 import KvmMainV6_10
    from impls.kvm_main_v6_19 import KvmMainV6_19
    assert KvmMainV6_19.__bases__ == (KvmMainV6_10,)
    assert KvmMainV6_10.__bases__ == (KvmMainV6_8,)
    assert KvmMainV6_8.__bases__ == (KvmMainV5_17,)
    assert KvmMainV5_17.__bases__ == (KvmMainV5_15,)


def test_arm64_override_applies_from_first_listed_version_after_its_release():
    from impls.arm64 import Arm64AgeEveryLeaf_df6556adf27b as fix
    for v in ("v5.15", "v5.17"):
        assert fix not in registry.model("arm64", v).__mro__
    for v in ("v6.8", "v6.10", "v6.19"):
        assert fix in registry.model("arm64", v).__mro__
    assert fix not in registry.model("arm64", "series-v1").__mro__


# ----- v5.17: the inclusive interval-tree query --------------------------------------------
@pytest.mark.parametrize("version", LATER)
def test_inclusive_query_hits_the_slots_last_byte_and_not_one_past(version):
    m = make("x86-shadow", version)
    run(m, HostMap(H, 4 * P, 0x1000), SetMemoryRegion(0, 0, 0, 0x100 * P, 4 * P, H))
    assert [s.id for s in m.memslots.in_hva_range(0, H + 4 * P - 1, H + 4 * P - 1)] == [0]
    assert m.memslots.in_hva_range(0, H + 4 * P, H + 4 * P) == []
    # one byte, the slot's last: [end - 1, end) asks the tree for [end - 1, end - 1]
    obs = apply_event(m, InvalidateRangeStart(H + 4 * P - 1, H + 4 * P))
    assert [(c.slot, c.start, c.end) for c in obs.calls] == [(0, 0x103, 0x104)]
    apply_event(m, InvalidateRangeEnd(H + 4 * P - 1, H + 4 * P))
    # the first byte past the slot: the tree's query [end, end] misses it, nothing locks
    obs = apply_event(m, InvalidateRangeStart(H + 4 * P, H + 4 * P + 1))
    assert obs.calls == [] and not obs.lock_taken and m.mmu_notifier_count == 0


def test_empty_range_warns_at_walker_entry_from_v5_17_only():
    for version, warned in (("v5.15", False), ("v5.17", True), ("v6.19", True)):
        m = make("arm64", version)
        run(m, HostMap(H, 4 * P, 0x1000), SetMemoryRegion(0, 0, 0, 0x100 * P, 4 * P, H))
        obs = apply_event(m, ClearYoung(H + P, H + P))
        assert any("range->end <= range->start" in w for w in obs.warnings) == warned, version
        assert obs.calls == [] and not obs.lock_taken


def test_tree_order_is_by_hva_then_insertion_not_by_descending_gfn():
    # slot 0: gfn 0x200 at hva H + 8P; slot 1: gfn 0x100 at hva H; slot 2: gfn 0x300 at hva H
    evs = [HostMap(H, 16 * P, 0x1000),
           SetMemoryRegion(0, 0, 0, 0x200 * P, 2 * P, H + 8 * P),
           SetMemoryRegion(0, 1, 0, 0x100 * P, 2 * P, H),
           SetMemoryRegion(0, 2, 0, 0x300 * P, 2 * P, H)]
    whole = InvalidateRangeStart(H, H + 16 * P)
    old = make("x86-tdp", "v5.15")
    run(old, *evs)
    assert [c.slot for c in apply_event(old, whole).calls] == [2, 0, 1]     # base_gfn, highest first
    new = make("x86-tdp", "v5.17")
    run(new, *evs)
    assert [c.slot for c in apply_event(new, whole).calls] == [1, 2, 0]     # hva; equal hva: older first
    # a flags-only update re-inserts slot 1 (kvm_replace_memslot): it now comes after slot 2
    newer = make("x86-tdp", "v5.17")
    run(newer, *evs, SetMemoryRegion(0, 1, 1, 0x100 * P, 2 * P, H))
    assert [c.slot for c in apply_event(newer, whole).calls] == [2, 1, 0]


# ----- v6.8: gfn-based invalidation range ---------------------------------------------------
def test_invalid_gpa_before_the_first_hit_and_reset_only_on_0_to_1():
    m = make("x86-shadow", "v6.8")
    two_slots(m)
    m.mmu_lock()
    m.kvm_mmu_invalidate_begin()
    assert (m.mmu_notifier_range_start, m.mmu_notifier_range_end) == (INVALID_GPA, INVALID_GPA)
    m.kvm_mmu_invalidate_range_add(0x101, 0x103)
    m.kvm_mmu_invalidate_begin()            # 1 -> 2: the range is kept
    assert (m.mmu_notifier_range_start, m.mmu_notifier_range_end) == (0x101, 0x103)
    m.kvm_mmu_invalidate_end()
    m.kvm_mmu_invalidate_end()
    # count 0: the range is stale, not cleared, until the next 0 -> 1 begin
    assert (m.mmu_notifier_range_start, m.mmu_notifier_range_end) == (0x101, 0x103)
    m.kvm_mmu_invalidate_begin()
    assert m.mmu_notifier_range_start == INVALID_GPA
    m.begin("check")
    m.kvm_mmu_invalidate_end()              # no range added since the reset: WARN
    assert any("range_start == INVALID_GPA" in w for w in m.obs.warnings)
    m.mmu_unlock()


def test_union_of_gfn_ranges_across_two_slots():
    m = make("x86-shadow", "v6.8")
    two_slots(m)
    # [H + P, H + 6P): slot 0 gfns 0x101..0x103, slot 1 gfns 0x400..0x401
    obs = apply_event(m, InvalidateRangeStart(H + P, H + 6 * P))
    assert sorted((c.slot, c.start, c.end) for c in obs.calls) == [(0, 0x101, 0x104), (1, 0x400, 0x402)]
    assert (m.mmu_notifier_range_start, m.mmu_notifier_range_end) == (0x101, 0x402)
    assert m.mmu_notifier_count == 1 and "kvm_arch_guest_memory_reclaimed" in obs.note


def test_x86_fault_inside_the_union_retries_and_one_outside_does_not():
    # the union [0x101, 0x402) also covers slot 2's gfn 0x180, which no invalidation touched
    def fault(version, gfn, fid):
        m = make("x86-shadow", version)
        two_slots(m, gap_slot=True)
        run(m, InvalidateRangeStart(H + P, H + 6 * P), FaultBegin(fid, 0, gfn))
        return apply_event(m, FaultCommit(fid)).note

    assert fault("v6.8", 0x102, 1) == "retry"            # in slot 0's invalidated pages
    assert fault("v6.8", 0x180, 2) == "retry"            # in the gfn union, outside the hva range
    assert fault("v6.8", 0x402, 3) != "retry"            # one past the union: mapped
    assert fault("v6.19", 0x180, 4) == "retry"
    # v5.17 still checks the hva union: slot 2's hva H + 16P is outside [H + P, H + 6P)
    assert fault("v5.17", 0x180, 5) != "retry"
    assert fault("v5.17", 0x102, 6) == "retry"


def test_non_x86_keeps_the_count_check():
    m = make("arm64", "v6.8")
    two_slots(m, gap_slot=True)
    run(m, InvalidateRangeStart(H + P, H + 6 * P), FaultBegin(1, 0, 0x402))
    assert apply_event(m, FaultCommit(1)).note == "retry"   # any fault while the count is raised


def test_candidate_overwriting_instead_of_unioning_is_caught():
    base = registry.model("x86-shadow", "v6.8")

    class Overwrite(base):
        """The v12 draft's shape (B19): the last slot's gfns replace the recorded range."""
        def kvm_mmu_invalidate_range_add(self, start, end):
            self.mmu_notifier_range_start, self.mmu_notifier_range_end = start, end

    trace = [HostMap(H, 8 * P, 0x1000, task="mm0"),
             SetMemoryRegion(0, 0, 0, 0x100 * P, 4 * P, H, task="ioctl"),
             SetMemoryRegion(0, 1, 0, 0x400 * P, 4 * P, H + 4 * P, task="ioctl"),
             InvalidateRangeStart(H, H + 8 * P, task="mm0"),
             FaultBegin(1, 0, 0x101, task="vcpu0"), FaultCommit(1, task="vcpu0"),
             InvalidateRangeEnd(H, H + 8 * P, task="mm0")]
    divs = run_trace(trace, "x86-shadow", Side("v6.8", base), Side("overwrite.py:Overwrite", Overwrite),
                     KNOWN).divergences
    got = {(d.cls, d.wrong_side, d.shape) for d in divs}
    assert ("stale-mapping", "new", "fault-installed-inside-open-invalidation") in got
    assert all(not d.known for d in divs if d.wrong_side == "new")
    # the real v6.8 against itself shows nothing
    assert not run_trace(trace, "x86-shadow", Side("v6.8", base), Side("v6.8", base), KNOWN).divergences


# ----- arm64: df6556adf27b ages every leaf of the range -------------------------------------
@pytest.mark.parametrize("version,aged", [("v5.17", 1), ("v6.8", 3), ("v6.19", 3)])
def test_arm64_aging_every_leaf_after_df6556adf27b_first_only_before(version, aged):
    m = make("arm64", version)
    run(m, HostMap(H, 4 * P, 0x1000), SetMemoryRegion(0, 0, 0, 0x100 * P, 4 * P, H))
    for i, gfn in enumerate((0x100, 0x101, 0x102)):
        run(m, FaultBegin(i, 0, gfn), FaultCommit(i))
    obs = apply_event(m, ClearYoung(H, H + 4 * P))
    assert len(obs.aged) == aged and obs.young == 1
    assert [x.gfn for x in obs.aged][:1] == [0x100]
    # only the third page is still young (after v6.5) or all but the first (before)
    apply_event(m, FaultBegin(9, 0, 0x103))
    apply_event(m, FaultCommit(9))
    obs = apply_event(m, TestYoung(H + 2 * P))
    assert obs.young == (1 if version == "v5.17" else 0)


def test_arm64_aging_no_size_warning_after_df6556adf27b():
    for version, warned in (("v5.17", True), ("v6.8", False)):
        m = make("arm64", version)
        run(m, HostMap(H, 4 * P, 0x1000), SetMemoryRegion(0, 0, 0, 0x100 * P, 4 * P, H))
        obs = apply_event(m, ClearYoung(H, H + 3 * P))
        assert any("age handler" in w for w in obs.warnings) == warned


# ----- change_pte: INVALID slots skipped from v6.4, the callback gone from v6.10 -------------
@pytest.mark.parametrize("version,handled", [("v5.17", True), ("v6.8", False)])
def test_change_pte_skips_an_invalid_slot_from_v6_4(version, handled):
    m = make("arm64", version)
    run(m, HostMap(H, 4 * P, 0x1000), SetMemoryRegion(0, 0, 0, 0x100 * P, 4 * P, H))
    apply_event(m, InvalidateRangeStart(H, H + P))          # count raised; slot still valid
    m.memslots.mark_invalid(m.memslots.in_as(0)[0])         # a DELETE's INVALID copy published
    assert m.memslots.in_as(0)[0].flags & KVM_MEMSLOT_INVALID
    obs = apply_event(m, ChangePte(H, 0x2000))
    assert bool(obs.calls) == handled
    assert not obs.warnings                                 # an invalidation is active


def _aliased_slots_one_invalid(version):
    # as0 slot0 [0x100, +4) and slot1 [0x200, +4) both map hva H.., slot0 flagged INVALID
    m = make("arm64", version)
    run(m, HostMap(H, 4 * P, 0x1000), SetMemoryRegion(0, 0, 0, 0x100 * P, 4 * P, H),
        SetMemoryRegion(0, 1, 0, 0x200 * P, 4 * P, H))
    apply_event(m, InvalidateRangeStart(H, H + P))
    m.memslots.mark_invalid(next(x for x in m.memslots.in_as(0) if x.id == 0))
    return m


@pytest.mark.parametrize("version,shapes", [("v5.17", []), ("v6.8", ["invalid-slot-skipped"])])
def test_the_oracle_names_the_invalid_slot_change_pte_skips(version, shapes):
    # v6.8 hands the valid alias (slot1) and skips the INVALID slot0: the reference still wants
    # both, and the shape says why they differ
    m = _aliased_slots_one_invalid(version)
    pre = m.snapshot()
    ev = ChangePte(H, 0x2000)
    exp = expect(ev, pre)
    obs = apply_event(m, ev)
    found = check_side(ev, exp, SideResult(pre, m.snapshot(), obs, m.host))
    assert [f.shape for f in found if f.cls == "gfn-set-mismatch"] == shapes


def test_only_change_pte_names_a_skipped_invalid_slot():
    # an aging handler that hands the INVALID slot nothing does so for its own reasons and keeps
    # that reason's shape; and handing nothing at all is no-gfns (a version without a change_pte
    # callback does that too)
    m = _aliased_slots_one_invalid("v6.8")
    pre = m.snapshot()
    for ev, shape in ((ChangePte(H, 0x2000), "invalid-slot-skipped"), (ClearYoung(H, H + P), "whole-slot-missed")):
        exp = expect(ev, pre)
        obs = apply_event(m, ev)
        obs.calls = [c for c in obs.calls if c.start >= 0x200]          # as if slot0 were skipped
        found = check_side(ev, exp, SideResult(pre, m.snapshot(), obs, m.host))
        assert [f.shape for f in found if f.cls == "gfn-set-mismatch"] == [shape], ev.op
        obs.calls = []
        found = check_side(ev, exp, SideResult(pre, m.snapshot(), obs, m.host))
        assert [f.shape for f in found if f.cls == "gfn-set-mismatch"] == ["no-gfns"], ev.op


@pytest.mark.parametrize("version", ["v6.10", "v6.19", "mainline"])
def test_change_pte_is_a_no_op_after_removal(version):
    m = make("x86-shadow", version)
    run(m, HostMap(H, 4 * P, 0x1000), SetMemoryRegion(0, 0, 0, 0x100 * P, 4 * P, H),
        FaultBegin(1, 0, 0x100), FaultCommit(1))
    before = {k: v.snapshot() for k, v in m.leaves.items()}
    for count_raised in (False, True):
        if count_raised:
            apply_event(m, InvalidateRangeStart(H + P, H + 2 * P))
        obs = apply_event(m, ChangePte(H, 0x2000))
        assert obs.calls == [] and obs.changed == [] and obs.zapped == [] and obs.warnings == []
        assert not obs.lock_taken and obs.flushes == []
        assert {k: v.snapshot() for k, v in m.leaves.items()} == before


# ----- mainline -----------------------------------------------------------------------------
def test_mainline_tags_hva_ranges_shared_and_guards_the_active_count():
    m = make("mips", "mainline")
    run(m, HostMap(H, 4 * P, 0x1000), SetMemoryRegion(0, 0, 0, 0x100 * P, 4 * P, H))
    seen = []
    orig = m.kvm_unmap_gfn_range
    m.kvm_unmap_gfn_range = lambda r: seen.append(r.attr_filter) or orig(r)
    apply_event(m, InvalidateRangeStart(H, H + P))
    assert seen == ["KVM_FILTER_SHARED"]
    apply_event(m, InvalidateRangeEnd(H, H + P))
    assert m.mn_active_invalidate_count == 0
    m.begin("invalidate_range_end")
    m.kvm_mmu_notifier_invalidate_range_end(H, H + P, True)   # unpaired: WARN, no underflow
    assert m.mn_active_invalidate_count == 0
    assert any("mn_active_invalidate_count" in w for w in m.obs.warnings)


def test_cli_list_shows_the_versions_in_order_and_accepts_mainline(tmp_path, capsys):
    from fuzz.cli import main
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    block = out[out.index("  x86-shadow"):out.index("  x86-tdp")]
    pos = [block.index(f"{v} (") for v in registry.VERSIONS]
    assert pos == sorted(pos)
    assert "also named mainline" in block
    rc = main(["run", "--arch", "mips", "--old", "v5.12", "--new", "mainline", "--max-traces", "3",
               "--max-time", "60", "--seed", "1", "--out", str(tmp_path / "out"),
               "--report", str(tmp_path / "r.json")])
    assert rc in (0, 1)
    assert "v5.12..mainline" in capsys.readouterr().out


@pytest.mark.parametrize("arch,locked", [("x86-shadow", True), ("x86-tdp", False)])
def test_x86_mainline_ages_without_the_walkers_lock_and_elides_the_flush(arch, locked):
    from language.trace import ClearFlushYoung
    for version in ("v6.10", "v6.19"):
        m = make(arch, version)
        run(m, HostMap(H, 4 * P, 0x1000), SetMemoryRegion(0, 0, 0, 0x100 * P, 4 * P, H),
            FaultBegin(1, 0, 0x100), FaultCommit(1))
        obs = apply_event(m, ClearFlushYoung(H, H + 4 * P))
        assert obs.young == 1 and len(obs.aged) == 1
        if version == "v6.10":
            assert obs.lock_taken and obs.flushes
        else:
            # the legacy MMU's rmap pass takes mmu_lock itself; the TDP MMU ages locklessly
            assert obs.lock_taken == locked and obs.flushes == []


"""x86 legacy (rmap) MMU, v5.12 and v5.13: boundary cases worked out by hand from
arch/x86/kvm/mmu/mmu.c (kvm_handle_hva_range, slot_rmap_walk_*, kvm_handle_gfn_range) and
virt/kvm/kvm_main.c of each version."""
import pytest
from util import HVA, P, diverge, fault, gfns, handed, host, run_model, slot

from language.trace import (ChangePte, ClearFlushYoung, ClearYoung, FaultBegin, FaultCommit,
                        InvalidateRangeEnd, InvalidateRangeStart, SyncPage, TestYoung)
from impls.machine import Memslot
from impls.x86_shadow import X86ShadowV5_12, X86ShadowV5_13

BOTH = [X86ShadowV5_12, X86ShadowV5_13]
HUGE = 2 << 20


def two_slots():
    """slot 0: gfn [0x100, 0x104) at HVA; slot 1: gfn [0x200, 0x204) hva-adjacent at HVA+4P."""
    return [host(HVA, 64, 0x1000), slot(0, 0, 0x100, 4, HVA), slot(0, 1, 0x200, 4, HVA + 4 * P)]


@pytest.mark.parametrize("cls", BOTH)
def test_range_ending_exactly_at_slot_start_hits_nothing(cls):
    # clamp: hva_start = max(start, ua) = HVA, hva_end = min(end, ...) = HVA -> hs >= he, skipped
    _, obs = run_model(cls, two_slots() + fault(0, 0x100) +
                       [InvalidateRangeStart(HVA - 2 * P, HVA), ClearYoung(HVA - 2 * P, HVA)])
    start, young = obs[-2], obs[-1]
    assert start.calls == [] and start.zapped == [] and start.flushes == []
    assert start.lock_taken          # range_start always takes mmu_lock, in both versions
    assert young.calls == [] and young.young == 0
    # v5.12 takes mmu_lock for clear_young regardless; v5.13 only on a memslot hit (8931a454aea0)
    assert young.lock_taken == (cls is X86ShadowV5_12)


@pytest.mark.parametrize("cls", BOTH)
def test_range_straddling_two_slots_cut_per_slot_in_kernel_order(cls):
    # [HVA+3P, HVA+5P): last page of slot 0 (gfn 0x103), first page of slot 1 (gfn 0x200);
    # the memslot array is sorted by base_gfn descending, so slot 1 is visited first
    _, obs = run_model(cls, two_slots() + fault(0, 0x103) + fault(0, 0x200) +
                       [InvalidateRangeStart(HVA + 3 * P, HVA + 5 * P)])
    o = obs[-1]
    assert [(c.slot, c.start, c.end) for c in o.calls] == [(1, 0x200, 0x201), (0, 0x103, 0x104)]
    assert sorted(x.gfn for x in o.zapped) == [0x103, 0x200]
    assert [f.scope for f in o.flushes] == ["all"] and o.flushes[0].locked


@pytest.mark.parametrize("cls", BOTH)
def test_one_byte_unaligned_range_is_one_page(cls):
    # gfn_end = hva_to_gfn(he + PAGE_SIZE - 1): [HVA+P+0x123, +1) -> exactly gfn 0x101
    _, obs = run_model(cls, two_slots() + fault(0, 0x101) + fault(0, 0x102) +
                       [InvalidateRangeStart(HVA + P + 0x123, HVA + P + 0x124)])
    o = obs[-1]
    assert handed(o) == gfns((0, 0x101, 0x102))
    assert [x.gfn for x in o.zapped] == [0x101]


@pytest.mark.parametrize("cls", BOTH)
def test_empty_range_inside_a_slot_hits_nothing(cls):
    _, obs = run_model(cls, two_slots() + fault(0, 0x101) +
                       [InvalidateRangeStart(HVA + P + 8, HVA + P + 8)])
    assert obs[-1].calls == [] and obs[-1].zapped == []


@pytest.mark.parametrize("cls", BOTH)
def test_smm_alias_is_walked_in_both_address_spaces(cls):
    # as_id 1 (SMM) aliases the same hva; both slots are handled, each with its own rmaps
    ev = [host(HVA, 16, 0x1000), slot(0, 0, 0x100, 4, HVA), slot(1, 0, 0x100, 4, HVA)]
    ev += fault(0, 0x101) + fault(1, 0x101) + [InvalidateRangeStart(HVA + P, HVA + 2 * P)]
    _, obs = run_model(cls, ev)
    o = obs[-1]
    assert [(c.as_id, c.start, c.end) for c in o.calls] == [(0, 0x101, 0x102), (1, 0x101, 0x102)]
    assert sorted((x.as_id, x.gfn) for x in o.zapped) == [(0, 0x101), (1, 0x101)]
    assert len(o.flushes) == 1         # one flush for the whole notifier


def test_rmap_visits_are_per_level_with_unaligned_gfns():
    # spec example: base_gfn 0x100, [ua+0x1000, ua+0x3000) -> gfns 0x101..0x102 (inclusive
    # last 0x102); level 1 visits indices 1 and 2, levels 2 and 3 one head each, gfn 0x101
    m = X86ShadowV5_12()
    s = Memslot(0, 0, 0x100, 4, HVA)
    assert list(m.for_each_slot_rmap_range(s, 0x101, 0x102)) == [
        (1, 1, 0x101), (1, 2, 0x102), (2, 0, 0x101), (3, 0, 0x101)]
    # crossing a 2M frame: gfns 0x1f8..0x207 of a slot based at 0x1f0; at level 2 the second
    # head gets gfn 0x1f8 + 0x200 = 0x3f8, past the range end (slot_rmap_walk_next steps the
    # gfn by the level's pages from the unaligned start)
    s = Memslot(0, 0, 0x1f0, 0x400, HVA)
    visits = list(m.for_each_slot_rmap_range(s, 0x1f8, 0x207))
    assert [v for v in visits if v[0] == 2] == [(2, 0, 0x1f8), (2, 1, 0x3f8)]
    assert [v for v in visits if v[0] == 3] == [(3, 0, 0x1f8)]
    assert len([v for v in visits if v[0] == 1]) == 0x10


@pytest.mark.parametrize("cls", BOTH)
def test_partially_covered_huge_leaf_is_zapped_whole(cls):
    # 2M-backed host, slot gfn [0x200, 0x600) aligned with its hva: a fault maps a 2M leaf
    # [0x200, 0x400); invalidating only its last page reaches the level-2 rmap head and drops it
    ev = [host(HVA, 1024, 0x40000, page_size=HUGE), slot(0, 0, 0x200, 1024, HVA)] + fault(0, 0x3ff)
    ev += [InvalidateRangeStart(HVA + 0x1ff * P, HVA + 0x200 * P)]
    _, obs = run_model(cls, ev)
    assert [(x.gfn, x.level, x.pages) for x in obs[-2].installed] == [(0x200, 2, 512)]
    o = obs[-1]
    assert handed(o) == gfns((0, 0x3ff, 0x400))
    assert [(x.gfn, x.pages) for x in o.zapped] == [(0x200, 512)]


@pytest.mark.parametrize("cls", BOTH)
def test_misaligned_slot_maps_4k_only(cls):
    # (base_gfn ^ hva >> 12) & 511 != 0 disallows huge pages in the whole slot
    ev = [host(HVA, 1024, 0x40000, page_size=HUGE), slot(0, 0, 0x201, 1000, HVA)] + fault(0, 0x300)
    _, obs = run_model(cls, ev)
    assert [(x.gfn, x.level) for x in obs[-1].installed] == [(0x300, 1)]


@pytest.mark.parametrize("cls", BOTH)
def test_age_clears_accessed_and_flushes_only_when_young(cls):
    ev = two_slots() + fault(0, 0x100) + fault(0, 0x101)
    ev += [ClearFlushYoung(HVA, HVA + 4 * P), ClearFlushYoung(HVA, HVA + 4 * P), TestYoung(HVA)]
    _, obs = run_model(cls, ev)
    first, second, test = obs[-3:]
    assert first.young == 1 and sorted(x.gfn for x in first.aged) == [0x100, 0x101]
    assert [f.origin for f in first.flushes] == ["kvm_flush_remote_tlbs"]
    assert second.young == 0 and second.aged == [] and second.flushes == []
    assert test.young == 0 and handed(test) == gfns((0, 0x100, 0x101))


@pytest.mark.parametrize("cls", BOTH)
def test_change_pte_readonly_rewrites_writable_drops(cls):
    ev = two_slots() + fault(0, 0x100) + fault(0, 0x101)
    ev += [InvalidateRangeStart(HVA + 2 * P, HVA + 3 * P),      # keeps count elevated (v5.13 WARN)
           ChangePte(HVA, 0x9000, False), ChangePte(HVA + P + 5, 0x9001, True),
           InvalidateRangeEnd(HVA + 2 * P, HVA + 3 * P)]
    _, obs = run_model(cls, ev)
    ro, rw = obs[-3], obs[-2]
    assert [(b.pfn, a.pfn, a.writable, a.young) for b, a in ro.changed] == [(0x1000, 0x9000, False, False)]
    assert handed(rw) == gfns((0, 0x101, 0x102))     # [hva, hva+1): the page holding hva
    assert [x.gfn for x in rw.zapped] == [0x101]
    assert len(ro.flushes) == len(rw.flushes) == 1 and not ro.warnings


def test_change_pte_seq_bump_only_in_v5_12():
    # v5.12 bumps mmu_notifier_seq before kvm_set_spte_hva; v5.13 relies on the elevated count
    ev = two_slots() + [ChangePte(HVA + 100 * P, 0x9000, False)]
    old, _ = run_model(X86ShadowV5_12, ev)
    new, obs = run_model(X86ShadowV5_13, ev)
    assert old.mmu_notifier_seq == 1 and new.mmu_notifier_seq == 0
    assert obs[-1].warnings == ["WARN_ON_ONCE(!kvm->mmu_notifier_count) in change_pte"]


@pytest.mark.parametrize("cls", BOTH)
def test_tlbs_dirty_forces_range_start_flush_and_is_cleared(cls):
    ev = two_slots() + fault(0, 0x100) + [SyncPage(0, 0x100), InvalidateRangeStart(HVA + 40 * P, HVA + 41 * P)]
    m, obs = run_model(cls, ev)
    assert obs[-2].zapped and m.tlbs_dirty == 0
    assert [f.origin for f in obs[-1].flushes] == ["kvm_flush_remote_tlbs"] and obs[-1].calls == []


def test_v5_13_flushes_for_tlbs_dirty_without_mmu_lock_when_no_slot_is_hit():
    # __kvm_handle_hva_range tests flush_on_ret && (ret || tlbs_dirty) after the walk, and only
    # takes mmu_lock on a hit: change_pte off every slot flushes with the lock not held
    ev = two_slots() + fault(0, 0x100) + [SyncPage(0, 0x100), ChangePte(HVA + 40 * P, 0x9000, False)]
    _, new = run_model(X86ShadowV5_13, ev)
    _, old = run_model(X86ShadowV5_12, ev)
    assert [(f.origin, f.locked) for f in new[-1].flushes] == [("kvm_flush_remote_tlbs", False)]
    assert old[-1].flushes == [] and old[-1].lock_taken and not new[-1].lock_taken


@pytest.mark.parametrize("cls", BOTH)
def test_fault_retry_uses_the_hva_range(cls):
    # mmu_notifier_retry_hva: an invalidation in progress elsewhere does not stop the fault;
    # one covering the fault's hva does; after range_end the seq moved, so a fault begun
    # before it retries too
    far = (HVA + 30 * P, HVA + 31 * P)
    near = (HVA + P, HVA + 2 * P)
    ev = two_slots() + [InvalidateRangeStart(*far), FaultBegin(1, 0, 0x101), FaultCommit(1),
                        InvalidateRangeEnd(*far), InvalidateRangeStart(*near), FaultBegin(2, 0, 0x102),
                        FaultCommit(2), FaultBegin(3, 0, 0x101), InvalidateRangeEnd(*near), FaultCommit(3)]
    _, obs = run_model(cls, ev)
    assert [x.gfn for x in obs[5].installed] == [0x101]
    assert obs[9].note == "" and obs[9].installed              # 0x102's hva is outside [near)
    assert obs[-1].note == "retry"


@pytest.mark.parametrize("cls", BOTH)
def test_memslot_move_zaps_and_flushes_old_mappings(cls):
    ev = two_slots() + fault(0, 0x101) + [slot(0, 0, 0x300, 4, HVA)]
    m, obs = run_model(cls, ev)
    assert obs[-1].note == "move" and [x.gfn for x in obs[-1].zapped] == [0x101]
    assert obs[-1].flushes and not m.leaves


def test_x86_shadow_v5_12_vs_v5_13_divergences_are_the_known_ones():
    ev = two_slots() + fault(0, 0x100) + [ClearYoung(HVA + 40 * P, HVA + 41 * P),
                                          ChangePte(HVA + 40 * P, 0x9000, False)]
    ds = diverge("x86-shadow", ("v5.12", X86ShadowV5_12), ("v5.13", X86ShadowV5_13), ev)
    assert sorted((d.cls, d.op, d.wrong_side) for d in ds) == [
        ("lock-without-hit", "change_pte", "old"), ("lock-without-hit", "clear_young", "old"),
        ("warning", "change_pte", "new")]
    assert all(d.known and d.explanation for d in ds)


def test_rc1_and_final_agree_on_x86_shadow():
    ev = two_slots() + fault(0, 0x100) + [ClearYoung(HVA + 40 * P, HVA + 41 * P),
                                          InvalidateRangeStart(HVA, HVA + 8 * P)]
    assert diverge("x86-shadow", ("v5.13-rc1", X86ShadowV5_13), ("v5.13", X86ShadowV5_13), ev) == []


# ----- 548f87f667a3 (v6.12): the notifier's rmap zap may yield, flushing first ------------------
def test_v6_19_blockable_unmap_flushes_before_each_yield_and_owes_nothing_after():
    # v6.12 mmu.c kvm_unmap_gfn_range -> __walk_slot_rmaps(can_yield = may_block, flush_on_yield):
    # the model yields after every head it zaps; each yield first flushes what is pending
    # (kvm_flush_remote_tlbs_range: a full flush without Hyper-V), so the walk returns false and
    # the common walker does not flush again.  A range that may not block never yields: one
    # flush, by the walker, at the end.  v6.10 has no yield at all
    from impls.registry import resolve
    ev = [slot(0, 0, 0x100, 0x10, HVA), host(HVA, 0x10, 0x1000)] + fault(0, 0x100) + fault(0, 0x101)
    yield_flush = "kvm_flush_remote_tlbs_range (yield)"
    for version, blockable, want in (("v6.19", True, [yield_flush, yield_flush]),
                                     ("v6.19", False, ["kvm_flush_remote_tlbs"]),
                                     ("v6.10", True, ["kvm_flush_remote_tlbs"])):
        _, obs = run_model(resolve("x86-shadow", version), ev + [InvalidateRangeStart(HVA, HVA + 2 * P, blockable)])
        assert [f.origin for f in obs[-1].flushes] == want, (version, blockable)
        assert sorted(z.gfn for z in obs[-1].zapped) == [0x100, 0x101]


def test_v6_19_yield_flush_with_hyperv_ranges_ends_at_the_iterators_gfn():
    # with Hyper-V's ranged flush the yield flushes [start_gfn, iterator.gfn]: on the 2M level
    # the iterator's gfn is start + 512 per head, not the frame's end.  Range [0x100, 0x400)
    # over a 2M leaf at 0x200: its head is the level's second (index 1), gfn 0x100 + 0x200
    from impls.registry import resolve

    class HyperV(resolve("x86-shadow", "v6.19")):
        hyperv_range_flush = True
    M2 = 2 << 20
    base = HVA + 0x100 * P                  # gfn 0x200 at HVA + 2 MiB: the frame may be huge
    ev = [slot(0, 0, 0x100, 0x300, base), host(base, 0x100, 0x1000), host(HVA + M2, 0x200, 0x40000, M2)]
    ev += fault(0, 0x234)
    m, obs = run_model(HyperV, ev + [InvalidateRangeStart(base, base + 0x300 * P)])
    assert [(x.gfn, x.pages) for x in obs[-2].installed] == [(0x200, 0x200)]
    (f,) = obs[-1].flushes
    assert (f.scope, f.start, f.end, f.origin) == ("range", 0x100, 0x301, "kvm_flush_remote_tlbs_range (yield)")
    assert not m.leaves

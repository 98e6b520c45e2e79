"""x86 TDP MMU models (impls/x86_tdp.py): hand-worked boundary examples, v5.12 against v5.13.

Every expected value below is worked out by hand from the source named in the comment:
v5.12 arch/x86/kvm/mmu/tdp_mmu.c (kvm_tdp_mmu_handle_hva_range, zap_gfn_range,
handle_removed_tdp_mmu_page, age_gfn_range, test_age_gfn, set_tdp_spte) and v5.13 tdp_mmu.c at
4c6654bd160d (kvm_tdp_mmu_unmap_gfn_range, kvm_tdp_mmu_handle_gfn, set_spte_gfn).
"""
from __future__ import annotations

from language.trace import (ChangePte, ClearFlushYoung, ClearYoung, InvalidateRangeEnd,
                        InvalidateRangeStart, TestYoung)
from impls.registry import resolve
from impls.x86_tdp import MODELS, X86TdpV5_12, X86TdpV5_13
from util import HVA, P, diverge, fault, gfns, handed, host, run_model, slot

BOTH = (X86TdpV5_12, X86TdpV5_13)
M2 = 2 << 20
OTHER = HVA + (64 << 30)          # an hva range no slot uses: opens a pair without touching anything


def last(cls, events):
    model, obs = run_model(cls, events)
    return model, obs[-1]


def hooks(obs):
    return [(c.hook, c.as_id, c.start, c.end) for c in obs.calls]


def zapped(obs):
    return [(x.as_id, x.gfn, x.level) for x in obs.zapped]


def origins(obs):
    return [f.origin for f in obs.flushes]


def small_slot():
    """as0 slot0: gfns [0x100, 0x110) at HVA, 4K host pages, gfns 0x100..0x103 faulted in."""
    ev = [slot(0, 0, 0x100, 0x10, HVA), host(HVA, 0x10, 0x1000)]
    for g in range(0x100, 0x104):
        ev += fault(0, g)
    return ev


def test_registry_shape():
    assert MODELS["x86-tdp"]["v5.12"][0] is X86TdpV5_12
    assert MODELS["x86-tdp"]["v5.13"][0] is X86TdpV5_13
    assert MODELS["x86-tdp"]["v5.13-rc1"][0] is X86TdpV5_13


def test_unaligned_range_rounds_out_and_v513_yields():
    # [HVA+0x1800, HVA+0x2001): start gfn floor -> 0x101, end rounded up -> 0x103 (both
    # kvm_tdp_mmu_handle_hva_range and __kvm_handle_hva_range).  The rmap pass and the TDP
    # zap get the same half-open range.
    ev = small_slot() + [InvalidateRangeStart(HVA + 0x1800, HVA + 0x2001)]
    _, o12 = last(X86TdpV5_12, ev)
    _, o13 = last(X86TdpV5_13, ev)
    for o in (o12, o13):
        assert handed(o) == gfns((0, 0x101, 0x103))
        assert zapped(o) == [(0, 0x101, 1), (0, 0x102, 1)]
        assert o.lock_taken
    # v5.12: rmap pass over every slot, then the root loop (zap_gfn_range_hva_wrapper: no yield)
    assert hooks(o12) == [("kvm_unmap_rmapp", 0, 0x101, 0x103), ("zap_gfn_range", 0, 0x101, 0x103)]
    assert origins(o12) == ["kvm_flush_remote_tlbs"]
    # v5.13: may_block -> the zap yields before its second zeroing, flushing first, then the
    # walker's final flush (ret was true)
    assert hooks(o13) == [("kvm_unmap_rmapp", 0, 0x101, 0x103), ("zap_gfn_range", 0, 0x101, 0x103)]
    assert origins(o13) == ["tdp_mmu_iter_cond_resched", "kvm_flush_remote_tlbs"]


def test_v513_does_not_yield_when_not_blockable():
    # kvm_tdp_mmu_unmap_gfn_range passes range->may_block as can_yield
    ev = small_slot() + [InvalidateRangeStart(HVA, HVA + 4 * P, blockable=False)]
    _, o = last(X86TdpV5_13, ev)
    assert zapped(o) == [(0, g, 1) for g in range(0x100, 0x104)]
    assert origins(o) == ["kvm_flush_remote_tlbs"]
    _, o = last(X86TdpV5_13, small_slot() + [InvalidateRangeStart(HVA, HVA + 4 * P)])
    # yields before the 2nd, 3rd and 4th zeroing (each with a flush pending), then the final flush
    assert origins(o) == ["tdp_mmu_iter_cond_resched"] * 3 + ["kvm_flush_remote_tlbs"]


def test_empty_and_one_byte_ranges():
    for cls in BOTH:
        # empty range: clamp gives hva_start >= hva_end for every slot; no call, no flush, but
        # range_start still takes mmu_lock (v5.12 always, v5.13 through on_lock)
        _, o = last(cls, small_slot() + [InvalidateRangeStart(HVA + P, HVA + P)])
        assert o.calls == [] and o.zapped == [] and o.flushes == [] and o.lock_taken
        # one byte at the last byte of gfn 0x100's page
        _, o = last(cls, small_slot() + [InvalidateRangeStart(HVA + P - 1, HVA + P)])
        assert handed(o) == gfns((0, 0x100, 0x101))
        assert zapped(o) == [(0, 0x100, 1)]


def test_test_young_is_one_gfn():
    # test_young hands [hva, hva+1): gfn 0x101 only; v5.12 test_age_gfn looks at [gfn, gfn+1)
    ev = small_slot() + [TestYoung(HVA + 2 * P - 1)]
    _, o12 = last(X86TdpV5_12, ev)
    _, o13 = last(X86TdpV5_13, ev)
    assert hooks(o12) == [("kvm_test_age_rmapp", 0, 0x101, 0x102), ("test_age_gfn", 0, 0x101, 0x102)]
    assert hooks(o13) == [("kvm_test_age_rmapp", 0, 0x101, 0x102), ("test_age_gfn", 0, 0x101, 0x102)]
    assert o12.young == 1 and o13.young == 1 and o12.flushes == [] and o13.flushes == []
    ev = small_slot() + [ClearYoung(HVA, HVA + 4 * P), TestYoung(HVA + P)]
    for cls in BOTH:
        _, o = last(cls, ev)
        assert o.young == 0


def huge_slot():
    """as0 slot0: gfns [0x200, 0x400) at HVA, one 2M host page, faulted in as one 2M leaf."""
    return [slot(0, 0, 0x200, 0x200, HVA), host(HVA, 0x200, 0x10000, page_size=M2)] + fault(0, 0x201)


def test_partially_covered_huge_leaf_is_zapped_whole():
    # zap_gfn_range zeroes any present leaf it visits; the walk starts at the SPTE containing
    # start, so the 2M leaf at 0x200 is visited for [0x201, 0x202) and zapped whole
    ev = huge_slot() + [InvalidateRangeStart(HVA + P, HVA + 2 * P)]
    for cls in BOTH:
        m, o = last(cls, ev)
        assert handed(o) == gfns((0, 0x201, 0x202))
        assert zapped(o) == [(0, 0x200, 2)] and o.zapped[0].pages == 512
        assert origins(o) == ["kvm_flush_remote_tlbs"]
        assert m.leaves == {}


def test_partially_covered_huge_leaf_is_aged_whole():
    # age_gfn_range visits present leaves over [start, end): the 2M leaf is aged for one gfn
    ev = huge_slot() + [ClearFlushYoung(HVA + 3 * P, HVA + 4 * P)]
    for cls in BOTH:
        m, o = last(cls, ev)
        assert handed(o) == gfns((0, 0x203, 0x204))
        assert [(x.gfn, x.level) for x in o.aged] == [(0x200, 2)]
        assert o.young == 1 and origins(o) == ["kvm_flush_remote_tlbs"]
        assert m.leaves[(0, 0x200, 2)].young is False


def one_table_three_leaves():
    """as0 slot [0x200, 0x400) at HVA, 4K host pages, with 4K leaves at 0x200, 0x201 and 0x203:
    one level-1 table, under the PDE (level 2, gfn 0x200) that spans the whole slot."""
    ev = [slot(0, 0, 0x200, 0x200, HVA), host(HVA, 0x200, 0x1000)]
    for g in (0x200, 0x201, 0x203):
        ev += fault(0, g)
    return ev


def test_whole_table_is_freed_with_its_own_flush():
    # slot [0x200, 0x400) with 4K leaves at 0x200, 0x201, 0x203: the PDE (level 2, gfn 0x200)
    # lies wholly inside [0x200, 0x400), so it is zeroed as one SPTE: its table is freed by
    # handle_removed_tdp_mmu_page (leaves zapped, one flush), then the notifier's final flush
    ev = one_table_three_leaves() + [InvalidateRangeStart(HVA, HVA + 0x200 * P)]
    for cls in BOTH:
        m, o = last(cls, ev)
        assert zapped(o) == [(0, 0x200, 1), (0, 0x201, 1), (0, 0x203, 1)]
        assert origins(o) == ["handle_removed_tdp_mmu_page", "kvm_flush_remote_tlbs"]
        assert (2, 0x200) not in m.roots[0].tables


def test_empty_table_still_costs_flushes():
    # zapping [0x200, 0x204) zeroes the three 4K leaves but keeps their (now empty) table;
    # a later range covering the table zeroes the PDE: flush=true and a freed-table flush,
    # with nothing unmapped
    ev = one_table_three_leaves() + [InvalidateRangeStart(HVA, HVA + 4 * P), InvalidateRangeEnd(HVA, HVA + 4 * P),
                                     InvalidateRangeStart(HVA, HVA + 0x200 * P)]
    for cls in BOTH:
        _, o = last(cls, ev)
        assert o.zapped == []
        assert origins(o) == ["handle_removed_tdp_mmu_page", "kvm_flush_remote_tlbs"]


def test_gpa_adjacent_slot_not_reached_unless_hva_adjacent():
    # slot0 gfns [0x100, 0x110) at HVA; slot1 gfns [0x110, 0x120) far away in hva: a range
    # ending one byte past slot0's hva end is clamped to slot0, so gfn 0x110 stays mapped
    far = HVA + (1 << 20)
    ev = [slot(0, 0, 0x100, 0x10, HVA), slot(0, 1, 0x110, 0x10, far),
          host(HVA, 0x10, 0x1000), host(far, 0x10, 0x2000)] + fault(0, 0x10f) + fault(0, 0x110)
    for cls in BOTH:
        m, o = last(cls, ev + [InvalidateRangeStart(HVA + 0xf000, HVA + 0x10001)])
        assert handed(o) == gfns((0, 0x10f, 0x110))
        assert zapped(o) == [(0, 0x10f, 1)]
        assert (0, 0x110, 1) in m.leaves
    # slot1 adjacent in hva too: the last byte reaches its first page
    ev = [slot(0, 0, 0x100, 0x10, HVA), slot(0, 1, 0x110, 0x10, HVA + 0x10000),
          host(HVA, 0x20, 0x1000)] + fault(0, 0x10f) + fault(0, 0x110)
    for cls in BOTH:
        m, o = last(cls, ev + [InvalidateRangeStart(HVA + 0xf000, HVA + 0x10001)])
        assert handed(o) == gfns((0, 0x10f, 0x111))
        # memslot array order is descending base_gfn: slot1 (0x110) is walked first
        assert zapped(o) == [(0, 0x110, 1), (0, 0x10f, 1)]


def aliased():
    """One hva page in as0 (gfn 0x100) and as1/SMM (gfn 0x300), both faulted: two roots."""
    return ([slot(0, 0, 0x100, 0x10, HVA), slot(1, 0, 0x300, 0x10, HVA), host(HVA, 0x10, 0x1000)]
            + fault(0, 0x100) + fault(1, 0x300))


def test_hva_alias_across_address_spaces_walk_order():
    ev = aliased() + [InvalidateRangeStart(HVA, HVA + P)]
    m12, o12 = last(X86TdpV5_12, ev)
    m13, o13 = last(X86TdpV5_13, ev)
    # roots are list_add()ed at the head: the as1 root (made second) comes first
    assert [(r.id, r.as_id) for r in m12.roots] == [(1, 1), (0, 0)]
    # v5.12: rmap pass over both address spaces, then root-major, as_id from each root
    assert hooks(o12) == [("kvm_unmap_rmapp", 0, 0x100, 0x101), ("kvm_unmap_rmapp", 1, 0x300, 0x301),
                          ("zap_gfn_range", 1, 0x300, 0x301), ("zap_gfn_range", 0, 0x100, 0x101)]
    # v5.13: slot by slot, the roots of the slot's address space
    assert hooks(o13) == [("kvm_unmap_rmapp", 0, 0x100, 0x101), ("zap_gfn_range", 0, 0x100, 0x101),
                          ("kvm_unmap_rmapp", 1, 0x300, 0x301), ("zap_gfn_range", 1, 0x300, 0x301)]
    for o in (o12, o13):
        assert handed(o) == gfns((0, 0x100, 0x101), (1, 0x300, 0x301))
        assert sorted(zapped(o)) == [(0, 0x100, 1), (1, 0x300, 1)]
        assert origins(o) == ["kvm_flush_remote_tlbs"]


def test_no_smm_root_means_no_tdp_call_for_as1():
    # no fault ever ran in SMM: no as1 root, so only the rmap pass visits the as1 slot
    ev = ([slot(0, 0, 0x100, 0x10, HVA), slot(1, 0, 0x300, 0x10, HVA), host(HVA, 0x10, 0x1000)]
          + fault(0, 0x100) + [InvalidateRangeStart(HVA, HVA + P)])
    for cls in BOTH:
        _, o = last(cls, ev)
        assert ("zap_gfn_range", 1, 0x300, 0x301) not in hooks(o)
        assert ("kvm_unmap_rmapp", 1, 0x300, 0x301) in hooks(o)
        assert handed(o) == gfns((0, 0x100, 0x101), (1, 0x300, 0x301))


def pair_open():
    return [InvalidateRangeStart(OTHER, OTHER + P)]   # elevates the count, hits nothing


def test_change_pte_read_only_same_pfn():
    # 4K present leaf, read-only new pte, same pfn: zeroed then rewritten read-only and
    # access-tracked.  v5.12 set_tdp_spte: flush after zeroing + flush after the loop, returns 0
    # (no generic flush).  v5.13: one 1-page flush in kvm_tdp_mmu_set_spte_gfn, returns false.
    ev = small_slot() + pair_open() + [ChangePte(HVA + P, 0x1001, writable=False)]
    _, o12 = last(X86TdpV5_12, ev)
    _, o13 = last(X86TdpV5_13, ev)
    assert origins(o12) == ["set_tdp_spte", "set_tdp_spte"]
    assert origins(o13) == ["kvm_tdp_mmu_set_spte_gfn"]
    for o in (o12, o13):
        assert handed(o) == gfns((0, 0x101, 0x102))
        assert [(b.gfn, b.pfn, a.pfn, a.writable, a.young) for b, a in o.changed] == [(0x101, 0x1001, 0x1001, False, False)]
        assert o.warnings == [] and o.zapped == []


def test_change_pte_writable_zaps():
    ev = small_slot() + pair_open() + [ChangePte(HVA + P, 0x5000, writable=True)]
    _, o12 = last(X86TdpV5_12, ev)
    _, o13 = last(X86TdpV5_13, ev)
    assert zapped(o12) == zapped(o13) == [(0, 0x101, 1)]
    assert len(o12.flushes) == 2 and len(o13.flushes) == 1
    assert o12.warnings == o13.warnings == []


def test_change_pte_new_pfn_read_only_bugs_in_both():
    # the second tdp_mmu_set_spte still passes the original SPTE as old: present leaf ->
    # present leaf with another pfn -> BUG() in __handle_changed_spte
    ev = small_slot() + pair_open() + [ChangePte(HVA + P, 0x5000, writable=False)]
    for cls in BOTH:
        _, o = last(cls, ev)
        assert len(o.warnings) == 1 and o.warnings[0].startswith("BUG() in __handle_changed_spte")


def test_change_pte_leaves_huge_leaf_alone():
    # set_tdp_spte skips levels above 4K; set_spte_gfn returns false for them
    ev = huge_slot() + pair_open() + [ChangePte(HVA + P, 0x5000, writable=False)]
    for cls in BOTH:
        m, o = last(cls, ev)
        assert handed(o) == gfns((0, 0x201, 0x202))
        assert o.changed == [] and o.zapped == [] and o.flushes == [] and o.warnings == []
        assert m.leaves[(0, 0x200, 2)].pfn == 0x10000


def test_aging_dirty_bit_v512_clears_v513_keeps():
    ev = [slot(0, 0, 0x100, 0x10, HVA), host(HVA, 0x10, 0x1000)] + fault(0, 0x100, write=True)
    ev += [ClearYoung(HVA, HVA + P)]
    m12, o12 = last(X86TdpV5_12, ev)
    m13, o13 = last(X86TdpV5_13, ev)
    for m, o in ((m12, o12), (m13, o13)):
        assert o.young == 1 and o.flushes == [] and len(o.aged) == 1
        assert m.leaves[(0, 0x100, 1)].young is False
    assert m12.leaves[(0, 0x100, 1)].dirty is False      # v5.12 age_gfn_range clears Dirty
    assert m13.leaves[(0, 0x100, 1)].dirty is True       # v5.13 age_gfn_range keeps it


def test_memslot_delete_zaps_every_root():
    # kvm_arch_flush_shadow_memslot -> kvm_mmu_zap_all_fast zaps all TDP roots, not just the
    # deleted slot's gfns; v5.13 keeps the emptied roots listed as invalid until a reload
    far = HVA + (1 << 20)
    ev = ([slot(0, 0, 0x100, 0x10, HVA), slot(0, 1, 0x400, 0x10, far), host(HVA, 0x10, 0x1000),
           host(far, 0x10, 0x2000)] + fault(0, 0x100) + fault(0, 0x400) + [slot(0, 1, 0x400, 0, far)])
    for cls in BOTH:
        m, o = last(cls, ev)
        assert sorted(zapped(o)) == [(0, 0x100, 1), (0, 0x400, 1)]
        assert m.leaves == {} and all(not r.tables for r in m.roots)
    m, o = last(X86TdpV5_13, ev + [InvalidateRangeStart(HVA, HVA + P)])
    assert [c.detail for c in o.calls if c.hook == "zap_gfn_range"] == ["root0 invalid"]
    assert o.flushes == []
    m, _ = last(X86TdpV5_13, ev + fault(0, 0x100))
    assert [(r.id, r.invalid) for r in m.roots] == [(1, False)]


def test_divergences_v512_v513_are_known():
    ev = small_slot() + [TestYoung(OTHER), ChangePte(HVA + P, 0x5000, writable=False)]
    divs = diverge("x86-tdp", ("v5.12", X86TdpV5_12), ("v5.13", X86TdpV5_13), ev)
    got = {(d.cls, d.op, d.wrong_side, d.shape) for d in divs}
    assert got == {
        ("lock-without-hit", "test_young", "old", "no-slot-hit"),
        ("warning", "change_pte", "new", "WARN_ON_ONCE(!kvm->mmu_notifier_count) in change_pte"),
        ("warning", "change_pte", "both",
         "BUG() in __handle_changed_spte: present leaf SPTE replaced by a present leaf with a different pfn"),
    }
    assert all(d.known for d in divs)


def test_divergences_v513rc1_v513_are_known():
    ev = (huge_slot() + [slot(0, 1, 0x100, 0x10, HVA + (1 << 30)), host(HVA + (1 << 30), 0x10, 0x1000)]
          + fault(0, 0x100) + [ChangePte(HVA + P, 0x5000, writable=False)])
    divs = diverge("x86-tdp", ("v5.13-rc1", X86TdpV5_13), ("v5.13", X86TdpV5_13), ev)
    got = {(d.cls, d.op, d.wrong_side, d.shape) for d in divs}
    assert got == {
        ("missed-invalidation", "change_pte", "both", "old-pfn-still-mapped-huge-leaf"),
        ("warning", "change_pte", "both", "WARN_ON_ONCE(!kvm->mmu_notifier_count) in change_pte"),
    }
    assert all(d.known for d in divs)


def test_empty_table_flush_divergence_is_known():
    ev = [slot(0, 0, 0x200, 0x200, HVA), host(HVA, 0x200, 0x1000)] + fault(0, 0x200)
    ev += [InvalidateRangeStart(HVA, HVA + P), InvalidateRangeEnd(HVA, HVA + P),
           InvalidateRangeStart(HVA, HVA + 0x200 * P)]
    divs = diverge("x86-tdp", ("v5.12", X86TdpV5_12), ("v5.13", X86TdpV5_13), ev)
    assert [(d.cls, d.wrong_side, d.shape, d.known) for d in divs] == [
        ("spurious-flush", "both", "nothing-changed", True)]


def test_a_zap_that_yields_reads_the_sptes_anew_from_the_root():
    # tdp_iter_next after tdp_mmu_iter_cond_resched dropped mmu_lock: tdp_iter_restart walks
    # from the root again at the gfn it yielded at, so an SPTE another task zapped meanwhile is
    # no longer present and is skipped (the model used to zero it again and crash).  Task mode
    # lets other tasks run exactly there; this stands in for another mm task during the first
    # yield.  (A vCPU fault there installs nothing: the open invalidation makes it retry.)
    class Racy(X86TdpV5_13):
        def iter_cond_resched(self, flush):
            if flush:
                self.kvm_flush_remote_tlbs("tdp_mmu_iter_cond_resched")
            self.mmu_unlock()
            if not getattr(self, "raced", False):
                self.raced = True
                self.zap_leaf(self.leaves[(0, 0x101, 1)])        # another mm task's zap
            self.mmu_lock()
    ev = small_slot() + [InvalidateRangeStart(HVA, HVA + 4 * P)]
    model, o = last(Racy, ev)
    assert model.raced and not o.crashed
    # 0x100 by the zap, 0x101 by the other task, then the restarted walk: 0x102 and 0x103
    assert zapped(o) == [(0, 0x100, 1), (0, 0x101, 1), (0, 0x102, 1), (0, 0x103, 1)]
    assert not any(k[0] == 0 and 0x100 <= k[1] < 0x104 for k in model.leaves)
    # the yields: before 0x102 (the restarted walk finds 0x101 gone) and before 0x103
    assert origins(o) == ["tdp_mmu_iter_cond_resched"] * 2 + ["kvm_flush_remote_tlbs"]


# ----- f47e5bbbc92f (v5.18): the notifier unmap zaps leaves only, from v6.8 in our timeline -----

def test_from_v6_8_the_unmap_zaps_leaves_and_keeps_the_table():
    # the same range as test_whole_table_is_freed_with_its_own_flush: v5.17 zeroes the PDE and
    # frees its table (one flush for it, then the notifier's); v6.8's tdp_mmu_zap_leafs walks
    # through the table, zeroes the three 4K leaves, leaves the table, and only the notifier
    # flushes (flush = true from the first zeroed leaf)
    ev = one_table_three_leaves() + [InvalidateRangeStart(HVA, HVA + 0x200 * P)]
    m, o = last(resolve("x86-tdp", "v5.17"), ev)
    assert origins(o) == ["handle_removed_tdp_mmu_page", "kvm_flush_remote_tlbs"]
    assert (2, 0x200) not in m.roots[0].tables
    m, o = last(resolve("x86-tdp", "v6.8"), ev)
    assert zapped(o) == [(0, 0x200, 1), (0, 0x201, 1), (0, 0x203, 1)]
    assert (2, 0x200) in m.roots[0].tables
    assert [h for h, *_ in hooks(o) if h.startswith("tdp")] == ["tdp_mmu_zap_leafs"]
    # the two yields of the module's rule (before 0x201 and 0x203) each flush what is pending
    assert origins(o) == ["tdp_mmu_iter_cond_resched"] * 2 + ["kvm_flush_remote_tlbs"]


def test_from_v6_8_an_empty_table_costs_no_flush():
    # test_empty_table_still_costs_flushes on v6.8: nothing is zeroed (the empty table is no
    # leaf), so no flush at all, and the spurious flush v5.12..v5.17 show is gone
    ev = one_table_three_leaves() + [InvalidateRangeStart(HVA, HVA + 4 * P), InvalidateRangeEnd(HVA, HVA + 4 * P),
                                     InvalidateRangeStart(HVA, HVA + 0x200 * P)]
    for version in ("v6.8", "v6.10", "v6.19"):
        _, o = last(resolve("x86-tdp", version), ev)
        assert o.zapped == [] and origins(o) == [], version
    _, o = last(resolve("x86-tdp", "v5.17"), ev)
    assert origins(o) == ["handle_removed_tdp_mmu_page", "kvm_flush_remote_tlbs"]


# ----- root references: one per vCPU, and what the last put does ------------------------------
def vcpu_model(cls):
    """The model with the vCPU of each event taken from its task name (no scheduler: every event
    runs whole, as in one-task mode), so two vCPUs can hold references on one root."""
    class PerVcpu(cls):
        vcpu = "main"

        def current_vcpu(self) -> str:
            return self.vcpu
    return PerVcpu()


def run_vcpus(cls, events, m=None):
    """Run events on a fresh PerVcpu model of cls (or go on with m); return it and the
    observations."""
    from fuzz.runner import apply_event
    m = m or vcpu_model(cls)
    obs = []
    for e in events:
        m.vcpu = e.task
        obs.append(apply_event(m, e))
    return m, obs


def vfault(vcpu: str, as_id: int, gfn: int) -> list:
    from dataclasses import replace
    return [replace(e, task=vcpu) for e in fault(as_id, gfn)]


def two_vcpus_then_delete():
    """vcpu0 and vcpu1 both run on the as0 root (gfns 0x100, 0x101 mapped), then slot 1 (not
    the one mapped) is deleted: kvm_mmu_zap_all_fast empties the root and reloads both vCPUs."""
    far = HVA + (1 << 20)
    return ([slot(0, 0, 0x100, 0x10, HVA), slot(0, 1, 0x400, 0x10, far), host(HVA, 0x10, 0x1000)]
            + vfault("vcpu0", 0, 0x100) + vfault("vcpu1", 0, 0x101) + [slot(0, 1, 0x400, 0, far)])


def roots(m):
    return [(r.id, r.invalid, r.refs) for r in m.roots]


def test_v513_an_invalid_root_lives_until_the_last_vcpu_reloads():
    # v5.13 kvm_tdp_mmu_invalidate_all_roots takes an extra reference, which
    # kvm_tdp_mmu_zap_invalidated_roots puts after zapping: the two vCPUs' references remain.
    # vcpu0's reload (vcpu_enter_guest -> kvm_mmu_unload) puts one and, since
    # kvm_tdp_mmu_get_vcpu_root_hpa skips invalid roots, allocates root 1; the unmap's plain
    # iterator then walks both roots, the invalid one too.  vcpu1's reload puts the last
    # reference: kvm_tdp_mmu_put_root unlinks and frees root 0, and vcpu1 takes root 1
    m, _ = run_vcpus(X86TdpV5_13, two_vcpus_then_delete())
    assert roots(m) == [(0, True, 2)] and m.leaves == {}
    first = m.roots[0]
    m, obs = run_vcpus(None, vfault("vcpu0", 0, 0x102) + [InvalidateRangeStart(HVA, HVA + P)], m)
    assert roots(m) == [(1, False, 1), (0, True, 1)]
    assert [c.detail for c in obs[-1].calls if c.hook == "zap_gfn_range"] == ["root1", "root0 invalid"]
    m, _ = run_vcpus(None, [InvalidateRangeEnd(HVA, HVA + P)] + vfault("vcpu1", 0, 0x103), m)
    assert roots(m) == [(1, False, 2)] and first.freed and first.refs == 0


def test_v512_a_reloading_vcpu_takes_the_emptied_root_again_while_another_holds_it():
    # v5.12 never marks a TDP root invalid: kvm_mmu_zap_all_fast empties root 0 and reloads
    # the vCPUs; vcpu0's reload puts its reference (1 left, vcpu1's), then
    # get_tdp_mmu_vcpu_root finds root 0 with the same role and takes it again.  Only a root
    # whose last reference goes is freed, so one vCPU alone gets a new root (test above:
    # the one-task model frees it at the first reload)
    m, _ = run_vcpus(X86TdpV5_12, two_vcpus_then_delete() + vfault("vcpu0", 0, 0x102))
    assert roots(m) == [(0, False, 2)]
    assert (0, 0x102, 1) in m.leaves
    from dataclasses import replace
    m, _ = run_vcpus(X86TdpV5_12, [replace(e, task="main") for e in
                                   two_vcpus_then_delete() + vfault("vcpu0", 0, 0x102)])
    assert roots(m) == [(1, False, 1)]

"""MIPS models (impls/mips.py): hand-worked boundaries from arch/mips/kvm/mmu.c, v5.12 and v5.13.

Layout used by most tests (4 KiB pages):
    slot 0: gfns [0x100, 0x104) at hva HVA .. HVA + 4P
    slot 1: gfns [0x104, 0x108) at hva HVA + 16P   (GPA-adjacent to slot 0, not hva-adjacent)
    host:   HVA + i*P -> pfn 0x1000 + i
"""
from __future__ import annotations

import pytest

from language.trace import (ChangePte, ClearFlushYoung, ClearYoung, FaultBegin, FaultCommit,
                        GuestAccess, InvalidateRangeEnd, InvalidateRangeStart, Release, TestYoung)
from impls.machine import KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, Leaf
from impls.mips import MODELS, PTRS_PER_PTE, MipsV5_12, MipsV5_13
from util import HVA, P, diverge, fault, gfns, handed, host, run_model, slot

BOTH = [MipsV5_12, MipsV5_13]
WARN_CHANGE_PTE = "WARN_ON_ONCE(!kvm->mmu_notifier_count) in change_pte"
FLUSH_ORIGIN = {MipsV5_12: "flush_shadow_all", MipsV5_13: "kvm_flush_remote_tlbs"}


def base(*extra_faults: int, adjacent: bool = True) -> list:
    ev = [slot(0, 0, 0x100, 4, HVA), host(HVA, 32, 0x1000)]
    if adjacent:
        ev.append(slot(0, 1, 0x104, 4, HVA + 16 * P))
    for g in extra_faults:
        ev += fault(0, g)
    return ev


def zapped_gfns(obs) -> list[int]:
    return sorted(x.gfn for x in obs.zapped)


def test_models_table():
    m = MODELS["mips"]
    assert m["v5.12"][0] is MipsV5_12
    assert m["v5.13"][0] is MipsV5_13 and m["v5.13-rc1"][0] is MipsV5_13
    assert MipsV5_12.address_space_num == 1 and MipsV5_12.max_level == 1
    assert not MipsV5_12.uses_retry_hva and not MipsV5_12.readonly_mem


def test_no_readonly_slots():
    # MIPS has no __KVM_HAVE_READONLY_MEM: KVM_MEM_READONLY is refused
    _, obs = run_model(MipsV5_13, [slot(0, 0, 0x100, 4, HVA, flags=KVM_MEM_READONLY)])
    assert obs[0].error == "EINVAL"


# ----- unmap: exclusive g1 into the inclusive kvm_mips_flush_gpa_pt ---------------------------
@pytest.mark.parametrize("cls", BOTH)
def test_unmap_reaches_first_gfn_of_gpa_adjacent_slot(cls):
    # v5.12 kvm_unmap_hva_handler / v5.13 kvm_unmap_gfn_range: last page of slot 0 gives
    # g0 = 0x103, g1 = 0x104; the flush clears 0x103..0x104 inclusive, i.e. slot 1's first gfn
    ev = base(0x103, 0x104) + [InvalidateRangeStart(HVA + 3 * P, HVA + 4 * P)]
    m, obs = run_model(cls, ev)
    o = obs[-1]
    assert handed(o) == gfns((0, 0x103, 0x105))
    assert [(c.slot, c.start, c.end) for c in o.calls] == [(0, 0x103, 0x105)]
    assert zapped_gfns(o) == [0x103, 0x104]
    assert [(f.scope, f.locked, f.origin) for f in o.flushes] == [("all", True, FLUSH_ORIGIN[cls])]
    assert o.lock_taken and not o.warnings
    assert m.leaves == {}


@pytest.mark.parametrize("cls", BOTH)
def test_unmap_unaligned_range(cls):
    # hs = HVA+P+1 -> g0 = 0x101; he = HVA+2P+1 -> g1 = gfn(HVA+3P) = 0x103; flushed 0x101..0x103
    ev = base(0x101, 0x102, 0x103) + [InvalidateRangeStart(HVA + P + 1, HVA + 2 * P + 1)]
    _, obs = run_model(cls, ev)
    assert handed(obs[-1]) == gfns((0, 0x101, 0x104))
    assert zapped_gfns(obs[-1]) == [0x101, 0x102, 0x103]


@pytest.mark.parametrize("cls", BOTH)
def test_unmap_one_byte_range(cls):
    # [HVA+P, HVA+P+1): g0 = 0x101, g1 = gfn(HVA+2P) = 0x102 -> two gfns flushed
    ev = base(0x101, 0x102) + [InvalidateRangeStart(HVA + P, HVA + P + 1)]
    _, obs = run_model(cls, ev)
    assert handed(obs[-1]) == gfns((0, 0x101, 0x103))
    assert zapped_gfns(obs[-1]) == [0x101, 0x102]
    assert len(obs[-1].flushes) == 1


def test_unmap_empty_and_missing_ranges_v5_12_flush_anyway():
    # v5.12 kvm_unmap_hva_range: flush_shadow_all after the walk even if no slot was hit
    for start, end in [(HVA + P, HVA + P), (HVA + 100 * P, HVA + 101 * P)]:
        _, obs = run_model(MipsV5_12, base(0x101) + [InvalidateRangeStart(start, end)])
        o = obs[-1]
        assert o.calls == [] and o.zapped == []
        assert [(f.scope, f.locked, f.origin) for f in o.flushes] == [("all", True, "flush_shadow_all")]
        assert o.lock_taken


def test_unmap_empty_and_missing_ranges_v5_13_no_flush():
    # v5.13: no slot hit -> no handler returns true -> no flush; range_start still locks (on_lock)
    for start, end in [(HVA + P, HVA + P), (HVA + 100 * P, HVA + 101 * P)]:
        _, obs = run_model(MipsV5_13, base(0x101) + [InvalidateRangeStart(start, end)])
        o = obs[-1]
        assert o.calls == [] and o.zapped == [] and o.flushes == []
        assert o.lock_taken


@pytest.mark.parametrize("cls", BOTH)
def test_unmap_slot_hit_with_nothing_mapped_still_flushes(cls):
    # v5.12 flushes unconditionally; v5.13 kvm_unmap_gfn_range returns 1 for every slot hit
    _, obs = run_model(cls, base() + [InvalidateRangeStart(HVA, HVA + P)])
    assert obs[-1].zapped == [] and len(obs[-1].flushes) == 1


@pytest.mark.parametrize("cls", BOTH)
def test_hva_aliasing_both_slots(cls):
    # slot 2 shares slot 0's hva: both slots are walked, each with its own inclusive over-reach
    ev = base(0x101, adjacent=False) + [slot(0, 2, 0x300, 4, HVA)] + fault(0, 0x301) + [
        InvalidateRangeStart(HVA + P, HVA + 2 * P)]
    _, obs = run_model(cls, ev)
    assert handed(obs[-1]) == gfns((0, 0x101, 0x103), (0, 0x301, 0x303))
    assert zapped_gfns(obs[-1]) == [0x101, 0x301]
    assert len(obs[-1].flushes) == 1


@pytest.mark.parametrize("cls", BOTH)
def test_memslot_delete_uses_inclusive_last_gfn_correctly(cls):
    # kvm_arch_flush_shadow_memslot passes base_gfn + npages - 1: no over-reach into slot 1
    ev = base(0x103, 0x104) + [slot(0, 0, 0x100, 0, HVA)]
    m, obs = run_model(cls, ev)
    assert obs[-1].note == "delete"
    assert zapped_gfns(obs[-1]) == [0x103]
    assert [(f.scope, f.locked) for f in obs[-1].flushes] == [("all", True)]
    assert list(m.leaves) == [(0, 0x104, 1)]


@pytest.mark.parametrize("cls", BOTH)
def test_release_flushes_whole_gpa_without_lock(cls):
    # kvm_arch_flush_shadow_all: flush GPA 0..~0, then a full flush; no mmu_lock
    m, obs = run_model(cls, base(0x101, 0x104) + [Release()])
    assert zapped_gfns(obs[-1]) == [0x101, 0x104]
    assert [(f.scope, f.locked) for f in obs[-1].flushes] == [("all", False)]
    assert not obs[-1].lock_taken and m.pte_tables == set()


# ----- GPA page tables: "tables exist" for set_spte --------------------------------------
def table_layout() -> list:
    # one slot filling pte table 1 exactly: gfns [0x200, 0x400)
    return [slot(0, 0, 0x200, PTRS_PER_PTE, HVA), host(HVA, PTRS_PER_PTE, 0x1000)] + fault(0, 0x200)


def wrapped_change_pte(hva: int, pfn: int, writable: bool) -> list:
    page = hva & ~(P - 1)
    return [InvalidateRangeStart(page, page + P), ChangePte(hva, pfn, writable),
            InvalidateRangeEnd(page, page + P)]


@pytest.mark.parametrize("cls", BOTH)
def test_set_spte_installs_when_table_exists(cls):
    # partial flush (0x201..0x202) keeps pte table 1; the mm's own invalidation of the page
    # zaps nothing; set_spte then writes the absent pte of 0x205: a new, old+clean read-only leaf
    ev = table_layout() + [InvalidateRangeStart(HVA + P, HVA + 2 * P)] + \
        wrapped_change_pte(HVA + 5 * P, 0x9000, False)
    m, obs = run_model(cls, ev)
    assert m.pte_tables == {1}
    o = obs[-2]
    assert handed(o) == gfns((0, 0x205, 0x206))
    assert o.installed == [Leaf(0, 0x205, 1, 0x9000, 1, writable=False, young=False, dirty=False, hva=HVA + 5 * P)]
    assert o.flushes == [] and o.changed == [] and not o.warnings
    assert (0, 0x205, 1) in m.leaves
    assert not any(e.gfn == 0x205 for e in m.tlb.entries)   # nobody has used it yet


@pytest.mark.parametrize("cls", BOTH)
def test_set_spte_does_nothing_once_table_is_freed(cls):
    # whole-slot unmap: g0 = 0x200, g1 = 0x400; 0x200..0x400 inclusive covers table 1
    # (0x200..0x3ff) entirely, so it is freed; set_spte's lookup without allocation fails
    ev = table_layout() + [InvalidateRangeStart(HVA, HVA + PTRS_PER_PTE * P)] + \
        wrapped_change_pte(HVA + 5 * P, 0x9000, False)
    m, obs = run_model(cls, ev)
    assert handed(obs[len(table_layout())]) == gfns((0, 0x200, 0x401))
    assert m.pte_tables == set()
    o = obs[-2]
    assert handed(o) == gfns((0, 0x205, 0x206))
    assert o.installed == [] and o.changed == [] and m.leaves == {}


# ----- set_spte: need-flush computation (bare change_pte, so v5.13 also warns) ------------
def change_pte_obs(cls, ev):
    _, obs = run_model(cls, ev)
    o = obs[-1]
    assert o.warnings == ([WARN_CHANGE_PTE] if cls is MipsV5_13 else [])
    return o


@pytest.mark.parametrize("cls", BOTH)
def test_set_spte_young_to_old_readonly_needs_flush(cls):
    # old: present, young (fault); new read-only pte is old -> "needs flush"
    # v5.12 flushes inside kvm_set_spte_hva, v5.13 via the common walker
    o = change_pte_obs(cls, base(0x101) + [ChangePte(HVA + P, 0x2000, False)])
    assert handed(o) == gfns((0, 0x101, 0x102))
    (before, after), = o.changed
    assert (before.pfn, before.young) == (0x1001, True)
    assert (after.pfn, after.writable, after.young, after.dirty) == (0x2000, False, False, False)
    assert [(f.scope, f.locked, f.origin) for f in o.flushes] == [("all", True, FLUSH_ORIGIN[cls])]


@pytest.mark.parametrize("cls", BOTH)
def test_set_spte_old_pte_not_young_no_flush(cls):
    # clear_young (never flushes) makes the pte old; replacing an old pte asks no flush
    ev = base(0x101) + [ClearYoung(HVA + P, HVA + 2 * P), ChangePte(HVA + P, 0x2000, False)]
    o = change_pte_obs(cls, ev)
    assert len(o.changed) == 1 and o.flushes == []


@pytest.mark.parametrize("cls", BOTH)
def test_set_spte_same_pfn_dirty_no_flush(cls):
    # write fault: young + dirty; new writable pte is young + dirty, same pfn -> no flush
    o = change_pte_obs(cls, base() + fault(0, 0x101, write=True) + [ChangePte(HVA + P, 0x1001, True)])
    (before, after), = o.changed
    assert before.dirty and after.dirty and after.writable
    assert o.flushes == []


@pytest.mark.parametrize("cls", BOTH)
def test_set_spte_dirty_logging_slot_cleans(cls):
    # logging slot, old pte clean (read fault): the new pte is made clean (pte_mkclean);
    # same pfn, old clean -> no flush; another pfn -> flush
    ev = [slot(0, 0, 0x100, 4, HVA, flags=KVM_MEM_LOG_DIRTY_PAGES), host(HVA, 32, 0x1000)] + fault(0, 0x101)
    o = change_pte_obs(cls, ev + [ChangePte(HVA + P, 0x1001, True)])
    (_, after), = o.changed
    assert after.writable and not after.dirty and after.young
    assert o.flushes == []
    o = change_pte_obs(cls, ev + [ChangePte(HVA + P, 0x2000, True)])
    assert len(o.flushes) == 1


def test_set_spte_unaligned_hva_reaches_hva_adjacent_slot_v5_12_only():
    # v5.12 kvm_set_spte_hva walks [hva, hva + P): from HVA+3P+1 this reaches slot 3, hva-adjacent
    # at HVA+4P, whose first gfn 0x200 gets the new pfn.  v5.13 walks [hva, hva + 1).
    ev = base(0x103, adjacent=False) + [slot(0, 3, 0x200, 4, HVA + 4 * P)] + fault(0, 0x200) + [
        ChangePte(HVA + 3 * P + 1, 0x3000, False)]
    m, obs = run_model(MipsV5_12, ev)
    assert handed(obs[-1]) == gfns((0, 0x103, 0x104), (0, 0x200, 0x201))
    # kvm_for_each_memslot: highest base_gfn first, so slot 3 is handled before slot 0
    assert [(a.gfn, a.pfn) for _, a in obs[-1].changed] == [(0x200, 0x3000), (0x103, 0x3000)]
    assert [f.origin for f in obs[-1].flushes] == ["flush_shadow_all"]     # one flush for both
    m, obs = run_model(MipsV5_13, ev)
    assert handed(obs[-1]) == gfns((0, 0x103, 0x104))
    assert m.leaves[(0, 0x200, 1)].pfn == 0x1004


# ----- test_age -----------------------------------------------------------------------------
def test_test_age_v5_12_empty_range_always_zero():
    # v5.12 kvm_test_age_hva walks [hva, hva): no slot is hit, no handler runs, answer 0
    _, obs = run_model(MipsV5_12, base(0x101) + [TestYoung(HVA + P), TestYoung(HVA + P + 0x800)])
    for o in obs[-2:]:
        assert o.young == 0 and o.calls == [] and o.lock_taken


def test_test_age_v5_13_first_gfn():
    # v5.13 kvm_test_age_gfn: young bit of range.start's pte; no pte / no table -> 0
    ev = base(0x101) + [TestYoung(HVA + P + 0x800), TestYoung(HVA + 2 * P), TestYoung(HVA + 16 * P)]
    _, obs = run_model(MipsV5_13, ev)
    assert obs[-3].young == 1 and handed(obs[-3]) == gfns((0, 0x101, 0x102))
    assert obs[-2].young == 0 and handed(obs[-2]) == gfns((0, 0x102, 0x103))
    assert obs[-1].young == 0 and handed(obs[-1]) == gfns((0, 0x104, 0x105))
    # no slot hit: v5.13 does not even take mmu_lock (8931a454aea0)
    _, obs = run_model(MipsV5_13, base() + [TestYoung(HVA + 100 * P)])
    assert obs[-1].young == 0 and not obs[-1].lock_taken


# ----- age: exclusive g1 into the inclusive kvm_mips_mkold_gpa_pt ---------------------------
@pytest.mark.parametrize("cls", BOTH)
def test_age_reaches_gpa_adjacent_slot(cls):
    ev = base(0x103, 0x104) + [ClearYoung(HVA + 3 * P, HVA + 4 * P),
                               ClearFlushYoung(HVA + 3 * P, HVA + 4 * P),
                               GuestAccess(0, 0x104),
                               ClearFlushYoung(HVA + 3 * P, HVA + 4 * P)]
    _, obs = run_model(cls, ev)
    cy, cfy_old, _, cfy = obs[-4:]
    # clear_young: g0 = 0x103, g1 = 0x104, both aged; no flush ever
    assert handed(cy) == gfns((0, 0x103, 0x105))
    assert sorted(x.gfn for x in cy.aged) == [0x103, 0x104] and cy.young == 1 and cy.flushes == []
    # everything already old: 0, no flush
    assert cfy_old.young == 0 and cfy_old.aged == [] and cfy_old.flushes == []
    # only g1 (slot 1) is young: the answer is 1 and the generic code flushes
    assert [x.gfn for x in cfy.aged] == [0x104] and cfy.young == 1
    assert [(f.scope, f.locked, f.origin) for f in cfy.flushes] == [("all", True, "kvm_flush_remote_tlbs")]


# ----- fault path: mmu_notifier_retry (sequence based) ------------------------------------
@pytest.mark.parametrize("cls", BOTH)
def test_fault_retry_is_sequence_based(cls):
    # an invalidation of an unrelated range in progress makes the fault retry (count != 0),
    # whatever its hva (no mmu_notifier_retry_hva on MIPS)
    far = (HVA + 100 * P, HVA + 101 * P)
    ev = base() + [InvalidateRangeStart(*far), FaultBegin(7, 0, 0x101, False), FaultCommit(7),
                   InvalidateRangeEnd(*far), FaultBegin(8, 0, 0x101, False), FaultCommit(8)]
    m, obs = run_model(cls, ev)
    assert obs[-4].note == "retry"
    assert obs[-1].installed == [Leaf(0, 0x101, 1, 0x1001, 1, writable=True, young=True, dirty=False, hva=HVA + P)]
    assert m.pte_tables == {0x101 // PTRS_PER_PTE}


# ----- divergences between versions and the known list -----------------------------------
def sigs(divs) -> set[tuple[str, str, str, str]]:
    return {(d.cls, d.op, d.wrong_side, d.shape) for d in divs}


def test_diverge_v5_12_v5_13():
    ev = base(0x101, 0x103, 0x104) + [
        InvalidateRangeStart(HVA + 3 * P, HVA + 4 * P), InvalidateRangeEnd(HVA + 3 * P, HVA + 4 * P),
        TestYoung(HVA + P),
        InvalidateRangeStart(HVA + 100 * P, HVA + 101 * P), InvalidateRangeEnd(HVA + 100 * P, HVA + 101 * P),
        ClearYoung(HVA + 200 * P, HVA + 201 * P),
    ]
    divs = diverge("mips", ("v5.12", MipsV5_12), ("v5.13", MipsV5_13), ev)
    assert sigs(divs) == {
        ("gfn-set-mismatch", "invalidate_range_start", "both", "one-gfn-past-end"),
        ("over-invalidation", "invalidate_range_start", "both", "one-gfn-past-end"),
        ("gfn-set-mismatch", "test_young", "old", "no-gfns"),
        ("wrong-young", "test_young", "old", "false-negative"),
        ("spurious-flush", "invalidate_range_start", "old", "no-slot-hit"),
        ("lock-without-hit", "clear_young", "old", "no-slot-hit"),
    }
    assert all(d.known for d in divs), [d.signature for d in divs if not d.known]


def test_diverge_v5_12_v5_13_unaligned_change_pte():
    ev = base(0x103, adjacent=False) + [slot(0, 3, 0x200, 4, HVA + 4 * P)] + fault(0, 0x200) + [
        InvalidateRangeStart(HVA + 3 * P, HVA + 4 * P), ChangePte(HVA + 3 * P + 1, 0x3000, False),
        InvalidateRangeEnd(HVA + 3 * P, HVA + 4 * P)]
    divs = diverge("mips", ("v5.12", MipsV5_12), ("v5.13", MipsV5_13), ev)
    assert sigs(divs) == {
        ("gfn-set-mismatch", "invalidate_range_start", "both", "one-gfn-past-end"),
        ("stale-mapping", "change_pte", "old", "change_pte-left-wrong-pfn"),
        ("gfn-set-mismatch", "change_pte", "old", "extra-gfns"),
    }
    assert all(d.known for d in divs), [d.signature for d in divs if not d.known]


def test_diverge_v5_13_rc1_v5_13():
    # same handlers: only the shared inclusive-end behaviour, on both sides
    ev = base(0x103, 0x104) + [
        InvalidateRangeStart(HVA + 3 * P, HVA + 4 * P), InvalidateRangeEnd(HVA + 3 * P, HVA + 4 * P),
        InvalidateRangeStart(HVA + 2 * P, HVA + 3 * P), InvalidateRangeEnd(HVA + 2 * P, HVA + 3 * P),
        GuestAccess(0, 0x105), ClearYoung(HVA + 16 * P, HVA + 17 * P)]
    ev[-2:-2] = fault(0, 0x105)
    divs = diverge("mips", ("v5.13-rc1", MipsV5_13), ("v5.13", MipsV5_13), ev)
    assert sigs(divs) == {
        ("gfn-set-mismatch", "invalidate_range_start", "both", "one-gfn-past-end"),
        ("over-invalidation", "invalidate_range_start", "both", "one-gfn-past-end"),
        ("spurious-flush", "invalidate_range_start", "both", "nothing-changed"),
        ("gfn-set-mismatch", "clear_young", "both", "one-gfn-past-end"),
        ("wrong-young", "clear_young", "both", "aged-one-gfn-past-end"),
        ("wrong-young", "clear_young", "both", "false-positive"),
    }
    assert all(d.known for d in divs), [d.signature for d in divs if not d.known]


def test_diverge_change_pte_after_clear_young_outside_its_invalidation():
    # clear_young leaves 0x101 cached but old; change_pte (inside an invalidation of another
    # page, which the mm never does) replaces an old pte: no flush asked.  v5.12's range_start
    # flushed everything even without a slot hit, so only v5.13 keeps the stale TLB entry.
    far = (HVA + 8 * P, HVA + 9 * P)
    ev = base(0x101, adjacent=False) + [GuestAccess(0, 0x101), ClearYoung(HVA + P, HVA + 2 * P),
                                        InvalidateRangeStart(*far), ChangePte(HVA + P, 0x2000, False),
                                        InvalidateRangeEnd(*far)]
    divs = diverge("mips", ("v5.12", MipsV5_12), ("v5.13", MipsV5_13), ev)
    assert sigs(divs) == {
        ("gfn-set-mismatch", "clear_young", "both", "one-gfn-past-end"),
        ("spurious-flush", "invalidate_range_start", "old", "no-slot-hit"),
        ("missed-flush", "change_pte", "new", "no-flush-after-zap"),
    }
    assert all(d.known for d in divs), [d.signature for d in divs if not d.known]

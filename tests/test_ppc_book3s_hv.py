"""PowerPC Book3S HV (hash and radix): boundaries worked out by hand from the source.

Layout used throughout unless a test says otherwise: slot 0 = gfn [0x200, 0x600) at hva HVA
(gfn 0x200 <-> HVA, both 2M aligned), 4 KiB pages.
"""
from __future__ import annotations

import pytest

from language.trace import (ChangePte, ClearFlushYoung, ClearYoung, InvalidateRangeEnd,
                        InvalidateRangeStart, Release, TestYoung)
from impls.kvm_main_v5_13 import KvmGfnRange
from impls.ppc_book3s_hv import (MODELS, PpcHvRadixV5_12, PpcHvRadixV5_13,
                                 PpcHvRadixV5_13_32b48bf8514c, PpcHvRadixV5_13rc1, PpcHvV5_12,
                                 PpcHvV5_13, PpcHvV5_13_32b48bf8514c, PpcHvV5_13rc1)
from util import HVA, P, diverge, fault, gfns, handed, host, run_model, slot

M2 = 2 << 20
HASH = [PpcHvV5_12, PpcHvV5_13rc1, PpcHvV5_13_32b48bf8514c, PpcHvV5_13]
RADIX = [PpcHvRadixV5_12, PpcHvRadixV5_13rc1, PpcHvRadixV5_13_32b48bf8514c, PpcHvRadixV5_13]
FIXED = [PpcHvV5_12, PpcHvV5_13, PpcHvRadixV5_12, PpcHvRadixV5_13]   # handle every gfn


def base(npages=0x400, huge=False):
    ev = [slot(0, 0, 0x200, npages, HVA)]
    ev.append(host(HVA, 0x400, 0x10000, M2 if huge else P))
    return ev


def faults(*gs):
    return [e for g in gs for e in fault(0, g)]


def invalidate(start, end):
    return [InvalidateRangeStart(start, end), InvalidateRangeEnd(start, end)]


def zapped(obs):
    return [(x.gfn, x.pages) for x in obs.zapped]


def flushes(obs):
    return [(f.scope, f.origin, f.start, f.end) for f in obs.flushes]


def test_registry_and_arch_attributes():
    assert MODELS["ppc-hv-hash"]["v5.12"][0] is PpcHvV5_12
    assert MODELS["ppc-hv-radix"]["v5.13-rc1"][0] is PpcHvRadixV5_13rc1
    for cls in HASH:
        assert cls.arch == "ppc-hv-hash" and not cls.radix and cls.address_space_num == 1
    for cls in RADIX:
        assert cls.arch == "ppc-hv-radix" and cls.radix and cls.max_level == 3
    assert PpcHvV5_13_32b48bf8514c not in [m[0] for m in MODELS["ppc-hv-hash"].values()]


# ----- walker boundaries (v5.12 kvm_handle_hva_range; v5.13 __kvm_handle_hva_range) -----------
@pytest.mark.parametrize("cls", FIXED)
def test_unaligned_range_rounds_out_per_slot(cls):
    # gfn from hs = HVA+0x800 -> 0x200; end from he + PAGE_SIZE - 1 = HVA+3P -> 0x203 exclusive
    ev = base() + faults(0x200, 0x201, 0x202, 0x203) + [InvalidateRangeStart(HVA + 0x800, HVA + 2 * P + 1)]
    _, obs = run_model(cls, ev)
    o = obs[-1]
    assert handed(o) == gfns((0, 0x200, 0x203))
    assert zapped(o) == [(0x200, 1), (0x201, 1), (0x202, 1)]
    # unmap returns 0/false: only the helpers' own tlbies, no kvm_flush_remote_tlbs
    origin = "kvmppc_radix_tlbie_page" if cls.radix else "kvmppc_invalidate_hpte"
    assert flushes(o) == [("range", origin, g, g + 1) for g in (0x200, 0x201, 0x202)]
    assert o.lock_taken and not o.warnings


@pytest.mark.parametrize("cls", HASH + RADIX)
def test_empty_and_one_byte_ranges(cls):
    ev = base() + faults(0x200, 0x201) + [InvalidateRangeStart(HVA + P, HVA + P),
                                         InvalidateRangeStart(HVA + 2 * P - 1, HVA + 2 * P)]
    _, obs = run_model(cls, ev)
    empty, one = obs[-2], obs[-1]
    assert not empty.calls and not empty.zapped and empty.lock_taken   # both versions lock for range_start
    assert handed(one) == gfns((0, 0x201, 0x202))                      # last byte of the page: one gfn
    assert zapped(one) == [(0x201, 1)]


@pytest.mark.parametrize("cls", FIXED)
def test_single_address_hooks_use_hva_plus_one(cls):
    # v5.12 kvm_test_age_hva_hv / kvm_set_spte_hva_hv: [hva, hva+1); v5.13: [address, address+1)
    last = HVA + 0x400 * P - 1                       # last byte of the slot -> gfn 0x5ff only
    ev = base() + faults(0x5ff) + [TestYoung(last),
                                   InvalidateRangeStart(last, last + 1),
                                   ChangePte(last, 0x20000), InvalidateRangeEnd(last, last + 1)]
    _, obs = run_model(cls, ev)
    test, start, change = obs[-4], obs[-3], obs[-2]
    assert test.young == 1 and handed(test) == gfns((0, 0x5ff, 0x600))
    assert zapped(start) == [(0x5ff, 1)]
    assert handed(change) == gfns((0, 0x5ff, 0x600)) and not change.zapped and not change.flushes


@pytest.mark.parametrize("cls", [PpcHvV5_12, PpcHvRadixV5_12])
def test_v512_change_pte_unmaps_and_ignores_pte(cls):
    # v5.12 kvm_set_spte_hva_hv: the unmap helper on [hva, hva+1); returns 0, so the generic
    # layer does not flush; the helper's own tlbie does
    ev = base() + faults(0x201) + [ChangePte(HVA + P + 5, 0x30000)]
    m, obs = run_model(cls, ev)
    o = obs[-1]
    assert handed(o) == gfns((0, 0x201, 0x202)) and zapped(o) == [(0x201, 1)] and not o.changed
    assert [f.origin for f in o.flushes] == ["kvmppc_radix_tlbie_page" if cls.radix else "kvmppc_invalidate_hpte"]
    assert m.mmu_notifier_seq == 1                   # v5.12 generic change_pte bumps the seq


@pytest.mark.parametrize("cls", FIXED)
def test_hva_aliasing_reaches_both_slots(cls):
    # two slots on the same hva: the walker visits slot 1 (higher base_gfn) first, then slot 0
    ev = [slot(0, 0, 0x200, 4, HVA), slot(0, 1, 0x1000, 4, HVA), host(HVA, 4, 0x10000)]
    ev += faults(0x201, 0x1001) + [InvalidateRangeStart(HVA + P, HVA + 2 * P)]
    _, obs = run_model(cls, ev)
    o = obs[-1]
    assert [(c.slot, c.start, c.end) for c in o.calls] == [(1, 0x1001, 0x1002), (0, 0x201, 0x202)]
    assert zapped(o) == [(0x1001, 1), (0x201, 1)]


@pytest.mark.parametrize("cls", FIXED)
def test_range_reaching_gpa_adjacent_slot_is_clamped(cls):
    # slot 1 is GPA-adjacent (gfn 0x204) but hva-distant: a range past slot 0's end hits nothing there
    ev = [slot(0, 0, 0x200, 4, HVA), slot(0, 1, 0x204, 4, HVA + (16 << 20)),
          host(HVA, 4, 0x10000), host(HVA + (16 << 20), 4, 0x20000)]
    ev += faults(0x203, 0x204) + [InvalidateRangeStart(HVA + 3 * P, HVA + 8 * P)]
    _, obs = run_model(cls, ev)
    o = obs[-1]
    assert handed(o) == gfns((0, 0x203, 0x204)) and zapped(o) == [(0x203, 1)]


# ----- hash: large HPTEs live on their first gfn's rmap ------------------------------------------
@pytest.mark.parametrize("cls", [PpcHvV5_12, PpcHvV5_13])
def test_hash_large_hpte_reached_only_through_first_gfn(cls):
    # book3s_hv_rm_mmu.c kvmppc_do_h_enter chains a large HPTE on rmap[aligned gfn]
    ev = base(huge=True) + faults(0x205)
    ev += [InvalidateRangeStart(HVA + P, HVA + M2), TestYoung(HVA + 5 * P), TestYoung(HVA),
           ClearYoung(HVA + P, HVA + M2)]
    ev += [InvalidateRangeEnd(HVA + P, HVA + M2), InvalidateRangeStart(HVA, HVA + P)]
    m, obs = run_model(cls, ev)
    inst = obs[len(base()) + 1]
    assert [(x.gfn, x.level, x.pages) for x in inst.installed] == [(0x200, 2, 512)]
    partial, t_mid, t_first, age_mid, _, first = obs[-6:]
    assert handed(partial) == gfns((0, 0x201, 0x400)) and not partial.zapped   # missed
    assert t_mid.young == 0 and t_first.young == 1
    assert age_mid.young == 0 and not age_mid.aged
    assert zapped(first) == [(0x200, 512)]
    assert flushes(first) == [("range", "kvmppc_invalidate_hpte", 0x200, 0x400)]


@pytest.mark.parametrize("cls", [PpcHvV5_12, PpcHvV5_13])
def test_hash_large_page_only_when_it_fits_the_slot(cls):
    # hash fault path: a 2M HPTE only where the whole frame lies in the slot (default rule)
    ev = [slot(0, 0, 0x200, 4, HVA), host(HVA, 0x200, 0x10000, M2)] + faults(0x200)
    _, obs = run_model(cls, ev)
    assert [(x.gfn, x.level) for x in obs[-1].installed] == [(0x200, 1)]


@pytest.mark.parametrize("cls", [PpcHvV5_12, PpcHvV5_13])
def test_hash_referenced_bit_outlives_the_hpte(cls):
    # kvmppc_unmap_hpte ORs R into the rmap word; kvm_age_rmapp / kvm_test_age_rmapp report it
    ev = base() + faults(0x200) + invalidate(HVA, HVA + P)
    ev += [TestYoung(HVA), ClearFlushYoung(HVA, HVA + P), TestYoung(HVA)]
    m, obs = run_model(cls, ev)
    t1, cfy, t2 = obs[-3:]
    assert not m.leaves
    assert t1.young == 1
    assert cfy.young == 1 and not cfy.aged
    assert flushes(cfy) == [("all", "kvm_flush_remote_tlbs", 0, 0)]   # generic flush on young
    assert t2.young == 0                                               # age cleared REFERENCED


@pytest.mark.parametrize("cls", [PpcHvV5_12, PpcHvV5_13])
def test_hash_age_flushes_by_itself(cls):
    # kvm_age_rmapp -> kvmppc_clear_ref_hpte: tlbie even for clear_young
    ev = base() + faults(0x200, 0x201) + [ClearYoung(HVA, HVA + 2 * P)]
    _, obs = run_model(cls, ev)
    o = obs[-1]
    assert o.young == 1 and [x.gfn for x in o.aged] == [0x200, 0x201]
    assert flushes(o) == [("range", "kvmppc_clear_ref_hpte", 0x200, 0x201),
                          ("range", "kvmppc_clear_ref_hpte", 0x201, 0x202)]


def test_hash_memslot_move_keeps_rmap_words_delete_frees_them():
    # kvmppc_core_prepare_memory_region_hv allocates rmaps on create only; the flush on move
    # harvests R into the kept array, so the moved slot's first page tests young
    ev = base() + faults(0x200) + [slot(0, 0, 0x800, 0x400, HVA), TestYoung(HVA),
                                   slot(0, 0, 0x800, 0, HVA), slot(0, 0, 0x800, 0x400, HVA), TestYoung(HVA)]
    m, obs = run_model(PpcHvV5_13, ev)
    move, t_moved, _, _, t_new = obs[-5:]
    assert zapped(move) == [(0x200, 1)]
    assert flushes(move) == [("range", "kvmppc_invalidate_hpte", 0x200, 0x201)]
    assert t_moved.young == 1 and t_new.young == 0


# ----- radix: huge leaves go whole --------------------------------------------------------------
@pytest.mark.parametrize("cls", [PpcHvRadixV5_12, PpcHvRadixV5_13])
def test_radix_partial_range_removes_whole_2m_leaf(cls):
    ev = base(huge=True) + faults(0x203) + [ClearYoung(HVA + 7 * P, HVA + 9 * P),
                                             InvalidateRangeStart(HVA + 5 * P, HVA + 6 * P)]
    _, obs = run_model(cls, ev)
    age, inv = obs[-2:]
    assert age.young == 1 and [(x.gfn, x.pages) for x in age.aged] == [(0x200, 512)]
    assert not age.flushes                           # kvm_age_radix has no flush, clear_young none
    assert handed(inv) == gfns((0, 0x205, 0x206))
    assert zapped(inv) == [(0x200, 512)]
    assert flushes(inv) == [("range", "kvmppc_radix_tlbie_page", 0x200, 0x400)]


@pytest.mark.parametrize("cls", [PpcHvRadixV5_12, PpcHvRadixV5_13])
def test_radix_fault_levels(cls):
    # kvmppc_book3s_instantiate_page: 1G only for a 1G host pte with gpa/hva congruent in 1G;
    # a 1G host pte that is only 2M-congruent maps 4K (the shift must equal PMD_SHIFT for 2M)
    G = 1 << 30
    ev = [slot(0, 0, 0x40000, 0x40000, HVA), slot(0, 1, 0x80200, 0x400, HVA + G),
          host(HVA, 0x80000, 0x40000, G)]
    ev += faults(0x40123, 0x80201)
    _, obs = run_model(cls, ev)
    assert [(x.gfn, x.level, x.pages) for x in obs[-3].installed] == [(0x40000, 3, 0x40000)]
    assert [(x.gfn, x.level) for x in obs[-1].installed] == [(0x80201, 1)]


@pytest.mark.parametrize("cls", [PpcHvRadixV5_12, PpcHvRadixV5_13])
def test_radix_huge_leaf_ignores_slot_bounds(cls):
    # no memslot check in kvmppc_book3s_instantiate_page: a 4-page slot on a 2M host page gets
    # a 2M leaf, which then covers the GPA-adjacent slot 1 as well; hitting slot 1 removes it
    ev = [slot(0, 0, 0x200, 4, HVA), slot(0, 1, 0x204, 4, HVA + (16 << 20)),
          host(HVA, 0x200, 0x10000, M2), host(HVA + (16 << 20), 4, 0x20000)]
    ev += faults(0x200) + faults(0x204) + [InvalidateRangeStart(HVA + (16 << 20), HVA + (16 << 20) + P)]
    _, obs = run_model(cls, ev)
    assert [(x.gfn, x.pages) for x in obs[-4].installed] == [(0x200, 512)]
    assert obs[-2].note == "already mapped"
    assert zapped(obs[-1]) == [(0x200, 512)]


def test_radix_memslot_flush_bumps_seq_and_release_keeps_leaves():
    # kvmppc_radix_flush_memslot increments mmu_notifier_seq; powerpc's kvm_arch_flush_shadow_all is empty
    ev = base() + faults(0x200) + [slot(0, 0, 0x200, 0, HVA)]
    m, obs = run_model(PpcHvRadixV5_13, ev)
    assert zapped(obs[-1]) == [(0x200, 1)] and m.mmu_notifier_seq == 1
    m, obs = run_model(PpcHvV5_13, base() + faults(0x200) + [Release()])
    assert not obs[-1].zapped and not obs[-1].flushes and len(m.leaves) == 1


# ----- the v5.13 cycle -----------------------------------------------------------------------------
FOUR = base() + faults(0x200, 0x201, 0x202, 0x203)


@pytest.mark.parametrize("cls,want", [
    (PpcHvV5_13rc1, [0x200]), (PpcHvRadixV5_13rc1, [0x200]),          # b1c5356e873c: start only
    (PpcHvV5_13_32b48bf8514c, [0x200]),                               # hash loop passes start
    (PpcHvRadixV5_13_32b48bf8514c, [0x200, 0x201, 0x202, 0x203]),     # radix loop passes gfn
    (PpcHvV5_13, [0x200, 0x201, 0x202, 0x203]), (PpcHvRadixV5_13, [0x200, 0x201, 0x202, 0x203]),
])
def test_unmap_across_the_cycle(cls, want):
    _, obs = run_model(cls, FOUR + [InvalidateRangeStart(HVA, HVA + 4 * P)])
    o = obs[-1]
    assert [x.gfn for x in o.zapped] == want
    assert handed(o) == (gfns((0, 0x200, 0x201)) if len(want) == 1 else gfns((0, 0x200, 0x204)))
    if cls is PpcHvV5_13_32b48bf8514c:
        assert o.calls[0].detail == "range->start passed 4 times"


def test_rc1_radix_age_falls_through_to_hash_rmap():
    # v5.13-rc1 kvm_age_gfn_hv: kvm_age_radix(start) result dropped, kvm_age_rmapp(start) (empty) returned
    ev = FOUR + [ClearFlushYoung(HVA, HVA + 4 * P), TestYoung(HVA + P)]
    _, obs = run_model(PpcHvRadixV5_13rc1, ev)
    cfy, t = obs[-2:]
    assert [x.gfn for x in cfy.aged] == [0x200] and cfy.young == 0 and not cfy.flushes
    assert [c.hook for c in cfy.calls] == ["kvm_age_radix", "kvm_age_rmapp"]
    assert handed(cfy) == gfns((0, 0x200, 0x201))
    assert t.young == 0 and [c.hook for c in t.calls] == ["kvm_test_age_radix", "kvm_test_age_rmapp"]


def test_rc1_hash_age_start_only():
    _, obs = run_model(PpcHvV5_13rc1, FOUR + [ClearFlushYoung(HVA + P, HVA + 4 * P)])
    o = obs[-1]
    assert [x.gfn for x in o.aged] == [0x201] and o.young == 1
    assert [f.origin for f in o.flushes] == ["kvmppc_clear_ref_hpte", "kvm_flush_remote_tlbs"]


@pytest.mark.parametrize("cls", [PpcHvV5_13, PpcHvRadixV5_13, PpcHvV5_13_32b48bf8514c])
def test_v513_warns_when_test_age_or_set_spte_get_more_than_one_gfn(cls):
    # 32b48bf8514c added WARN_ON(range->start + 1 != range->end); the walker never trips it
    m, _ = run_model(cls, FOUR)
    s = m.memslots.in_as(0)[0]
    m.begin("direct")
    assert m.kvm_test_age_gfn(KvmGfnRange(s, 0x200, 0x202, None, False)) is True
    m.kvm_set_spte_gfn(KvmGfnRange(s, 0x201, 0x203, None, False))
    assert m.obs.warnings == ["WARN_ON(range->start + 1 != range->end) in kvm_test_age_gfn_hv",
                              "WARN_ON(range->start + 1 != range->end) in kvm_set_spte_gfn_hv"]
    assert zapped(m.obs) == [(0x201, 1)]             # set_spte still handles start only
    _, obs = run_model(cls, FOUR + [TestYoung(HVA + P + 3)])
    assert not obs[-1].warnings


def test_rc1_has_no_warnings():
    m, _ = run_model(PpcHvV5_13rc1, FOUR)
    s = m.memslots.in_as(0)[0]
    m.begin("direct")
    m.kvm_test_age_gfn(KvmGfnRange(s, 0x200, 0x202, None, False))
    assert not m.obs.warnings


# ----- divergences and the known list ----------------------------------------------------------
def sigs(divs):
    return sorted((d.cls, d.wrong_side, d.op, d.shape, d.known) for d in divs)


def test_diverge_hash_v512_v513_large_hpte():
    ev = base(huge=True) + faults(0x205) + invalidate(HVA + P, HVA + 2 * P)
    d = diverge("ppc-hv-hash", ("v5.12", PpcHvV5_12), ("v5.13", PpcHvV5_13), ev)
    assert sigs(d) == [("missed-invalidation", "both", "invalidate_range_start",
                        "partial-huge-leaf-kept-first-gfn-outside", True)]


def test_diverge_hash_rc1_unmaps_first_gfn_only():
    ev = FOUR + invalidate(HVA, HVA + 4 * P)
    want_new = [("gfn-set-mismatch", "new", "invalidate_range_start", "only-first-gfn", True),
                ("missed-invalidation", "new", "invalidate_range_start", "only-first-gfn", True)]
    d = diverge("ppc-hv-hash", ("v5.12", PpcHvV5_12), ("v5.13-rc1", PpcHvV5_13rc1), ev)
    assert sigs(d) == sorted(want_new)
    d = diverge("ppc-hv-hash", ("v5.13-rc1", PpcHvV5_13rc1), ("v5.13", PpcHvV5_13), ev)
    assert sigs(d) == sorted((c, "old", o, s, k) for c, _, o, s, k in want_new)


def test_diverge_hash_referenced_false_positive_is_known():
    ev = base() + faults(0x200) + invalidate(HVA, HVA + P) + [TestYoung(HVA)]
    d = diverge("ppc-hv-hash", ("v5.12", PpcHvV5_12), ("v5.13", PpcHvV5_13), ev)
    assert sigs(d) == [("wrong-young", "both", "test_young", "false-positive", True)]


def test_diverge_radix_v512_v513_leaf_outside_slot():
    ev = [slot(0, 0, 0x200, 4, HVA), host(HVA, 0x200, 0x10000, M2)] + faults(0x201)
    d = diverge("ppc-hv-radix", ("v5.12", PpcHvRadixV5_12), ("v5.13", PpcHvRadixV5_13), ev)
    assert sigs(d) == [("stale-mapping", "both", "fault_commit", "fault-installed-leaf-outside-memslot", True)]


def test_diverge_radix_rc1():
    ev = FOUR + invalidate(HVA, HVA + 4 * P) + [ClearFlushYoung(HVA + P, HVA + 3 * P), TestYoung(HVA + 2 * P)]
    want = [("gfn-set-mismatch", "invalidate_range_start", "only-first-gfn"),
            ("missed-invalidation", "invalidate_range_start", "only-first-gfn"),
            ("gfn-set-mismatch", "clear_flush_young", "only-first-gfn"),
            ("missed-flush", "clear_flush_young", "no-flush-after-age"),
            ("wrong-young", "clear_flush_young", "false-negative"),
            ("wrong-young", "clear_flush_young", "young-bit-not-cleared"),
            ("wrong-young", "test_young", "false-negative")]
    d = diverge("ppc-hv-radix", ("v5.12", PpcHvRadixV5_12), ("v5.13-rc1", PpcHvRadixV5_13rc1), ev)
    assert sigs(d) == sorted((c, "new", o, s, True) for c, o, s in want)
    d = diverge("ppc-hv-radix", ("v5.13-rc1", PpcHvRadixV5_13rc1), ("v5.13", PpcHvRadixV5_13), ev)
    assert sigs(d) == sorted((c, "old", o, s, True) for c, o, s in want)


def test_diverge_lock_elision_is_known():
    ev = base() + [TestYoung(HVA + (64 << 20))]
    for arch, old, new in (("ppc-hv-hash", PpcHvV5_12, PpcHvV5_13),
                           ("ppc-hv-radix", PpcHvRadixV5_12, PpcHvRadixV5_13)):
        d = diverge(arch, ("v5.12", old), ("v5.13", new), ev)
        assert sigs(d) == [("lock-without-hit", "old", "test_young", "no-slot-hit", True)]


def test_radix_leaf_starting_before_its_slot_records_its_host_address():
    # kvmppc_book3s_instantiate_page: gfn 0x201 at HVA+P is 2M-congruent, so the 2M leaf starts at
    # gfn 0x200, outside the slot; it was made from hva HVA (not from any slot's gfn_to_hva)
    ev = [slot(0, 0, 0x201, 4, HVA + P), host(HVA, 0x200, 0x10000, M2)] + faults(0x201)
    ev += invalidate(HVA, HVA + P)
    m, obs = run_model(PpcHvRadixV5_13, ev)
    leaf = obs[-3].installed[0]
    assert (leaf.gfn, leaf.pages, leaf.hva, leaf.pfn) == (0x200, 512, HVA, 0x10000)
    assert not obs[-2].calls and len(m.leaves) == 1     # hva HVA is in no memslot: leaf stays
    d = diverge("ppc-hv-radix", ("v5.12", PpcHvRadixV5_12), ("v5.13", PpcHvRadixV5_13), ev)
    assert sigs(d) == [("missed-invalidation", "both", "invalidate_range_start", "mapping-outside-memslots", True),
                       ("stale-mapping", "both", "fault_commit", "fault-installed-leaf-outside-memslot", True)]

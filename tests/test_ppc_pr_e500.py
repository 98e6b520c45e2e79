"""Hand-worked boundary examples for PowerPC Book3S PR (ppc-pr) and e500 (e500), v5.12 /
v5.13-rc1 / v5.13.  4 KiB pages.  Every expected value is derived from the kernel source named
in the comment next to it."""
from __future__ import annotations

import pytest

from language.trace import (ChangePte, ClearFlushYoung, ClearYoung, FaultBegin, FaultCommit,
                        GuestAccess, InvalidateRangeEnd, InvalidateRangeStart, TestYoung)
from impls.machine import LEVEL_4K
from impls.observation import Flush
from impls.ppc_book3s_pr import MODELS as PR_MODELS, PpcPrV5_12, PpcPrV5_13
from impls.ppc_e500 import MODELS as E500_MODELS, E500V5_12, E500V5_13
from util import HVA, P, diverge, fault, gfns, handed, host, run_model, slot

PR = {"v5.12": PpcPrV5_12, "v5.13": PpcPrV5_13}
E5 = {"v5.12": E500V5_12, "v5.13": E500V5_13}
FAR = HVA + 0x10000000          # an hva in no memslot


def eight_pages() -> list:
    """Slot 0: gfn [0x100, 0x108) at HVA, host pfns 0x5000.., every gfn faulted in."""
    ev = [slot(0, 0, 0x100, 8, HVA), host(HVA, 8, 0x5000)]
    for i in range(8):
        ev += fault(0, 0x100 + i)
    return ev


def zapped_gfns(obs) -> list[int]:
    return sorted(x.gfn for x in obs.zapped)


def pr_flushes(*pages: int) -> list[Flush]:
    # book3s_mmu_hpte.c invalidate_pte: one tlbie per invalidated shadow HPTE, under mmu_lock
    return [Flush("range", True, "kvmppc_mmu_invalidate_pte", 0, g, g + 1) for g in pages]


E500_FLUSH = [Flush("all", True, "kvm_flush_remote_tlbs")]


# ------------------------------------------------------------------ registry
def test_models_registered():
    assert set(PR_MODELS["ppc-pr"]) == {"v5.12", "v5.13-rc1", "v5.13"}
    assert set(E500_MODELS["e500"]) == {"v5.12", "v5.13-rc1", "v5.13"}
    # rc1 == final for both arches: the rc fixes touched only book3s_64_mmu_hv.c
    assert PR_MODELS["ppc-pr"]["v5.13-rc1"][0] is PpcPrV5_13
    assert E500_MODELS["e500"]["v5.13-rc1"][0] is E500V5_13
    for cls in (PpcPrV5_12, PpcPrV5_13, E500V5_12, E500V5_13):
        assert cls.address_space_num == 1 and cls.max_level == LEVEL_4K
        assert cls.page_shift == 12 and not cls.readonly_mem and not cls.uses_retry_hva


# ------------------------------------------------------------------ Book3S PR
@pytest.mark.parametrize("version", ["v5.12", "v5.13"])
def test_pr_unmap_is_half_open(version):
    # v5.12 book3s_pr.c do_kvm_unmap_hva / v5.13 do_kvm_unmap_gfn: pflush [g0<<12, g1<<12) and
    # book3s_mmu_hpte.c kvmppc_mmu_pte_pflush drops raddr in [pa_start, pa_end): gfn 0x103 stays
    m, obs = run_model(PR[version], eight_pages() + [InvalidateRangeStart(HVA + P, HVA + 3 * P)])
    o = obs[-1]
    assert handed(o) == gfns((0, 0x101, 0x103))
    assert zapped_gfns(o) == [0x101, 0x102]
    assert o.flushes == pr_flushes(0x101, 0x102)      # no generic flush: hooks return 0/false
    assert o.lock_taken and not o.warnings
    assert sorted(g for (_, g, _) in m.leaves) == [0x100, 0x103, 0x104, 0x105, 0x106, 0x107]


@pytest.mark.parametrize("version", ["v5.12", "v5.13"])
def test_pr_unaligned_range_rounds_out(version):
    # start rounded down (hva_to_gfn of hva_start), end rounded up (hva_end + PAGE_SIZE - 1):
    # [HVA+P+1, HVA+3P-1) -> gfns [0x101, 0x103); [HVA+P+1, HVA+3P+1) -> [0x101, 0x104)
    _, obs = run_model(PR[version], eight_pages() + [
        InvalidateRangeStart(HVA + P + 1, HVA + 3 * P - 1),
        InvalidateRangeStart(HVA + P + 1, HVA + 3 * P + 1)])
    assert handed(obs[-2]) == gfns((0, 0x101, 0x103))
    assert zapped_gfns(obs[-2]) == [0x101, 0x102]
    assert handed(obs[-1]) == gfns((0, 0x101, 0x104))
    assert zapped_gfns(obs[-1]) == [0x103]            # 0x101 and 0x102 already gone


@pytest.mark.parametrize("version", ["v5.12", "v5.13"])
def test_pr_empty_and_one_byte_ranges(version):
    # empty range: hva_start >= hva_end for every slot, nothing handed (both walkers); the lock is
    # still taken (v5.12 entry point always locks, v5.13 range_start locks via on_lock)
    # 1-byte range [HVA+2P+0xfff, HVA+3P): exactly gfn 0x102
    _, obs = run_model(PR[version], eight_pages() + [
        InvalidateRangeStart(HVA + P, HVA + P),
        InvalidateRangeStart(HVA + 2 * P + 0xfff, HVA + 3 * P)])
    assert obs[-2].calls == [] and obs[-2].zapped == [] and obs[-2].flushes == []
    assert obs[-2].lock_taken
    assert handed(obs[-1]) == gfns((0, 0x102, 0x103))
    assert zapped_gfns(obs[-1]) == [0x102]


def test_pr_change_pte_unaligned_covers_two_pages_in_v5_12():
    # v5.12 book3s_pr.c kvm_set_spte_hva_pr: do_kvm_unmap_hva(hva, hva + PAGE_SIZE): an unaligned
    # hva covers its page and the next one.  v5.13 kvm_mmu_notifier_change_pte: [addr, addr+1).
    # A far-away range is open so the v5.13 WARN on mmu_notifier_count == 0 stays quiet.
    ev = eight_pages() + [InvalidateRangeStart(FAR, FAR + P), ChangePte(HVA + 5 * P + 0x10, 0x9000)]
    _, old = run_model(PpcPrV5_12, ev)
    _, new = run_model(PpcPrV5_13, ev)
    assert handed(old[-1]) == gfns((0, 0x105, 0x107))
    assert zapped_gfns(old[-1]) == [0x105, 0x106]
    assert old[-1].flushes == pr_flushes(0x105, 0x106)
    assert [c.hook for c in old[-1].calls] == ["kvm_set_spte_hva_pr"]
    assert handed(new[-1]) == gfns((0, 0x105, 0x106))
    assert zapped_gfns(new[-1]) == [0x105]
    assert new[-1].flushes == pr_flushes(0x105)
    assert [c.hook for c in new[-1].calls] == ["kvm_set_spte_gfn_pr"]
    assert not old[-1].warnings and not new[-1].warnings
    # the pte is ignored: nothing is changed in place, only dropped (refaulted later)
    assert old[-1].changed == [] and new[-1].changed == []


@pytest.mark.parametrize("version", ["v5.12", "v5.13"])
def test_pr_change_pte_aligned_is_one_page(version):
    # [hva, hva + PAGE_SIZE) and [hva, hva + 1) agree for a page-aligned hva
    ev = eight_pages() + [InvalidateRangeStart(FAR, FAR + P), ChangePte(HVA + 5 * P, 0x9000)]
    _, obs = run_model(PR[version], ev)
    assert handed(obs[-1]) == gfns((0, 0x105, 0x106))
    assert zapped_gfns(obs[-1]) == [0x105]


def _two_slots(b_gfn: int) -> list:
    # slot 0: gfn [0x100, 0x104) at HVA; slot 1: gfn [b_gfn, b_gfn+4) at HVA + 4P (hva-adjacent)
    ev = [slot(0, 0, 0x100, 4, HVA), slot(0, 1, b_gfn, 4, HVA + 4 * P), host(HVA, 8, 0x5000)]
    for i in range(4):
        ev += fault(0, 0x100 + i) + fault(0, b_gfn + i)
    return ev


def test_pr_change_pte_reaches_gpa_adjacent_slot_in_v5_12():
    # the last page of slot 0 at an unaligned hva: v5.12 [hva, hva+P) also clamps into slot 1
    # (do_kvm_unmap_hva walks every slot), handing slot 1's first gfn 0x104; walk order is
    # base_gfn descending (kvm_for_each_memslot), so slot 1 comes first
    ev = _two_slots(0x104) + [InvalidateRangeStart(FAR, FAR + P), ChangePte(HVA + 3 * P + 0x800, 0x9000)]
    _, old = run_model(PpcPrV5_12, ev)
    _, new = run_model(PpcPrV5_13, ev)
    assert [(c.slot, c.start, c.end) for c in old[-1].calls] == [(1, 0x104, 0x105), (0, 0x103, 0x104)]
    assert zapped_gfns(old[-1]) == [0x103, 0x104]
    assert [(c.slot, c.start, c.end) for c in new[-1].calls] == [(0, 0x103, 0x104)]
    assert zapped_gfns(new[-1]) == [0x103]


def test_pr_change_pte_reaches_gpa_distant_slot_in_v5_12():
    ev = _two_slots(0x200) + [InvalidateRangeStart(FAR, FAR + P), ChangePte(HVA + 3 * P + 0x800, 0x9000)]
    _, old = run_model(PpcPrV5_12, ev)
    _, new = run_model(PpcPrV5_13, ev)
    assert handed(old[-1]) == gfns((0, 0x103, 0x104), (0, 0x200, 0x201))
    assert zapped_gfns(old[-1]) == [0x103, 0x200]
    assert handed(new[-1]) == gfns((0, 0x103, 0x104))


@pytest.mark.parametrize("version", ["v5.12", "v5.13"])
def test_pr_hva_alias_hits_both_slots(version):
    # two slots on the same hva: both walkers clamp the range into each, so both gfns go
    ev = [slot(0, 0, 0x100, 4, HVA), slot(0, 1, 0x300, 4, HVA), host(HVA, 4, 0x5000)]
    ev += fault(0, 0x101) + fault(0, 0x301) + fault(0, 0x102)
    _, obs = run_model(PR[version], ev + [InvalidateRangeStart(HVA + P, HVA + 2 * P)])
    assert handed(obs[-1]) == gfns((0, 0x101, 0x102), (0, 0x301, 0x302))
    assert zapped_gfns(obs[-1]) == [0x101, 0x301]


@pytest.mark.parametrize("version", ["v5.12", "v5.13"])
def test_pr_huge_host_page_gives_4k_shadow_entries(version):
    # PR shadow HPTEs are base pages whatever backs the hva: a 2M host page faults in as one 4K
    # leaf, and invalidating part of the 2M region drops exactly the covered 4K entries
    ev = [slot(0, 0, 0x200, 512, HVA), host(HVA, 512, 0x40000, page_size=2 << 20)]
    ev += fault(0, 0x210) + fault(0, 0x211)
    m, obs = run_model(PR[version], ev + [InvalidateRangeStart(HVA + 0x10 * P, HVA + 0x11 * P)])
    assert [(x.gfn, x.level, x.pages, x.pfn) for x in obs[-2].installed] == [(0x211, LEVEL_4K, 1, 0x40011)]
    assert zapped_gfns(obs[-1]) == [0x210]
    assert list(m.leaves) == [(0, 0x211, LEVEL_4K)]


def test_pr_age_always_zero():
    # v5.12 kvm_age_hva_pr / kvm_test_age_hva_pr: return 0, no walk, mmu_lock still taken by the
    # generic entry point.  v5.13 kvm_age_gfn_pr / kvm_test_age_gfn_pr: handed the range, false;
    # the walker locks only when a slot is hit (8931a454aea0)
    ev = eight_pages() + [GuestAccess(0, 0x101), ClearFlushYoung(HVA, HVA + 8 * P),
                          ClearYoung(HVA, HVA + P), TestYoung(HVA + 0x101), TestYoung(FAR)]
    m_old, old = run_model(PpcPrV5_12, ev)
    m_new, new = run_model(PpcPrV5_13, ev)
    for o in old[-4:] + new[-4:]:
        assert o.young == 0 and o.aged == [] and o.flushes == []
    assert all(o.calls == [] and o.lock_taken for o in old[-4:])
    assert handed(new[-4]) == gfns((0, 0x100, 0x108))
    assert handed(new[-3]) == gfns((0, 0x100, 0x101))
    assert handed(new[-2]) == gfns((0, 0x100, 0x101))
    assert [o.lock_taken for o in new[-4:]] == [True, True, True, False]
    assert all(x.young for x in m_old.leaves.values()) and all(x.young for x in m_new.leaves.values())


@pytest.mark.parametrize("version", ["v5.12", "v5.13"])
def test_pr_fault_retry_is_seq_based(version):
    # book3s_64_mmu_host.c kvmppc_mmu_map_page: mmu_notifier_retry (count or seq), not the hva
    # check: a fault on gfn 0x107 retries although the invalidated range is gfn 0x100 only
    ev = [slot(0, 0, 0x100, 8, HVA), host(HVA, 8, 0x5000), FaultBegin(900, 0, 0x107),
          InvalidateRangeStart(HVA, HVA + P), FaultCommit(900)]
    m, obs = run_model(PR[version], ev)
    assert obs[-1].note == "retry" and obs[-1].installed == [] and m.leaves == {}


@pytest.mark.parametrize("version", ["v5.12", "v5.13"])
def test_pr_slot_delete_keeps_shadow_cache(version):
    # v5.12 book3s_pr.c kvmppc_core_flush_memslot_pr is empty: deleting the slot drops nothing,
    # and a later invalidation of its old hva hits no slot, so the entries stay in both versions
    ev = eight_pages() + [slot(0, 0, 0x100, 0, HVA), InvalidateRangeStart(HVA, HVA + 8 * P)]
    m, obs = run_model(PR[version], ev)
    assert obs[-2].note == "delete" and obs[-2].zapped == [] and obs[-2].flushes == []
    assert obs[-1].calls == [] and obs[-1].zapped == []
    assert len(m.leaves) == 8


# ------------------------------------------------------------------ e500
def test_e500_unmap_flushes_every_shadow_mapping():
    # v5.12 e500_mmu_host.c kvm_unmap_hva_range -> kvm_unmap_hva: no walk, kvm_flush_remote_tlbs,
    # which e500_mmu_host.c kvmppc_core_flush_tlb turns into "drop every shadow ref"
    # v5.13 kvm_unmap_gfn_range returns true: walker hands [0x101, 0x103), then the same flush
    ev = eight_pages() + [InvalidateRangeStart(HVA + P, HVA + 3 * P)]
    m_old, old = run_model(E500V5_12, ev)
    m_new, new = run_model(E500V5_13, ev)
    assert [(c.hook, c.slot, c.start, c.end) for c in old[-1].calls] == [("kvm_unmap_hva_range", 0, 0x100, 0x108)]
    assert [(c.hook, c.start, c.end) for c in new[-1].calls] == [("kvm_unmap_gfn_range", 0x101, 0x103)]
    for o in (old[-1], new[-1]):
        assert zapped_gfns(o) == list(range(0x100, 0x108))
        assert o.flushes == E500_FLUSH and o.lock_taken
    assert m_old.leaves == {} and m_new.leaves == {} and not m_new.tlb.entries


@pytest.mark.parametrize("rng", [(FAR, FAR + P), (HVA + P, HVA + P)], ids=["no-slot-hit", "empty"])
def test_e500_range_missing_every_slot(rng):
    # v5.12 flushes unconditionally (kvm_unmap_hva ignores the range), even for an empty range;
    # v5.13 only flushes when the walker found a slot (flush_on_ret && ret); it still takes
    # mmu_lock because range_start has an on_lock hook
    ev = eight_pages() + [InvalidateRangeStart(*rng)]
    m_old, old = run_model(E500V5_12, ev)
    m_new, new = run_model(E500V5_13, ev)
    assert zapped_gfns(old[-1]) == list(range(0x100, 0x108)) and old[-1].flushes == E500_FLUSH
    assert new[-1].calls == [] and new[-1].zapped == [] and new[-1].flushes == []
    assert new[-1].lock_taken and len(m_new.leaves) == 8


def test_e500_flush_with_no_slots_at_all():
    # v5.12: no slot to report, still a whole-VM flush; v5.13: nothing
    _, old = run_model(E500V5_12, [InvalidateRangeStart(HVA, HVA + P)])
    _, new = run_model(E500V5_13, [InvalidateRangeStart(HVA, HVA + P)])
    assert old[-1].calls == [] and old[-1].flushes == E500_FLUSH
    assert new[-1].flushes == []


def test_e500_change_pte():
    # v5.12 kvm_set_spte_hva -> kvm_unmap_hva: whole-VM flush.  v5.13 kvm_set_spte_gfn returns
    # true for the one gfn of [addr, addr+1): same flush, but only when addr is in a slot.
    # Bare change_pte: v5.13's WARN_ON_ONCE(!mmu_notifier_count) fires.
    ev = eight_pages() + [ChangePte(HVA + 5 * P + 0x10, 0x9000)]
    _, old = run_model(E500V5_12, ev)
    _, new = run_model(E500V5_13, ev)
    assert [(c.hook, c.start, c.end) for c in old[-1].calls] == [("kvm_set_spte_hva", 0x100, 0x108)]
    assert [(c.hook, c.start, c.end) for c in new[-1].calls] == [("kvm_set_spte_gfn", 0x105, 0x106)]
    for o in (old[-1], new[-1]):
        assert zapped_gfns(o) == list(range(0x100, 0x108)) and o.flushes == E500_FLUSH
        assert o.changed == []
    assert old[-1].warnings == []
    assert new[-1].warnings == ["WARN_ON_ONCE(!kvm->mmu_notifier_count) in change_pte"]

    ev = eight_pages() + [ChangePte(FAR + 0x10, 0x9000)]
    m_old, old = run_model(E500V5_12, ev)
    m_new, new = run_model(E500V5_13, ev)
    assert old[-1].flushes == E500_FLUSH and old[-1].lock_taken and m_old.leaves == {}
    assert new[-1].flushes == [] and not new[-1].lock_taken and len(m_new.leaves) == 8


def test_e500_age_always_zero():
    # v5.12 kvm_age_hva / kvm_test_age_hva and v5.13 kvm_age_gfn / kvm_test_age_gfn: 0 / false,
    # so clear_flush_young never flushes
    ev = eight_pages() + [GuestAccess(0, 0x101), ClearFlushYoung(HVA, HVA + 8 * P),
                          ClearYoung(HVA, HVA + P), TestYoung(HVA + P)]
    _, old = run_model(E500V5_12, ev)
    _, new = run_model(E500V5_13, ev)
    for o in old[-3:] + new[-3:]:
        assert o.young == 0 and o.flushes == [] and o.zapped == [] and o.aged == []
    assert all(o.calls == [] for o in old[-3:])
    assert handed(new[-3]) == gfns((0, 0x100, 0x108))
    assert handed(new[-1]) == gfns((0, 0x101, 0x102))


def test_e500_slot_delete_then_munmap():
    # booke.c kvmppc_core_flush_memslot is empty: the deleted slot's shadow refs stay.  A later
    # invalidation of its old hva hits no slot: v5.12 drops them anyway (unconditional flush),
    # v5.13 does not (flush only when a slot is hit), so they survive the munmap.
    ev = eight_pages() + [slot(0, 0, 0x100, 0, HVA), InvalidateRangeStart(HVA, HVA + 8 * P)]
    m_old, old = run_model(E500V5_12, ev)
    m_new, new = run_model(E500V5_13, ev)
    assert old[-2].zapped == [] and new[-2].zapped == []
    assert zapped_gfns(old[-1]) == list(range(0x100, 0x108)) and m_old.leaves == {}
    assert new[-1].zapped == [] and len(m_new.leaves) == 8


# ------------------------------------------------------------------ divergences, all known
def _sigs(divs) -> set[tuple[str, str, str, str]]:
    return {(d.cls, d.wrong_side, d.op, d.shape) for d in divs}


PR_TRACE = eight_pages() + [
    InvalidateRangeStart(HVA + 5 * P, HVA + 6 * P), ChangePte(HVA + 5 * P + 0x10, 0x9000),
    InvalidateRangeEnd(HVA + 5 * P, HVA + 6 * P),
    GuestAccess(0, 0x100), ClearYoung(HVA, HVA + P), TestYoung(FAR)]


def test_pr_divergences_v5_12_vs_v5_13():
    divs = diverge("ppc-pr", ("v5.12", PpcPrV5_12), ("v5.13", PpcPrV5_13), PR_TRACE)
    assert _sigs(divs) == {
        # kvm_set_spte_hva_pr's [hva, hva+PAGE_SIZE): gfn 0x106 handed and its entry dropped
        ("gfn-set-mismatch", "old", "change_pte", "one-gfn-past-end"),
        ("over-invalidation", "old", "change_pte", "one-gfn-past-end"),
        # age always 0 in both; v5.12 has no walk for age
        ("wrong-young", "both", "clear_young", "false-negative"),
        ("wrong-young", "both", "clear_young", "young-bit-not-cleared"),
        ("gfn-set-mismatch", "old", "clear_young", "no-gfns"),
        # v5.12 locks for test_young that hits nothing; v5.13 does not
        ("lock-without-hit", "old", "test_young", "no-slot-hit"),
    }
    assert all(d.known for d in divs), [d.signature for d in divs if not d.known]


def test_pr_divergences_rc1_vs_v5_13():
    divs = diverge("ppc-pr", ("v5.13-rc1", PpcPrV5_13), ("v5.13", PpcPrV5_13), PR_TRACE)
    assert _sigs(divs) == {("wrong-young", "both", "clear_young", "false-negative"),
                           ("wrong-young", "both", "clear_young", "young-bit-not-cleared")}
    assert all(d.known for d in divs)


E500_TRACE = eight_pages() + [
    InvalidateRangeStart(HVA + P, HVA + 3 * P), InvalidateRangeEnd(HVA + P, HVA + 3 * P)] + \
    fault(0, 0x101) + [GuestAccess(0, 0x101), ClearFlushYoung(HVA + P, HVA + 2 * P),
                       InvalidateRangeStart(FAR, FAR + P), InvalidateRangeEnd(FAR, FAR + P)]


def test_e500_divergences_v5_12_vs_v5_13():
    divs = diverge("e500", ("v5.12", E500V5_12), ("v5.13", E500V5_13), E500_TRACE)
    assert _sigs(divs) == {
        # both drop all eight mappings for a two-page range; v5.12 reported as whole-slot
        ("over-invalidation", "both", "invalidate_range_start", "extra-gfns"),
        ("gfn-set-mismatch", "old", "invalidate_range_start", "extra-gfns"),
        # age always 0
        ("wrong-young", "both", "clear_flush_young", "false-negative"),
        ("wrong-young", "both", "clear_flush_young", "young-bit-not-cleared"),
        ("gfn-set-mismatch", "old", "clear_flush_young", "no-gfns"),
        # a range in no slot: v5.12 still drops gfn 0x101's mapping, v5.13 leaves it
        ("over-invalidation", "old", "invalidate_range_start", "extra-gfns"),
    }
    assert all(d.known for d in divs), [d.signature for d in divs if not d.known]


def test_e500_divergences_rc1_vs_v5_13():
    divs = diverge("e500", ("v5.13-rc1", E500V5_13), ("v5.13", E500V5_13), E500_TRACE)
    assert _sigs(divs) == {("over-invalidation", "both", "invalidate_range_start", "extra-gfns"),
                           ("wrong-young", "both", "clear_flush_young", "false-negative"),
                           ("wrong-young", "both", "clear_flush_young", "young-bit-not-cleared")}
    assert all(d.known for d in divs)


@pytest.mark.parametrize("arch,old,new", [("ppc-pr", PpcPrV5_12, PpcPrV5_13), ("e500", E500V5_12, E500V5_13)])
def test_bare_change_pte_during_fault(arch, old, new):
    # v5.12 kvm_mmu_notifier_change_pte bumps mmu_notifier_seq, so the fault that read pfn 0x5000
    # retries; v5.13 does not bump it and, with no range open, WARNs and lets the fault install
    # the old pfn (mmu_notifier_retry passes).  Both known; the mm never sends a bare change_pte.
    ev = [slot(0, 0, 0x100, 8, HVA), host(HVA, 8, 0x5000), FaultBegin(1, 0, 0x100),
          ChangePte(HVA, 0x9000), FaultCommit(1)]
    divs = diverge(arch, ("v5.12", old), ("v5.13", new), ev)
    assert ("stale-mapping", "new", "fault_commit", "fault-installed-stale-pfn-after-bare-change_pte") in _sigs(divs)
    assert ("warning", "new", "change_pte", "WARN_ON_ONCE(!kvm->mmu_notifier_count) in change_pte") in _sigs(divs)
    assert all(d.known for d in divs), [d.signature for d in divs if not d.known]

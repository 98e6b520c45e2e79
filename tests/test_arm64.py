"""arm64 stage-2 models (impls/arm64.py): hand-worked boundaries of v5.12 and v5.13.

Layout used throughout unless a test says otherwise: HVA is 1 GiB aligned, 4 KiB pages,
slot 0 maps gfns [0x100, 0x110) at HVA, backed by pfns 0x5000.. (4K host pages).
"""
from __future__ import annotations

from language.trace import (ChangePte, ClearFlushYoung, ClearYoung, FaultBegin, FaultCommit,
                        InvalidateRangeEnd, InvalidateRangeStart, Release, SetMemoryRegion,
                        TestYoung)
from impls.arm64 import (MODELS, W_AGE_SIZE, W_SET_SPTE_SIZE, W_TEST_AGE_SIZE, W_UNMAP_NO_PGT,
                         W_UNMAP_SIZE, Arm64V5_12, Arm64V5_13)
from fuzz.runner import apply_event
from impls.machine import KVM_MEM_LOG_DIRTY_PAGES, LEVEL_1G, LEVEL_2M, LEVEL_4K, HostPte
from util import HVA, P, diverge, fault, gfns, handed, host, resched_points, run_model, slot

V12, V13 = Arm64V5_12, Arm64V5_13
BOTH = (V12, V13)
M2 = 2 << 20
FLUSH_VMID = "kvm_flush_remote_tlbs (__kvm_tlb_flush_vmid)"
LEAF_TLBI = "stage2_put_pte (leaf TLBI by IPA)"
TABLE_TLBI = "stage2_put_pte (empty table freed)"


def base(*extra_faults: int) -> list:
    ev = [slot(0, 0, 0x100, 16, HVA), host(HVA, 16, 0x5000)]
    for g in extra_faults:
        ev += fault(0, g)
    return ev


def flushes(obs):
    return [(f.scope, f.start, f.end, f.origin, f.locked) for f in obs.flushes]


def zapped(obs):
    return [(x.gfn, x.level) for x in obs.zapped]


# ----- unmap: v5.12 (gpa, bytes) rounding vs v5.13 [start, end) -------------------------------

def test_unaligned_unmap_v5_12_drops_last_touched_page():
    # v5.12 arch/arm64/kvm/mmu.c handle_hva_to_gpa: gpa = gfn(HVA+0x800) = 0x100, size =
    # 0x1000 bytes (aligned, so no WARN); the walk covers ceil(0x1000/P) = 1 page: gfn 0x100
    # only, though the range touches pages 0x100 and 0x101
    ev = base(0x100, 0x101) + [InvalidateRangeStart(HVA + 0x800, HVA + P + 0x800)]
    m, obs = run_model(V12, ev)
    o = obs[-1]
    assert handed(o) == gfns((0, 0x100, 0x101))
    assert zapped(o) == [(0x100, LEVEL_4K)]
    assert (0, 0x101, LEVEL_4K) in m.leaves
    # one TLBI for the leaf; the last-level table still holds 0x101 so is not freed
    assert flushes(o) == [("range", 0x100, 0x101, LEAF_TLBI, True)]
    assert o.warnings == [] and o.lock_taken

    # v5.13 virt/kvm/kvm_main.c __kvm_handle_hva_range: [gfn(hs), gfn(he + P - 1)) = [0x100, 0x102)
    m, obs = run_model(V13, ev)
    o = obs[-1]
    assert handed(o) == gfns((0, 0x100, 0x102))
    assert zapped(o) == [(0x100, LEVEL_4K), (0x101, LEVEL_4K)]
    assert not m.leaves
    # v5.13 arch/arm64/kvm/hyp/pgtable.c stage2_unmap_walker: two leaf TLBIs, then the empty
    # 4K table and the empty 2M-entry table are freed, each with a TLBI at the walk start
    assert flushes(o) == [("range", 0x100, 0x101, LEAF_TLBI, True),
                          ("range", 0x101, 0x102, LEAF_TLBI, True),
                          ("range", 0x100, 0x101, TABLE_TLBI, True),
                          ("range", 0x100, 0x101, TABLE_TLBI, True)]
    assert o.warnings == []


def test_unmap_size_warn_and_byte_ranges():
    # v5.12 arch/arm64/kvm/mmu.c __unmap_stage2_range: WARN when the byte size is not whole
    # pages, the walk still rounds up: [HVA+P+0x10, HVA+P+0x11) is 1 byte -> gfn 0x101
    one_byte = InvalidateRangeStart(HVA + P + 0x10, HVA + P + 0x11)
    # 0x1800 bytes from HVA+0x800: ceil -> 2 pages [0x100, 0x102), the pages touched
    straddle = InvalidateRangeStart(HVA + 0x800, HVA + 0x2000)
    for ev, want in ((one_byte, gfns((0, 0x101, 0x102))), (straddle, gfns((0, 0x100, 0x102)))):
        _, obs = run_model(V12, base() + [ev])
        assert handed(obs[-1]) == want
        assert obs[-1].warnings == [W_UNMAP_SIZE]
        # v5.13 kvm_unmap_gfn_range: whole pages, no WARN, same pages here
        _, obs = run_model(V13, base() + [ev])
        assert handed(obs[-1]) == want
        assert obs[-1].warnings == []


def test_empty_range_hits_nothing_but_locks():
    # start == end: every slot is skipped (hva_start >= hva_end) in both walkers; both
    # range_start paths take mmu_lock up front; nothing is flushed (arm64 returns 0/false)
    for cls in BOTH:
        _, obs = run_model(cls, base(0x100) + [InvalidateRangeStart(HVA, HVA)])
        o = obs[-1]
        assert o.calls == [] and o.zapped == [] and o.flushes == [] and o.lock_taken


def test_partially_covered_block_is_zapped_whole():
    # slot gfn 0x200 (gpa 2M aligned) x 1024 pages at HVA, 2M host pages: the fault maps a
    # PMD block [0x200, 0x400) (v5.12 arch/arm64/kvm/mmu.c user_mem_abort,
    # fault_supports_stage2_huge_mapping).  Unmapping one page inside it clears the whole
    # block with one TLBI (hyp/pgtable.c stage2_unmap_walker); the 2M-entry table is then
    # empty and freed with a TLBI at the walk start 0x210
    ev = [slot(0, 0, 0x200, 1024, HVA), host(HVA, 1024, 0x40000, M2)] + fault(0, 0x234)
    ev += [InvalidateRangeStart(HVA + 0x10 * P, HVA + 0x11 * P)]
    for cls in BOTH:
        m, obs = run_model(cls, ev)
        assert [(x.gfn, x.level, x.pfn) for x in obs[-2].installed] == [(0x200, LEVEL_2M, 0x40000)]
        o = obs[-1]
        assert handed(o) == gfns((0, 0x210, 0x211))
        assert zapped(o) == [(0x200, LEVEL_2M)]
        assert flushes(o) == [("range", 0x200, 0x400, LEAF_TLBI, True),
                              ("range", 0x210, 0x211, TABLE_TLBI, True)]
        assert not m.leaves
    assert diverge("arm64", ("v5.12", V12), ("v5.13", V13), ev) == []


def test_range_reaching_gpa_adjacent_slot():
    # slot 1 = gfns [0x110, 0x120) follows slot 0 in GPA space but lives at HVA + 1M: an
    # hva range ending in slot 0 must not touch it.  Unaligned [HVA+15P+0x800, HVA+16P+0x800):
    # v5.12 clamps to slot 0's end: hs = HVA+15P+0x800, size 0x800 -> WARN, 1 page 0x10f
    ev = base(0x10f) + [slot(0, 1, 0x110, 16, HVA + (1 << 20)), host(HVA + (1 << 20), 16, 0x6000)]
    ev += fault(0, 0x110) + [InvalidateRangeStart(HVA + 15 * P + 0x800, HVA + 16 * P + 0x800)]
    for cls, warns in ((V12, [W_UNMAP_SIZE]), (V13, [])):
        m, obs = run_model(cls, ev)
        o = obs[-1]
        assert handed(o) == gfns((0, 0x10f, 0x110))
        assert zapped(o) == [(0x10f, LEVEL_4K)]
        assert (0, 0x110, LEVEL_4K) in m.leaves
        assert o.warnings == warns


def test_unaligned_range_across_hva_and_gpa_adjacent_slots():
    # slot 1 = gfns [0x110, 0x120) at HVA + 16P: adjacent in hva and gpa.  For
    # [HVA+14P+0x800, HVA+15P+0x800) v5.12 hands slot 0 (0x10e, 0x1000 bytes) -> 1 page only
    # (0x10f is touched but missed); v5.13 hands [0x10e, 0x110)
    ev = base(0x10e, 0x10f) + [slot(0, 1, 0x110, 16, HVA + 16 * P), host(HVA + 16 * P, 16, 0x5010)]
    ev += [InvalidateRangeStart(HVA + 14 * P + 0x800, HVA + 15 * P + 0x800)]
    m, obs = run_model(V12, ev)
    assert handed(obs[-1]) == gfns((0, 0x10e, 0x10f))
    assert (0, 0x10f, LEVEL_4K) in m.leaves
    m, obs = run_model(V13, ev)
    assert handed(obs[-1]) == gfns((0, 0x10e, 0x110))
    assert not m.leaves
    # crossing into slot 1 by half a page: both slots get their page; v5.12 WARNs per slot
    ev2 = base(0x10f) + [slot(0, 1, 0x110, 16, HVA + 16 * P), host(HVA + 16 * P, 16, 0x5010)]
    ev2 += fault(0, 0x110) + [InvalidateRangeStart(HVA + 15 * P + 0x800, HVA + 16 * P + 0x800)]
    for cls, warns in ((V12, [W_UNMAP_SIZE] * 2), (V13, [])):
        m, obs = run_model(cls, ev2)
        assert handed(obs[-1]) == gfns((0, 0x10f, 0x111))
        assert sorted(zapped(obs[-1])) == [(0x10f, LEVEL_4K), (0x110, LEVEL_4K)]
        assert obs[-1].warnings == warns


def test_hva_aliasing_unmaps_every_alias():
    # slot 1 = gfns [0x400, 0x410) at the same HVA as slot 0: both walkers hand both slots
    ev = base(0x100) + [slot(0, 1, 0x400, 16, HVA)] + fault(0, 0x400)
    ev += [InvalidateRangeStart(HVA, HVA + P)]
    for cls in BOTH:
        m, obs = run_model(cls, ev)
        assert handed(obs[-1]) == gfns((0, 0x100, 0x101), (0, 0x400, 0x401))
        assert sorted(zapped(obs[-1])) == [(0x100, LEVEL_4K), (0x400, LEVEL_4K)]
        assert not m.leaves


def test_unmap_chunks_at_1g_and_not_blockable():
    # v5.12 arch/arm64/kvm/mmu.c stage2_apply_range: chunks end at 1 GiB IPA boundaries;
    # slot gfns [0x3ff00, 0x40100) straddles gfn 0x40000 -> two chunks
    ev = [slot(0, 0, 0x3ff00, 0x200, HVA), host(HVA, 0x200, 0x5000)]
    for cls, blockable, want in ((V12, True, "pgd chunks 2, may_block"), (V13, False, "pgd chunks 2")):
        _, obs = run_model(cls, ev + [InvalidateRangeStart(HVA, HVA + 0x200 * P, blockable)])
        assert want in obs[-1].calls[0].detail


def test_a_blockable_unmap_offers_mmu_lock_between_1g_chunks():
    # v5.12 arch/arm64/kvm/mmu.c stage2_apply_range: cond_resched_lock(&kvm->mmu_lock) after a
    # chunk when resched is set and more chunks follow, so another task may take the lock with
    # the first chunk unmapped and the second still mapped; never after the last chunk, and
    # never when the range may not block
    ev = [slot(0, 0, 0x3ff00, 0x200, HVA), host(HVA, 0x200, 0x5000)] + fault(0, 0x3ffff) + fault(0, 0x40000)
    for cls in BOTH:
        for blockable, want in ((True, [[0x40000]]), (False, [])):
            m, seen = resched_points(cls, ev + [InvalidateRangeStart(HVA, HVA + 0x200 * P, blockable)])
            assert seen == want and not m.leaves


# ----- change_pte / set_spte ---------------------------------------------------------------

def test_set_spte_break_before_make_and_eagain():
    # hyp/pgtable.c stage2_map_walker_try_leaf: a different pfn -> BBM (clear, TLBI, new RO
    # young page); v5.13 kvm_mmu_notifier_change_pte WARNs with no invalidation in progress
    for cls, warns in ((V12, []), (V13, ["WARN_ON_ONCE(!kvm->mmu_notifier_count) in change_pte"])):
        m, obs = run_model(cls, base(0x100) + [ChangePte(HVA, 0x9000, True)])
        o = obs[-1]
        assert [(b.pfn, b.writable, a.pfn, a.writable, a.young) for b, a in o.changed] == \
            [(0x5000, True, 0x9000, False, True)]
        assert flushes(o) == [("range", 0x100, 0x101, "stage2_map_walker_try_leaf (BBM TLBI)", True)]
        assert handed(o) == gfns((0, 0x100, 0x101))
        assert o.warnings == warns
        # same pfn, young: only permissions would differ -> -EAGAIN, the RW leaf stays RW
        m, obs = run_model(cls, base(0x100) + [ChangePte(HVA, 0x5000, False)])
        assert obs[-1].changed == [] and obs[-1].flushes == []
        assert m.leaves[(0, 0x100, LEVEL_4K)].writable


def test_set_spte_creates_page_only_where_a_table_exists():
    # no memcache: a page is installed when a last-level table exists (0x101 is mapped in
    # the same 2M region), and -ENOMEM with nothing mapped when it does not
    for cls in BOTH:
        _, obs = run_model(cls, base(0x101) + [ChangePte(HVA, 0x9000)])
        assert [(x.gfn, x.level, x.pfn, x.writable, x.young) for x in obs[-1].installed] == \
            [(0x100, LEVEL_4K, 0x9000, False, True)]
        m, obs = run_model(cls, base() + [ChangePte(HVA, 0x9000)])
        assert obs[-1].installed == [] and not m.leaves
        assert handed(obs[-1]) == gfns((0, 0x100, 0x101))


def test_set_spte_inside_block_fails():
    # hyp/pgtable.c stage2_map_walk_leaf: a page inside a PMD block needs a new table; no
    # memcache -> -ENOMEM; the block keeps its old pfn in both versions
    ev = [slot(0, 0, 0x200, 512, HVA), host(HVA, 512, 0x40000, M2)] + fault(0, 0x200)
    ev += [InvalidateRangeStart(HVA + 0x800000, HVA + 0x801000), ChangePte(HVA + 5 * P, 0x9000)]
    for cls in BOTH:
        m, obs = run_model(cls, ev)
        assert obs[-1].changed == [] and obs[-1].installed == [] and obs[-1].warnings == []
        assert m.leaves[(0, 0x200, LEVEL_2M)].pfn == 0x40000
    divs = diverge("arm64", ("v5.12", V12), ("v5.13", V13), ev)
    assert [(d.cls, d.wrong_side, d.shape, d.known) for d in divs] == \
        [("missed-invalidation", "both", "old-pfn-still-mapped-huge-leaf", True)]


def test_set_spte_unaligned_hva_reaches_hva_adjacent_slot():
    # slot 1 = gfns [0x300, 0x310) at HVA + 16P (hva-adjacent, not gpa-adjacent); 0x301 is
    # mapped, so a last-level table exists in 0x300's 2M region.  Inside an invalidation of
    # slot 0's last page, change_pte at HVA+15P+0x800:
    # v5.12 kvm_set_spte_hva walks [hva, hva+P): slot 1 gets (0x300, 0x800 bytes) -> WARN and
    # a RO page of the new pfn at 0x300; slot 0 gets (0x10f, 0x800 bytes) -> WARN, -ENOMEM
    # (its table was freed by the unmap).  v5.13 walks [hva, hva+1): slot 0 only.
    ev = base(0x10f) + [slot(0, 1, 0x300, 16, HVA + 16 * P), host(HVA + 16 * P, 16, 0x5010)]
    ev += fault(0, 0x301)
    ev += [InvalidateRangeStart(HVA + 15 * P, HVA + 16 * P), ChangePte(HVA + 15 * P + 0x800, 0x9000)]
    m, obs = run_model(V12, ev)
    o = obs[-1]
    assert handed(o) == gfns((0, 0x10f, 0x110), (0, 0x300, 0x301))
    assert [(x.gfn, x.pfn) for x in o.installed] == [(0x300, 0x9000)]
    assert o.warnings == [W_SET_SPTE_SIZE, W_SET_SPTE_SIZE]
    assert o.note == "dcache clean pfn 0x9000"
    m, obs = run_model(V13, ev)
    o = obs[-1]
    assert handed(o) == gfns((0, 0x10f, 0x110))
    assert o.installed == [] and o.warnings == []
    assert o.note == "dcache clean pfn 0x9000"
    divs = diverge("arm64", ("v5.12", V12), ("v5.13", V13), ev)
    assert {(d.cls, d.wrong_side, d.shape) for d in divs} == {
        ("stale-mapping", "old", "change_pte-left-wrong-pfn"),
        ("gfn-set-mismatch", "old", "extra-gfns"),
        ("warning", "old", W_SET_SPTE_SIZE)}
    assert all(d.known for d in divs)


def test_dcache_clean_placement():
    # v5.12 kvm_set_spte_hva cleans once before the walk, even with no slot hit; v5.13
    # kvm_set_spte_gfn cleans once per slot hit (two aliases -> twice, no hit -> never)
    alias = base() + [slot(0, 1, 0x400, 16, HVA)]
    miss = ChangePte(HVA + (1 << 30), 0x9000)
    hit = ChangePte(HVA, 0x9000)
    _, obs = run_model(V12, alias + [miss, hit])
    assert obs[-2].note == "dcache clean pfn 0x9000" and obs[-2].calls == []
    assert obs[-1].note == "dcache clean pfn 0x9000" and len(obs[-1].calls) == 2
    _, obs = run_model(V13, alias + [miss, hit])
    assert obs[-2].note == "" and not obs[-2].lock_taken
    assert obs[-1].note == "dcache clean pfn 0x9000; dcache clean pfn 0x9000"


# ----- age / test_age -------------------------------------------------------------------------

def test_age_looks_only_at_first_leaf():
    # kvm_pgtable_stage2_mkold on the first gfn only: after 0x100 is aged, aging [HVA, HVA+2P)
    # returns 0 and leaves 0x101 young; the 8K size WARNs in both versions
    ev = base(0x100, 0x101) + [ClearYoung(HVA, HVA + P), ClearYoung(HVA, HVA + 2 * P)]
    for cls in BOTH:
        m, obs = run_model(cls, ev)
        assert obs[-2].young == 1 and [x.gfn for x in obs[-2].aged] == [0x100]
        assert obs[-2].warnings == [] and obs[-2].flushes == []
        o = obs[-1]
        assert o.young == 0 and o.aged == [] and o.flushes == []
        assert handed(o) == gfns((0, 0x100, 0x101))
        assert o.warnings == [W_AGE_SIZE]
        assert m.leaves[(0, 0x101, LEVEL_4K)].young
    divs = diverge("arm64", ("v5.12", V12), ("v5.13", V13), ev)
    assert {(d.cls, d.op, d.wrong_side, d.shape) for d in divs} == {
        ("wrong-young", "clear_young", "both", "false-negative"),
        ("wrong-young", "clear_young", "both", "young-bit-not-cleared"),
        ("gfn-set-mismatch", "clear_young", "both", "only-first-gfn"),
        ("warning", "clear_young", "both", W_AGE_SIZE)}
    assert all(d.known for d in divs)


def test_age_block_and_flush_young():
    # a PMD block loses AF as a whole when its first page is aged; clear_flush_young then
    # flushes the whole VMID through arm64's own kvm_flush_remote_tlbs; a second call finds
    # it old and neither returns young nor flushes.  2M is an accepted size: no WARN.
    ev = [slot(0, 0, 0x200, 512, HVA), host(HVA, 512, 0x40000, M2)] + fault(0, 0x200)
    ev += [ClearFlushYoung(HVA, HVA + M2), ClearFlushYoung(HVA + P, HVA + 2 * P)]
    for cls in BOTH:
        _, obs = run_model(cls, ev)
        o = obs[-2]
        assert o.young == 1 and [(x.gfn, x.level) for x in o.aged] == [(0x200, LEVEL_2M)]
        assert flushes(o) == [("all", 0, 0, FLUSH_VMID, True)]
        assert o.warnings == [] and handed(o) == gfns((0, 0x200, 0x201))
        assert obs[-1].young == 0 and obs[-1].flushes == [] and handed(obs[-1]) == gfns((0, 0x201, 0x202))


def test_age_size_warn_differs_for_unaligned_ranges():
    # v5.12 measures bytes: [HVA+0x800, HVA+0x1800) is 0x1000 -> no WARN, but v5.13 hands
    # 2 gfns (8K) -> WARN.  [HVA+0x800, HVA+0x1000) is 0x800 bytes -> v5.12 WARNs, v5.13
    # hands 1 gfn -> no WARN.
    cases = ((ClearYoung(HVA + 0x800, HVA + 0x1800), [], [W_AGE_SIZE]),
             (ClearYoung(HVA + 0x800, HVA + 0x1000), [W_AGE_SIZE], []))
    for ev, w12, w13 in cases:
        _, obs = run_model(V12, base(0x100) + [ev])
        assert obs[-1].warnings == w12
        _, obs = run_model(V13, base(0x100) + [ev])
        assert obs[-1].warnings == w13


def test_test_age_unaligned_hva_reaches_adjacent_slot():
    # slot 1 = gfns [0x300, 0x310) at HVA + 16P.  0x10f is aged old, 0x300 is young.
    # v5.12 kvm_test_age_hva walks [HVA+15P+0x800, HVA+16P+0x800): slot 1 (0x300, 0x800
    # bytes) and slot 0 (0x10f, 0x800 bytes), both WARN; answer 1 from 0x300.
    # v5.13 kvm_test_age_gfn: [hva, hva+1) -> 0x10f only, no WARN, answer 0.
    ev = base(0x10f) + [slot(0, 1, 0x300, 16, HVA + 16 * P), host(HVA + 16 * P, 16, 0x5010)]
    ev += fault(0, 0x300) + [ClearYoung(HVA + 15 * P, HVA + 16 * P), TestYoung(HVA + 15 * P + 0x800)]
    _, obs = run_model(V12, ev)
    o = obs[-1]
    assert o.young == 1 and handed(o) == gfns((0, 0x10f, 0x110), (0, 0x300, 0x301))
    assert o.warnings == [W_TEST_AGE_SIZE, W_TEST_AGE_SIZE]
    _, obs = run_model(V13, ev)
    o = obs[-1]
    assert o.young == 0 and handed(o) == gfns((0, 0x10f, 0x110)) and o.warnings == []
    divs = diverge("arm64", ("v5.12", V12), ("v5.13", V13), ev)
    assert {(d.cls, d.op, d.wrong_side, d.shape) for d in divs} == {
        ("wrong-young", "test_young", "old", "false-positive"),
        ("gfn-set-mismatch", "test_young", "old", "extra-gfns"),
        ("warning", "test_young", "old", W_TEST_AGE_SIZE)}
    assert all(d.known for d in divs)


def test_aligned_test_age_and_lock_elision():
    # aligned hva: one page in both; with no slot hit v5.12 still takes mmu_lock (known
    # lock-without-hit), v5.13 does not
    ev = base(0x100) + [TestYoung(HVA + P), TestYoung(HVA + (1 << 30))]
    for cls, locked in ((V12, True), (V13, False)):
        _, obs = run_model(cls, ev)
        assert obs[-2].young == 0 and handed(obs[-2]) == gfns((0, 0x101, 0x102)) and obs[-2].warnings == []
        assert obs[-1].young == 0 and obs[-1].calls == [] and obs[-1].lock_taken is locked


# ----- fault path ------------------------------------------------------------------------------

def test_fault_block_rules():
    # v5.12 arch/arm64/kvm/mmu.c fault_supports_stage2_huge_mapping / user_mem_abort
    cases = [
        # aligned slot, 2M host pages -> PMD block at the rounded-down IPA
        ([slot(0, 0, 0x200, 512, HVA), host(HVA, 512, 0x40000, M2)], 0x234, (0x200, LEVEL_2M, 0x40000)),
        # gpa and hva not equally aligned in 2M -> page
        ([slot(0, 0, 0x201, 1024, HVA), host(HVA, 1024, 0x40000, M2)], 0x234, (0x234, LEVEL_4K, 0x40033)),
        # the 2M block around the hva leaves the slot (slot is 1M) -> page
        ([slot(0, 0, 0x200, 256, HVA), host(HVA, 512, 0x40000, M2)], 0x234, (0x234, LEVEL_4K, 0x40034)),
        # dirty logging forces pages
        ([slot(0, 0, 0x200, 512, HVA, KVM_MEM_LOG_DIRTY_PAGES), host(HVA, 512, 0x40000, M2)], 0x234,
         (0x234, LEVEL_4K, 0x40034)),
    ]
    for setup, gfn, want in cases:
        for cls in BOTH:
            _, obs = run_model(cls, setup + fault(0, gfn))
            assert [(x.gfn, x.level, x.pfn) for x in obs[-1].installed] == [want], (setup, gfn)
    # 1G hugetlb backing: the whole 1G host page (one extent in the host page table)
    one_g = [
        # slot 1G aligned and 1G long -> PUD block at the rounded-down IPA
        (slot(0, 0, 0x40000, 0x40000, HVA), (0x40000, LEVEL_1G, 0x80000)),
        # slot only 2M long: PUD fails, falls back to PMD (the switch in user_mem_abort)
        (slot(0, 0, 0x40000, 512, HVA), (0x40000, LEVEL_2M, 0x80000)),
    ]
    for setup, want in one_g:
        for cls in BOTH:
            m, _ = run_model(cls, [setup])
            m.host.map(HVA, 1 << 30, 0x80000, 1 << 30, True)
            assert m.host.lookup(HVA + 5 * 4096) == HostPte(0x80005, True, LEVEL_1G)
            obs = [apply_event(m, e) for e in fault(0, 0x40005)]
            assert [(x.gfn, x.level, x.pfn) for x in obs[-1].installed] == [want]


def test_block_fault_over_pages_flushes_whole_vmid():
    # pages mapped while logging; logging off; a fault on another page of the region maps a
    # PMD block: the table is invalidated with one VMID-wide TLBI (hyp/pgtable.c
    # stage2_map_walk_table_pre) and the pages are dropped
    ev = [slot(0, 0, 0x200, 512, HVA, KVM_MEM_LOG_DIRTY_PAGES), host(HVA, 512, 0x40000, M2)]
    ev += fault(0, 0x201) + fault(0, 0x202) + [slot(0, 0, 0x200, 512, HVA)] + fault(0, 0x210)
    for cls in BOTH:
        m, obs = run_model(cls, ev)
        o = obs[-1]
        assert zapped(o) == [(0x201, LEVEL_4K), (0x202, LEVEL_4K)]
        assert flushes(o) == [("all", 0, 0, "stage2_map_walk_table_pre (__kvm_tlb_flush_vmid)", True)]
        assert [(x.gfn, x.level) for x in o.installed] == [(0x200, LEVEL_2M)]


def test_fault_retry_is_sequence_based():
    # arm64 user_mem_abort uses mmu_notifier_retry: an invalidation in progress anywhere
    # (here of an unrelated hva) forces a retry; a finished one bumps the sequence
    far = (HVA + (1 << 30), HVA + (1 << 30) + P)
    ev = base() + [FaultBegin(1, 0, 0x100, False), InvalidateRangeStart(*far), FaultCommit(1)]
    ev += [InvalidateRangeEnd(*far)]
    ev += [FaultBegin(2, 0, 0x100, False), InvalidateRangeStart(*far), InvalidateRangeEnd(*far),
           FaultCommit(2)]
    for cls in BOTH:
        m, obs = run_model(cls, ev)
        assert obs[4].note == "retry"
        assert obs[-1].note == "retry"
        assert not m.leaves


def test_change_pte_sequence_bump_only_in_v5_12():
    # v5.12 kvm_mmu_notifier_change_pte bumps mmu_notifier_seq, so a fault begun before it
    # retries; v5.13 does not (it relies on the surrounding invalidation): the fault
    # installs the pfn it read before the change, which the host no longer maps
    ev = base() + [FaultBegin(1, 0, 0x100, False), ChangePte(HVA, 0x9000), FaultCommit(1)]
    _, obs = run_model(V12, ev)
    assert obs[-1].note == "retry"
    _, obs = run_model(V13, ev)
    assert [(x.gfn, x.pfn) for x in obs[-1].installed] == [(0x100, 0x5000)]
    divs = diverge("arm64", ("v5.12", V12), ("v5.13", V13), ev)
    assert {(d.cls, d.op, d.wrong_side, d.shape) for d in divs} == {
        ("stale-mapping", "fault_commit", "new", "fault-installed-stale-pfn-after-bare-change_pte"),
        ("warning", "change_pte", "new", "WARN_ON_ONCE(!kvm->mmu_notifier_count) in change_pte")}
    assert all(d.known for d in divs)


# ----- memslot removal and release -------------------------------------------------------------

def test_memslot_delete_and_release():
    # kvm_arch_flush_shadow_memslot: unmap_stage2_range of the slot, TLBIs per leaf, no
    # VMID flush; kvm_arch_flush_shadow_all -> kvm_free_stage2_pgd: every table freed, no
    # TLBI; afterwards pgt is NULL and the hooks return at once (v5.12 has no handler call;
    # v5.13's walker calls kvm_unmap_gfn_range, which returns before touching anything)
    delete = SetMemoryRegion(0, 0, 0, 0x100 * P, 0, HVA)
    for cls in BOTH:
        _, obs = run_model(cls, base(0x100, 0x105) + [delete])
        assert zapped(obs[-1]) == [(0x100, LEVEL_4K), (0x105, LEVEL_4K)]
        assert [f.origin for f in obs[-1].flushes] == [LEAF_TLBI, LEAF_TLBI, TABLE_TLBI, TABLE_TLBI]
        m, obs = run_model(cls, base(0x100, 0x105) + [Release(), InvalidateRangeStart(HVA, HVA + P), delete])
        assert zapped(obs[-3]) == [(0x100, LEVEL_4K), (0x105, LEVEL_4K)] and obs[-3].flushes == []
        assert m.pgt is None
        assert obs[-2].calls == [] and obs[-2].lock_taken
        # a slot removal after release reaches stage2_apply_range with no pgt: -EINVAL, WARN
        assert obs[-1].warnings == [W_UNMAP_NO_PGT]


# ----- version pairs --------------------------------------------------------------------------

def test_pair_v5_12_v5_13_unaligned_unmap():
    ev = base(0x100, 0x101) + [InvalidateRangeStart(HVA + 0x800, HVA + P + 0x800)]
    divs = diverge("arm64", ("v5.12", V12), ("v5.13", V13), ev)
    assert {(d.cls, d.op, d.wrong_side, d.shape) for d in divs} == {
        ("missed-invalidation", "invalidate_range_start", "old", "only-first-gfn"),
        ("gfn-set-mismatch", "invalidate_range_start", "old", "only-first-gfn")}
    assert all(d.known for d in divs)
    # a sub-page-sized unaligned range adds the size WARN
    ev = base(0x100) + [InvalidateRangeStart(HVA + 0x800, HVA + 0xc00)]
    divs = diverge("arm64", ("v5.12", V12), ("v5.13", V13), ev)
    assert [(d.cls, d.wrong_side, d.shape, d.known) for d in divs] == [("warning", "old", W_UNMAP_SIZE, True)]


def test_pair_v5_12_v5_13_rc1_same_as_final():
    rc1 = MODELS["arm64"]["v5.13-rc1"][0]
    ev = base(0x100, 0x101) + [InvalidateRangeStart(HVA + 0x800, HVA + P + 0x800)]
    divs = diverge("arm64", ("v5.12", V12), ("v5.13-rc1", rc1), ev)
    assert {(d.cls, d.wrong_side) for d in divs} == {("missed-invalidation", "old"),
                                                     ("gfn-set-mismatch", "old")}
    assert all(d.known for d in divs)


def test_pair_v5_13_rc1_v5_13_no_divergence():
    # the boolreturn fix (fcb8283920b1) changed literal 0 to false: same value
    rc1 = MODELS["arm64"]["v5.13-rc1"][0]
    assert rc1 is V13
    ev = base(0x100, 0x101, 0x10f) + [slot(0, 1, 0x300, 16, HVA + 16 * P), host(HVA + 16 * P, 16, 0x5010)]
    rng = (HVA + 0x800, HVA + P + 0x800)
    ev += fault(0, 0x300) + [InvalidateRangeStart(*rng), ChangePte(HVA + 15 * P + 0x800, 0x9000),
                             InvalidateRangeEnd(*rng), ClearFlushYoung(HVA, HVA + 32 * P),
                             ClearYoung(HVA + 0x800, HVA + 0x1000), TestYoung(HVA + 15 * P + 0x800),
                             Release()]
    divs = diverge("arm64", ("v5.13-rc1", rc1), ("v5.13", V13), ev)
    # identical models: only behaviour both share (first-page-only aging) is reported, all known
    assert divs and all(d.wrong_side == "both" and d.known for d in divs)
    assert {(d.cls, d.op, d.shape) for d in divs} == {
        ("wrong-young", "clear_flush_young", "young-bit-not-cleared"),
        ("gfn-set-mismatch", "clear_flush_young", "only-first-gfn"),
        ("warning", "clear_flush_young", W_AGE_SIZE)}

"""MIPS KVM (VZ and trap-and-emulate share it): the GPA page table of arch/mips/kvm/mmu.c,
v5.12 and v5.13.

MIPS keeps one software page table per VM (kvm->arch.gpa_mm) mapping guest physical pages to
host pages, 4 KiB entries only: the fault path (kvm_mips_map_page) always writes a single pte
and the GPA walkers have no huge-entry case, so max_level is 4K.  We use 4 KiB pages
(page_shift 12) as for every arch; KVM_ADDRESS_SPACE_NUM is 1, KVM_USER_MEM_SLOTS 16, and MIPS
does not define __KVM_HAVE_READONLY_MEM (so KVM_MEM_READONLY is refused with EINVAL; the
read-only branch of the set_spte handler is kept but cannot be reached).

Boundaries, both versions:
* The range walkers kvm_mips_flush_gpa_pt and kvm_mips_mkold_gpa_pt take an INCLUSIVE last gfn
  (each table level loops index(start)..index(end) inclusive), but both the v5.12 walker and
  the v5.13 common walker pass the EXCLUSIVE end g1.  So unmap and age also act on gfn g1, one
  past the range, even when it is outside the slot or inside a GPA-adjacent slot.  Handler
  calls are recorded as [g0, g1 + 1).
* set_spte acts on the first gfn of each slot hit only; it writes the pte even where none was
  present, provided the GPA page tables for that gfn exist (lookup without allocation).
* test_age looks at the first gfn only.

v5.12 (handle_hva_to_gpa walks address space 0):
* unmap flushes (flush_shadow_all) unconditionally, even with no slot hit, and returns 0;
* set_spte walks [hva, hva + PAGE_SIZE), flushes by itself if any slot said so, returns 0;
* test_age walks the EMPTY range [hva, hva): no slot is ever hit, it always answers 0.
v5.13 (Paolo's flush patches 5194552fb1ff/566a0beef52c/fe9a5b055116 plus Sean's conversion):
* unmap returns true for every slot hit, the common code flushes once (none with no hit);
* set_spte returns its need-flush result, the common code flushes;
* kvm_flush_remote_tlbs runs the MIPS kvm_arch_flush_remote_tlb (prepare_flush_shadow), then
  the all-vCPU request: modelled as one full flush.
v5.13-rc1 and v5.13 have the same MIPS handlers (the MIPS boolreturn patch turning "return 1"
into "return true" came after v5.13, Aug 2021, and changes no value).

"GPA page tables exist" rule: a pte table covers PTRS_PER_PTE = 512 consecutive gfns (64-bit
ptes in a 4 KiB page; pte table index = gfn // 512).  A table is allocated by the fault path
for the gfn it maps and freed by kvm_mips_flush_gpa_pt only when the inclusive flush range
covers all 512 of its entries (i_min == 0 and i_max == PTRS_PER_PTE - 1); the higher levels are
freed only when all their pte tables are, so tracking pte tables is enough.  set_spte and
test_age see "tables exist" iff the pte table of their gfn is allocated.

The host pte that change_pte installs carries no accessed/dirty bits in the trace language.
We take: a writable new pte is young and dirty (do_wp_page's copy, pte_sw_mkyoung +
pte_mkdirty on MIPS), a read-only one is old and clean (KSM's replace_page builds it with
mk_pte).  This feeds the need-flush computation of the set_spte handler.

Not modelled: GPAs above the reach of the GPA page table (they would alias through the index
masking; gfns are treated as unbounded), the dirty-log write-protect on a flags-only memslot
change (kvm_arch_commit_memory_region -> kvm_mips_mkclean_gpa_pt), trap-and-emulate GVA page
tables and the asid_flush_mask detail of VZ without GuestID (every flush is a full flush),
the buddy-pte (even/odd pair) TLB entry and the Loongson out-of-tree huge GPA mappings.
"""
from __future__ import annotations

from .kvm import Kvm, PendingFault
from .kvm_main_v5_12 import KvmMainV5_12
from .kvm_main_v5_13 import KvmGfnRange, KvmMainV5_13
from .machine import (KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, LEVEL_4K, HostPte, Leaf,
                      Memslot)

PTRS_PER_PTE = 512          # arch/mips/include/asm/pgtable-64.h, 4 KiB pages, PTE_ORDER 0
ALL_GFNS = (1 << 64) - 1    # what (0, ~0) covers, as a gfn bound


class MipsMmu(Kvm):
    """What both versions share: the GPA page table and its range operations."""
    arch = "mips"
    address_space_num = 1            # KVM_ADDRESS_SPACE_NUM (generic default)
    user_mem_slots = 16              # KVM_USER_MEM_SLOTS, v5.12 arch/mips/include/asm/kvm_host.h
    readonly_mem = False             # no __KVM_HAVE_READONLY_MEM in arch/mips/include/uapi/asm/kvm.h
    max_level = LEVEL_4K             # kvm_mips_map_page installs one 4K pte
    uses_retry_hva = False           # kvm_mips_map_page checks mmu_notifier_retry (seq based)

    def __init__(self) -> None:
        super().__init__()
        self.pte_tables: set[int] = set()    # allocated GPA pte tables, by gfn // PTRS_PER_PTE

    # ----- GPA page-table lookups --------------------------------------------------------
    def gpa_pte_exists(self, gfn: int) -> bool:
        # v5.12 arch/mips/kvm/mmu.c kvm_mips_pte_for_gpa: walk without a cache, NULL if the
        # pmd entry (the pte table) is missing
        return gfn // PTRS_PER_PTE in self.pte_tables

    def gpa_leaf(self, gfn: int) -> Leaf | None:
        return self.leaves.get((0, gfn, LEVEL_4K))

    # ----- range operations with an INCLUSIVE last gfn -----------------------------------
    def kvm_mips_flush_gpa_pt(self, start_gfn: int, end_gfn: int) -> None:
        # v5.12 arch/mips/kvm/mmu.c kvm_mips_flush_gpa_pt (-> _pgd/_pud/_pmd/_pte): clears
        # every present pte from start_gfn to end_gfn INCLUSIVE and frees a pte table only
        # when the range covers it whole; no TLB flush
        for leaf in self.leaves_in(0, start_gfn, end_gfn + 1):
            self.zap_leaf(leaf)
        for t in [t for t in self.pte_tables
                  if t * PTRS_PER_PTE >= start_gfn and (t + 1) * PTRS_PER_PTE - 1 <= end_gfn]:
            self.pte_tables.discard(t)

    def kvm_mips_mkold_gpa_pt(self, start_gfn: int, end_gfn: int) -> bool:
        # v5.12 arch/mips/kvm/mmu.c kvm_mips_mkold_gpa_pt (BUILD_PTE_RANGE_OP mkold): makes
        # every present young pte from start_gfn to end_gfn INCLUSIVE old; true if any changed
        ret = False
        for leaf in self.leaves_in(0, start_gfn, end_gfn + 1):
            if leaf.young:
                self.age_leaf(leaf)
                ret = True
        return ret

    # ----- per-slot handlers (same logic in v5.12 and v5.13) ------------------------------
    def unmap_handler(self, hook: str, slot: Memslot, g0: int, g1: int) -> bool:
        # v5.12 arch/mips/kvm/mmu.c kvm_unmap_hva_handler: flush g0..g1 inclusive, answer 1
        self.record_call(hook, slot, g0, g1 + 1, "inclusive end")
        self.kvm_mips_flush_gpa_pt(g0, g1)
        return True

    def age_handler(self, hook: str, slot: Memslot, g0: int, g1: int) -> bool:
        # v5.12 arch/mips/kvm/mmu.c kvm_age_hva_handler: mkold g0..g1 inclusive
        self.record_call(hook, slot, g0, g1 + 1, "inclusive end")
        return self.kvm_mips_mkold_gpa_pt(g0, g1)

    def test_age_handler(self, hook: str, slot: Memslot, g0: int) -> bool:
        # v5.12 arch/mips/kvm/mmu.c kvm_test_age_hva_handler: young bit of g0's pte, 0 if the
        # tables are missing
        self.record_call(hook, slot, g0, g0 + 1, "first gfn only")
        if not self.gpa_pte_exists(g0):
            return False
        leaf = self.gpa_leaf(g0)
        return leaf is not None and leaf.young

    def set_spte_handler(self, hook: str, slot: Memslot, g0: int, pte: HostPte) -> bool:
        # v5.12 arch/mips/kvm/mmu.c kvm_set_spte_handler: only g0; write the host pte (adjusted
        # for the slot flags) into the existing GPA pte even if it was absent; say whether the
        # replaced pte was present and young and the new one drops or weakens it
        self.record_call(hook, slot, g0, g0 + 1, "first gfn only")
        if not self.gpa_pte_exists(g0):
            return False
        old = self.gpa_leaf(g0)
        new_young = new_dirty = pte.writable      # see the module docstring
        new_writable = pte.writable
        if slot.flags & KVM_MEM_LOG_DIRTY_PAGES and not (old is not None and old.dirty):
            new_dirty = False                     # pte_mkclean
        elif slot.flags & KVM_MEM_READONLY:
            new_writable = False                  # pte_wrprotect
        if old is None:
            self.set_gpa_pte(Leaf(0, g0, LEVEL_4K, pte.pfn, 1, new_writable, new_young, new_dirty))
            return False
        old_pfn, old_young, old_dirty = old.pfn, old.young, old.dirty
        self.change_leaf(old, pte.pfn, new_writable, new_young)
        old.dirty = new_dirty
        self.obs.changed[-1][1].dirty = new_dirty
        if not old_young:
            return False
        return (not new_young) or old_pfn != pte.pfn or (old_dirty and not new_dirty)

    def set_gpa_pte(self, leaf: Leaf) -> None:
        """set_pte into an empty GPA pte: a new leaf, recorded as installed.  Unlike a fault
        no vCPU has used it yet, so nothing enters the TLB."""
        self.install_leaf(leaf, fill_tlb=False)

    # ----- fault path ---------------------------------------------------------------------
    def map_fault(self, f: PendingFault) -> None:
        # v5.12 arch/mips/kvm/mmu.c kvm_mips_map_page: after mmu_notifier_retry, allocate the
        # GPA tables for the gpa (kvm_mips_pte_for_gpa with the vCPU cache) and write one 4K
        # pte: writable if the host page is, dirty on a write fault, young
        self.pte_tables.add(f.gfn // PTRS_PER_PTE)
        super().map_fault(f)

    def snapshot_extra(self, extra: dict) -> None:
        extra["gpa_pte_tables"] = sorted(self.pte_tables)


class MipsV5_12(MipsMmu, KvmMainV5_12):
    """MIPS with the v5.12 hva hooks (before the MIPS flush rework and the series)."""

    def handle_hva_to_gpa(self, start: int, end: int, handler) -> bool:
        # v5.12 arch/mips/kvm/mmu.c handle_hva_to_gpa: address space 0, clamp to each slot,
        # g0 = floor gfn of the start, g1 = gfn of (end + PAGE_SIZE - 1), exclusive; OR results
        page = 1 << self.page_shift
        ret = False
        for slot in self.memslots.in_as_hitting(0, start, end):
            hva_start = max(start, slot.hva_start)
            hva_end = min(end, slot.hva_end)
            if hva_start >= hva_end:
                continue
            g0 = slot.hva_to_gfn(hva_start)
            g1 = slot.hva_to_gfn(hva_end + page - 1)
            ret |= bool(handler(slot, g0, g1))
        return ret

    def flush_shadow_all(self) -> None:
        # v5.12 arch/mips/kvm/vz.c kvm_vz_flush_shadow_all (and trap_emul.c
        # kvm_trap_emul_flush_shadow_all): kvm_flush_remote_tlbs, after marking every CPU in
        # asid_flush_mask on VZ without GuestID; a full flush either way
        self.kvm_flush_remote_tlbs("flush_shadow_all")

    def kvm_unmap_hva_range(self, start: int, end: int, flags: int) -> int:
        # v5.12 arch/mips/kvm/mmu.c kvm_unmap_hva_range: flags ignored, flush_shadow_all
        # even if no slot was hit, returns 0 (no generic flush)
        self.handle_hva_to_gpa(start, end,
                               lambda s, g0, g1: self.unmap_handler("kvm_unmap_hva_handler", s, g0, g1))
        self.flush_shadow_all()
        return 0

    def kvm_set_spte_hva(self, hva: int, pte: HostPte) -> int:
        # v5.12 arch/mips/kvm/mmu.c kvm_set_spte_hva: walks [hva, hva + PAGE_SIZE), flushes
        # itself if any handler asked, returns 0
        page = 1 << self.page_shift
        ret = self.handle_hva_to_gpa(hva, hva + page,
                                     lambda s, g0, g1: self.set_spte_handler("kvm_set_spte_handler", s, g0, pte))
        if ret:
            self.flush_shadow_all()
        return 0

    def kvm_age_hva(self, start: int, end: int) -> int:
        # v5.12 arch/mips/kvm/mmu.c kvm_age_hva
        return int(self.handle_hva_to_gpa(start, end,
                                          lambda s, g0, g1: self.age_handler("kvm_age_hva_handler", s, g0, g1)))

    def kvm_test_age_hva(self, hva: int) -> int:
        # v5.12 arch/mips/kvm/mmu.c kvm_test_age_hva: walks the empty range [hva, hva), so no
        # slot is ever hit and the answer is always 0
        return int(self.handle_hva_to_gpa(hva, hva,
                                          lambda s, g0, g1: self.test_age_handler("kvm_test_age_hva_handler", s, g0)))

    def kvm_arch_flush_shadow_all(self) -> None:
        # v5.12 arch/mips/kvm/mips.c kvm_arch_flush_shadow_all: flush GPA 0..~0 and
        # flush_shadow_all, without mmu_lock
        self.kvm_mips_flush_gpa_pt(0, ALL_GFNS)
        self.flush_shadow_all()

    def kvm_arch_flush_shadow_memslot(self, slot: Memslot) -> None:
        # v5.12 arch/mips/kvm/mips.c kvm_arch_flush_shadow_memslot: flush the slot's gfns with
        # the inclusive last gfn base + npages - 1, then flush_shadow_memslot (= flush_shadow_all)
        self.kvm_mips_flush_gpa_pt(slot.base_gfn, slot.base_gfn + slot.npages - 1)
        self.flush_shadow_all()


class MipsV5_13(MipsMmu, KvmMainV5_13):
    """MIPS with the v5.13 gfn handlers (Sean's MIPS conversion on top of Paolo's flush rework).

    Flushes are the generic kvm_flush_remote_tlbs: v5.13 arch/mips/kvm/mips.c
    kvm_arch_flush_remote_tlb runs prepare_flush_shadow and answers 1, so the all-vCPU request
    follows: one full flush."""

    def kvm_unmap_gfn_range(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/mips/kvm/mmu.c kvm_unmap_gfn_range: exclusive end into the inclusive
        # flush, then true for every slot hit
        return self.unmap_handler("kvm_unmap_gfn_range", range.slot, range.start, range.end)

    def kvm_set_spte_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/mips/kvm/mmu.c kvm_set_spte_gfn: range.start only, returns need-flush
        return self.set_spte_handler("kvm_set_spte_gfn", range.slot, range.start, range.pte)

    def kvm_age_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/mips/kvm/mmu.c kvm_age_gfn: mkold start..end inclusive
        return self.age_handler("kvm_age_gfn", range.slot, range.start, range.end)

    def kvm_test_age_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/mips/kvm/mmu.c kvm_test_age_gfn: young bit of range.start's pte
        return self.test_age_handler("kvm_test_age_gfn", range.slot, range.start)

    def kvm_arch_flush_shadow_all(self) -> None:
        # v5.13 arch/mips/kvm/mips.c kvm_arch_flush_shadow_all: flush GPA 0..~0, then
        # prepare_flush_shadow + kvm_flush_remote_tlbs, without mmu_lock
        self.kvm_mips_flush_gpa_pt(0, ALL_GFNS)
        self.kvm_flush_remote_tlbs()

    def kvm_arch_flush_shadow_memslot(self, slot: Memslot) -> None:
        # v5.13 arch/mips/kvm/mips.c kvm_arch_flush_shadow_memslot: inclusive last gfn
        # base + npages - 1, then kvm_arch_flush_remote_tlbs_memslot (prepare + full flush)
        self.kvm_mips_flush_gpa_pt(slot.base_gfn, slot.base_gfn + slot.npages - 1)
        self.kvm_flush_remote_tlbs()


MODELS = {"mips": {
    "v5.12": (MipsV5_12, ""),
    "v5.13-rc1": (MipsV5_13, "no MIPS MMU-notifier or kvm_main.c notifier change between v5.13-rc1 and v5.13"),
    "v5.13": (MipsV5_13, ""),
}}

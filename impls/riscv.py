"""RISC-V G-stage MMU: arch/riscv/kvm/mmu.c (v5.16 .. v6.16; gstage.c from v6.17), from the
release that merged KVM RISC-V (v5.16, already with the gfn handlers of the common walker).

Two configurations, two arch names (as ppc-hv-hash / ppc-hv-radix): `riscv-sv39` and
`riscv-sv48`.  They differ in two facts:

* the host kernel's paging mode, which sets the PGDIR_SIZE that mmu.c compares sizes with:
  1 GiB on Sv39 (PGDIR_SIZE == PUD_SIZE there), 512 GiB on Sv48 (run-time pgtable_l4_enabled,
  possible since the host Sv48 support of v5.17);
* the G-stage mode found by kvm_riscv_stage2_mode_detect: Sv39x4 (3 levels) or Sv48x4 (4
  levels).  The top table has 2048 entries (the "x4"), each 1 GiB on Sv39x4 and 512 GiB on
  Sv48x4.  Leaves can be 4K (our level 1), 2M (level 2) or 1G (level 3); Sv48x4 could hold a
  512 GiB leaf, but nothing creates one (hugetlb has no such page size), so the fourth level is
  modelled only as the size the unmap walk steps by over an empty top entry.

What the arch does (v5.16, unchanged in what these traces see until the v6.3 fix below)
-----------------------------------------------------------------------------------------
* get_leaf walks from the top: it stops at the first empty entry or at a leaf and reports the
  level where it stopped, found or not.
* unmap (kvm_unmap_gfn_range -> stage2_unmap_range): a cursor starts at the range's first
  gfn; at each step it asks get_leaf; a leaf that starts exactly at the cursor and fits in
  what is left of the range is cleared and flushed on the spot (hfence.gvma by gpa for the
  leaf, stage2_op_pte); otherwise nothing.  Either way the cursor moves on by the size of the
  level where the walk stopped, from where it was, never realigned.  So a range that starts
  inside a region whose entry is empty jumps past the start of the next region: a leaf there
  is never visited (missed invalidation, with page-aligned ranges); and a huge leaf the range
  enters in its middle, or covers only in part, is skipped.  The hook returns false: the
  generic layer never flushes for it.  Tables are never freed before the VM goes away.
* change_pte (kvm_set_spte_gfn): WARN unless one page; map one read-only 4K page with no page
  cache: -EEXIST if a huge leaf is on the way, -ENOMEM if a table is missing, else the pte is
  written (replacing a 4K leaf without break-before-make) and flushed; an error returns true,
  so the generic layer flushes everything.
* age / test_age: WARN when the range handed is not PAGE_SIZE, PMD_SIZE or PGDIR_SIZE pages
  (the range's size, never the leaf's); then only the leaf holding the range's FIRST gfn is
  looked at (first-leaf design as arm64 before df6556adf27b; mainline RISC-V still does it).
  No flush in the handler: clear_flush_young's flush is the generic kvm_flush_remote_tlbs.
* fault (kvm_riscv_stage2_map): the block size is the vma's hugetlb page size (our host
  mapping's size), 4K when the slot logs dirty pages; it must be PAGE_SIZE, PMD_SIZE or
  PGDIR_SIZE, else -EFAULT (a 1 GiB hugetlb vma on an Sv48 host before v6.3).  For a block the
  gfn is rounded down and that gfn's pfn is what gets mapped, with NO check that gpa and hva
  agree inside the block or that the block lies in the slot (arm64's
  fault_supports_stage2_huge_mapping has no RISC-V counterpart until the THP work queued for
  the release after v6.19).  Writing a block over an existing table entry replaces the table.
  Retry is mmu_notifier_retry (count and seq).
* memslot DELETE/MOVE: kvm_arch_flush_shadow_memslot is stage2_unmap_range over the slot
  (same cursor, no flush of its own beyond the per-leaf ones).  Release: free_pgd unmaps the
  whole guest physical space from 0 (every leaf, each flushed), then drops the pgd.

Versions (impls/registry.py composes the generic layers over RiscvSv39/RiscvSv48 from v5.16):
v5.17, v6.8, v6.10, v6.19 (mainline).  c25a6dddc62c (v6.3) "KVM: RISC-V: Fix wrong usage of
PGDIR_SIZE to check page sizes" is a LATER_OVERRIDE: the age WARNs and the fault path use
PUD_SIZE (1 GiB) instead of PGDIR_SIZE, which changes nothing on Sv39.  Renames (stage2_* ->
gstage_* in v5.18, the gstage.c split of v6.17), the v6.17 "flush only if the pte changed"
(clearing or replacing a present leaf always changes it) and the spinlock -> rwlock switch
(one exclusive lock here either way) change nothing observable.

Sources read: the v5.16-era mmu.c (stage2_*, riscv_cpuid_to_hartid_mask, mmu_notifier_seq);
the first gstage.c (2025, Sv57x4 detection, op_pte flushing only changed ptes); the newest
torvalds mmu.c/gstage.c, which already carries work queued after v6.19 (THP, alignment check
and aligned unmap cursor, batched flushes), so NOT modelled as v6.19.

Not modelled: ioremap of VM_PFNMAP regions at memslot creation, dirty-log write protection,
Sv57 (5 levels), the 32-bit Sv32x4 mode, memslots beyond the G-stage gpa size (-EFAULT at
prepare), a misaligned
superpage PPN (the hardware faults on it: only noted), the dirty bit every G-stage pte gets.
"""
from __future__ import annotations

from .kvm import Kvm, PendingFault
from .kvm_main_v5_13 import KvmGfnRange, KvmMainV5_13
from .machine import (KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, KVM_MEMSLOT_INVALID, LEVEL_1G,
                      LEVEL_2M, LEVEL_4K, Leaf, Memslot)

PMD_PAGES = 1 << 9                   # 2 MiB in 4K pages
PUD_PAGES = 1 << 18                  # 1 GiB
P4D_PAGES = 1 << 27                  # 512 GiB: an Sv48 PGDIR_SIZE, an Sv48x4 top entry

W_AGE_SIZE = "WARN_ON(size not PAGE_SIZE/PMD_SIZE/PGDIR_SIZE) in riscv kvm_age_gfn"
W_TEST_AGE_SIZE = "WARN_ON(size not PAGE_SIZE/PMD_SIZE/PGDIR_SIZE) in riscv kvm_test_age_gfn"
W_SET_SPTE_SIZE = "WARN_ON(range is not one page) in riscv kvm_set_spte_gfn"
HFENCE = "stage2_remote_tlb_flush (hfence.gvma by gpa)"


def level_pages(klevel: int) -> int:
    """Pages one entry of G-stage level `klevel` maps (the kernel counts levels from 0 = 4K)."""
    return 1 << (9 * klevel)


class RiscvGstage(Kvm):
    """What every version shares: the G-stage walkers, fault rules and flushes."""
    arch = "riscv-sv39"
    address_space_num = 1            # KVM_ADDRESS_SPACE_NUM (generic default)
    user_mem_slots = 512             # KVM_USER_MEM_SLOTS (not checked in the source: as arm64)
    readonly_mem = True              # __KVM_HAVE_READONLY_MEM (arch/riscv/include/uapi/asm/kvm.h)
    max_level = LEVEL_1G             # 4K, 2M and 1G leaves
    uses_retry_hva = False           # kvm_riscv_stage2_map uses mmu_notifier_retry
    gstage_levels = 3                # Sv39x4; Sv48x4 has 4
    host_pgdir_pages = PUD_PAGES     # host PGDIR_SIZE: 1 GiB on Sv39, 512 GiB on Sv48
    # the sizes the age WARN and the fault path accept besides PAGE_SIZE and PMD_SIZE:
    # PGDIR_SIZE until c25a6dddc62c (v6.3), PUD_SIZE after (RiscvPudSize_c25a6dddc62c)
    pud_named_pgdir = True

    def __init__(self) -> None:
        super().__init__()
        self.pgd = True              # kvm->arch.pgd: allocated at VM creation, NULL after release
        # entries that point to a table: (kernel level of the entry, first gfn it covers); the
        # pgd itself always exists.  Tables are freed only with the pgd.
        self.tables: set[tuple[int, int]] = set()

    def note(self, text: str) -> None:
        # recording helper (no kernel counterpart)
        self.obs.note = f"{self.obs.note}; {text}" if self.obs.note else text

    @property
    def big_size_pages(self) -> int:
        """The third size mmu.c accepts: PGDIR_SIZE before the fix, PUD_SIZE after."""
        return self.host_pgdir_pages if self.pud_named_pgdir else PUD_PAGES

    # ----- the G-stage walk ------------------------------------------------------------------
    def stage2_get_leaf_entry(self, gfn: int) -> tuple[Leaf | None, int]:
        # v5.16 arch/riscv/kvm/mmu.c stage2_get_leaf_entry: from the top level down, stop at a
        # leaf or at the first empty entry; the level where it stopped is reported either way
        klevel = self.gstage_levels - 1
        while True:
            n = level_pages(klevel)
            base = gfn - gfn % n
            if klevel <= 2:
                leaf = self.leaves.get((0, base, klevel + 1))
                if leaf is not None:
                    return leaf, klevel
            if klevel == 0 or (klevel, base) not in self.tables:
                return None, klevel
            klevel -= 1

    def stage2_remote_tlb_flush(self, klevel: int, gfn: int, origin: str = HFENCE) -> None:
        # v5.16 arch/riscv/kvm/mmu.c stage2_remote_tlb_flush: hfence.gvma of the VMID over the
        # level-sized block holding gfn, on every online hart (SBI remote fence)
        n = level_pages(klevel)
        base = gfn - gfn % n
        self.flush_tlb_range(0, base, base + n, origin)

    def stage2_unmap_range(self, start: int, end: int, may_block: bool) -> str:
        # v5.16 arch/riscv/kvm/mmu.c stage2_unmap_range: the cursor moves by the size of the
        # level where the walk stopped, from where it is; only a leaf starting at the cursor
        # and fitting in the rest of the range is cleared (stage2_op_pte, flushed on the spot);
        # with may_block, cond_resched_lock after each step that leaves the range unfinished
        addr, cleared, skipped = start, 0, []
        while addr < end:
            leaf, klevel = self.stage2_get_leaf_entry(addr)
            n = level_pages(klevel)
            cleared_here = False
            if leaf is not None:
                if addr % n == 0 and end - addr >= n:
                    self.zap_leaf(leaf)
                    self.stage2_remote_tlb_flush(klevel, addr)
                    cleared += 1
                    cleared_here = True
                else:
                    skipped.append(leaf.gfn)
            addr += n
            if may_block and addr < end and cleared_here:
                # the kernel offers it after every step; the model after a step that cleared a
                # leaf (a step that changed nothing leaves the state another task would see as
                # it was after the previous one), which keeps the points per event bounded by
                # the leaves and not by the range
                self.cond_resched_lock()
        detail = f"cleared {cleared}"
        if skipped:
            detail += ", skipped huge leaves at " + ", ".join(f"{g:#x}" for g in skipped)
        return detail + (", may_block" if may_block else "")

    def stage2_set_pte(self, klevel: int, gfn: int, make, can_alloc: bool) -> str:
        # v5.16 arch/riscv/kvm/mmu.c stage2_set_pte: walk to `klevel`, making tables from the
        # page cache (none for change_pte: -ENOMEM); a leaf on the way is -EEXIST; the entry
        # is then written whatever it held (a table pointer included) and, being a leaf,
        # flushed.  `make` builds the new leaf; returns what happened.
        for lvl in range(self.gstage_levels - 1, klevel, -1):
            n = level_pages(lvl)
            base = gfn - gfn % n
            if lvl <= 2 and (0, base, lvl + 1) in self.leaves:
                return "-EEXIST (a huge leaf on the way)"
            if (lvl, base) not in self.tables:
                if not can_alloc:
                    return "-ENOMEM (no table, no page cache)"
        for lvl in range(self.gstage_levels - 1, klevel, -1):
            n = level_pages(lvl)
            self.tables.add((lvl, gfn - gfn % n))
        n = level_pages(klevel)
        base = gfn - gfn % n
        what = "written"
        if klevel > 0 and (klevel, base) in self.tables:
            # the block replaces a table pointer: every mapping under it is gone with it
            self.tables = {(lv, b) for lv, b in self.tables
                           if not (lv <= klevel and base <= b < base + n)}
            for old in self.leaves_in(0, base, base + n):
                self.zap_leaf(old)
            what = "table replaced by a block"
        old = self.leaves.get((0, base, klevel + 1))
        make(old, base)
        self.stage2_remote_tlb_flush(klevel, gfn, "stage2_set_pte (hfence.gvma by gpa)")
        return what

    # ----- memslot removal and release -------------------------------------------------------
    def kvm_arch_flush_shadow_memslot(self, slot: Memslot) -> None:
        # v5.16 arch/riscv/kvm/mmu.c kvm_arch_flush_shadow_memslot: stage2_unmap_range over the
        # slot's gfns under mmu_lock (taken by the caller here), may_block false
        detail = self.stage2_unmap_range(slot.base_gfn, slot.gfn_end, False)
        self.note(f"flush_shadow_memslot: {detail}")

    def kvm_arch_flush_shadow_all(self) -> None:
        # v5.16 arch/riscv/kvm/mmu.c kvm_arch_flush_shadow_all -> kvm_riscv_stage2_free_pgd:
        # under mmu_lock unmap the whole gpa space from 0 (aligned, so every leaf goes), then
        # drop the pgd
        self.mmu_lock()
        if self.pgd:
            gpa_pages = level_pages(self.gstage_levels - 1) * 2048
            self.stage2_unmap_range(0, gpa_pages, False)
            self.pgd = None
            self.tables.clear()
        self.mmu_unlock()

    # ----- the fault path ----------------------------------------------------------------------
    def fault_commit(self, fault: int) -> None:
        # v5.16 arch/riscv/kvm/mmu.c kvm_riscv_stage2_map; after release no vCPU can run
        if not self.pgd and fault in self.faults:
            self.faults.pop(fault)
            self.obs.note = "no pgd (after release)"
            return
        super().fault_commit(fault)

    def memslot_is_logging(self, slot: Memslot) -> bool:
        # v5.16 arch/riscv/kvm/mmu.c kvm_riscv_stage2_map: dirty bitmap and not read-only
        return bool(slot.flags & KVM_MEM_LOG_DIRTY_PAGES) and not (slot.flags & KVM_MEM_READONLY)

    def vma_pagesize_pages(self, f: PendingFault) -> int | None:
        # v5.16 arch/riscv/kvm/mmu.c kvm_riscv_stage2_map: the vma's hugetlb size (our host
        # mapping's size), a page when logging; only PAGE_SIZE, PMD_SIZE and PGDIR_SIZE (PUD_SIZE
        # from c25a6dddc62c) are accepted, anything else is -EFAULT (None)
        if self.memslot_is_logging(f.slot):
            return 1
        size = {LEVEL_4K: 1, LEVEL_2M: PMD_PAGES, LEVEL_1G: PUD_PAGES}[f.pte.level]
        if size in (1, PMD_PAGES, self.big_size_pages):
            return size
        return None

    def map_fault(self, f: PendingFault) -> None:
        # v5.16 arch/riscv/kvm/mmu.c kvm_riscv_stage2_map -> stage2_map_page -> stage2_set_pte:
        # a block maps the pfn of the rounded-down gfn, found through whatever slot holds it,
        # with no alignment or slot-bounds check; a read fault on a logging slot maps read-only
        n = self.vma_pagesize_pages(f)
        if n is None:
            self.note("-EFAULT (invalid vma page size)")
            return
        base = f.gfn - f.gfn % n
        slot, pte, hva = f.slot, f.pte, f.hva
        if n > 1:
            slot = self.memslots.find_gfn(f.as_id, base)
            if slot is None or slot.flags & KVM_MEMSLOT_INVALID:
                self.note("-EFAULT (no memslot holds the block's first gfn)")
                return
            hva = slot.gfn_to_hva(base)
            pte = self.host.lookup(hva)
            if pte is None:
                self.note("-EFAULT (no host page at the block's first gfn)")
                return
            if pte.pfn % n:
                self.note("misaligned superpage PPN (the hart faults on it)")
        writable = pte.writable and not (slot.flags & KVM_MEM_READONLY)
        if self.memslot_is_logging(f.slot) and not f.write:
            writable = False
        klevel = {1: 0, PMD_PAGES: 1, PUD_PAGES: 2}[n]
        level = klevel + 1

        def make(old: Leaf | None, at: int) -> None:
            if old is not None:
                self.zap_leaf(old)
            self.install_leaf(Leaf(f.as_id, at, level, pte.pfn, n, writable=writable, young=True,
                                   dirty=f.write and writable, hva=hva), fill_tlb=False)

        what = self.stage2_set_pte(klevel, f.gfn, make, True)
        if what.startswith("-"):
            self.note(what)
            return
        self.tlb.fill(self.leaves[(f.as_id, base, level)])
        if what != "written":
            self.note(what)


class RiscvSv48Vm:
    """Sv48 host and Sv48x4 G-stage: PGDIR_SIZE is 512 GiB, the top entry maps 512 GiB."""
    arch = "riscv-sv48"
    gstage_levels = 4
    host_pgdir_pages = P4D_PAGES


class RiscvHandlers(RiscvGstage, KvmMainV5_13):
    """The gfn handlers as merged in v5.16 (the common walker's API of v5.13)."""

    def kvm_unmap_gfn_range(self, range: KvmGfnRange) -> bool:
        # v5.16 arch/riscv/kvm/mmu.c kvm_unmap_gfn_range: stage2_unmap_range over [start, end),
        # always false
        if not self.pgd:
            return False
        detail = self.stage2_unmap_range(range.start, range.end, range.may_block)
        self.record_call("kvm_unmap_gfn_range", range.slot, range.start, range.end, detail)
        return False

    def kvm_set_spte_gfn(self, range: KvmGfnRange) -> bool:
        # v5.16 arch/riscv/kvm/mmu.c kvm_set_spte_gfn: WARN unless one gfn; a read-only 4K page
        # at start with no page cache; an error makes the generic layer flush
        if not self.pgd:
            return False
        if range.end - range.start != 1:
            self.warn(W_SET_SPTE_SIZE)
        gfn, pfn = range.start, range.pte.pfn

        def make(old: Leaf | None, at: int) -> None:
            if old is not None:
                self.change_leaf(old, pfn, writable=False, young=True)
            else:
                self.install_leaf(Leaf(0, at, LEVEL_4K, pfn, 1, writable=False, young=True),
                                  fill_tlb=False)

        what = self.stage2_set_pte(0, gfn, make, False)
        self.record_call("kvm_set_spte_gfn", range.slot, gfn, gfn + 1, what)
        return what.startswith("-")

    def age_size_warns(self, range: KvmGfnRange) -> bool:
        """The size test of both age handlers: the range's size, not the leaf's."""
        # v5.16 arch/riscv/kvm/mmu.c kvm_age_gfn: PAGE_SIZE, PMD_SIZE or PGDIR_SIZE pages
        return range.end - range.start not in (1, PMD_PAGES, self.big_size_pages)

    def kvm_age_gfn(self, range: KvmGfnRange) -> bool:
        # v5.16 arch/riscv/kvm/mmu.c kvm_age_gfn: size WARN, then test-and-clear the accessed
        # bit of the leaf holding the first gfn only; no flush
        if not self.pgd:
            return False
        if self.age_size_warns(range):
            self.warn(W_AGE_SIZE)
        self.record_call("kvm_age_gfn", range.slot, range.start, range.start + 1,
                         f"{range.end - range.start} pages handed; first leaf only")
        leaf, _ = self.stage2_get_leaf_entry(range.start)
        if leaf is None or not leaf.young:
            return False
        self.age_leaf(leaf)
        return True

    def kvm_test_age_gfn(self, range: KvmGfnRange) -> bool:
        # v5.16 arch/riscv/kvm/mmu.c kvm_test_age_gfn: the same WARN; accessed bit of the leaf
        # holding the first gfn
        if not self.pgd:
            return False
        if self.age_size_warns(range):
            self.warn(W_TEST_AGE_SIZE)
        self.record_call("kvm_test_age_gfn", range.slot, range.start, range.start + 1)
        leaf, _ = self.stage2_get_leaf_entry(range.start)
        return leaf is not None and leaf.young


class RiscvSv39(RiscvHandlers):
    """riscv-sv39: Sv39 host (PGDIR_SIZE 1 GiB), Sv39x4 G-stage."""


class RiscvSv48(RiscvSv48Vm, RiscvHandlers):
    """riscv-sv48: Sv48 host (PGDIR_SIZE 512 GiB), Sv48x4 G-stage."""


class RiscvPudSize_c25a6dddc62c(RiscvGstage):
    """c25a6dddc62c "KVM: RISC-V: Fix wrong usage of PGDIR_SIZE to check page sizes" (KVM
    RISC-V changes for 6.3): the age WARNs and the fault path's size test name PUD_SIZE, so a
    1 GiB range no longer warns and a 1 GiB hugetlb vma is mapped on an Sv48 host.  Same
    behaviour as before on Sv39.  Applied from the first listed version at or after v6.3."""
    # v6.3 arch/riscv/kvm/mmu.c kvm_age_gfn, kvm_test_age_gfn, kvm_riscv_gstage_map
    pud_named_pgdir = False


# RISC-V's own commits after v5.16, each from the release that merged it (impls/registry.py)
LATER_OVERRIDES = [("v6.3", RiscvPudSize_c25a6dddc62c)]

# arch -> (first release, class with the gfn handlers): the registry puts the generic layers
# of every listed version at or after that release over it (impls/registry.py base_handlers)
BASE_HANDLERS = {
    "riscv-sv39": ("v5.16", RiscvSv39),
    "riscv-sv48": ("v5.16", RiscvSv48),
}

MODELS: dict = {"riscv-sv39": {}, "riscv-sv48": {}}

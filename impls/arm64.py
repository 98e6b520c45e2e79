"""arm64 stage-2 MMU: arch/arm64/kvm/mmu.c and arch/arm64/kvm/hyp/pgtable.c, v5.12 and v5.13.

What the arch does
------------------
Stage 2 is a kvm_pgtable walked by the generic pgtable.c walker.  With 4 KiB pages (our
choice for every arch: page_shift 12) and the default 40-bit IPA it has three levels:
1 GiB entries (the "PGD" that stage2_apply_range chunks on), 2 MiB entries and 4 KiB pages.
Leaves can be pages (our level 1), PMD blocks (level 2, 2 MiB) or PUD blocks (level 3,
1 GiB); only the fault path creates blocks (user_mem_abort with
fault_supports_stage2_huge_mapping).  KVM_ADDRESS_SPACE_NUM is 1.

* unmap: every valid leaf the walk meets is cleared whole, blocks that stick out of the
  range included, and each one is invalidated on the spot with a TLBI by IPA
  (stage2_put_pte).  Last-level / 2 MiB-level tables left empty are freed, again with a
  TLBI.  The hook returns 0, so the generic layer never flushes for it.
* change_pte (set_spte): maps one read-only page with no memcache.  That installs a page
  when a last-level table already exists, does break-before-make over a different page,
  leaves an identical or permission-only-different page alone (-EAGAIN), and fails
  (-ENOMEM, nothing changes) when a table is missing or the IPA lies inside a block.
  We model "a last-level table exists for a 2 MiB region" as "some 4K leaf of that region
  exists": the unmap walker frees a table as soon as it is empty and nothing else empties
  one, so the two are the same.  The hook returns 0.
* age / test_age: look only at the one leaf holding the first IPA of each slot hit;
  mkold clears its AF (a whole block at once) with no TLBI.  clear_flush_young's flush is
  arm64's own kvm_flush_remote_tlbs: one TLBI for the whole VMID.
* Faults check mmu_notifier_retry (sequence count, not the hva range).

v5.12: handle_hva_to_gpa walks the memslots itself and hands each handler (gpa, bytes)
with gpa from the floored gfn of the unrounded clamped start and bytes = clamped end -
clamped start.  The page-table walk then covers ceil(bytes / PAGE_SIZE) pages from gpa, so
an unaligned start loses the last touched page; unaligned sizes WARN.  set_spte and
test_age walk [hva, hva + PAGE_SIZE), which for an unaligned hva reaches an hva-adjacent
slot.  set_spte cleans the dcache once before the walk, even with no slot hit.
v5.13 (cd4c71835228): the common walker hands [start, end) gfns; unmap covers every touched
page, set_spte WARNs unless one page and cleans the dcache once per slot hit, age keeps its
size WARN, test_age has none.  v5.13-rc1 returned a literal 0 from these bool handlers and
the boolreturn fix (fcb8283920b1) made it `false`: same value, so rc1 and final share a class.

Recording: each handler reports the gfns its page-table walk really covers: the unmap
span; for set_spte, age and test_age the single page at the first gfn (they never look
past it).  Warnings use the same text in both versions for the same condition.

An unmap that may block (the notifier's with a blockable range, a memslot's removal) offers
mmu_lock to other tasks between 1 GiB chunks (cond_resched_lock; the chunk count is shown in the
call detail).  Not modelled: the dcache
clean+invalidate of cacheable leaves on unmap (no observation; skipped with FWB); the
dcache clean in change_pte is only written to obs.note; write-protection on enabling dirty
logging (kvm_mmu_wp_memory_region); device / VM_PFNMAP memory; nested stage 2; tracepoints.
"""
from __future__ import annotations

from .kvm import MMU_NOTIFIER_RANGE_BLOCKABLE, Kvm, PendingFault
from .kvm_main_v5_12 import KvmMainV5_12
from .kvm_main_v5_13 import KvmGfnRange, KvmMainV5_13
from .machine import (KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY, LEVEL_1G, LEVEL_2M, LEVEL_4K,
                      HostPte, Leaf, Memslot, pages_per_level)

PMD_PAGES = pages_per_level(LEVEL_2M)          # 512
PUD_PAGES = pages_per_level(LEVEL_1G)          # 262144: one stage-2 PGD entry (40-bit IPA)

W_UNMAP_SIZE = "WARN_ON(size & ~PAGE_MASK) in __unmap_stage2_range"
W_UNMAP_NO_PGT = "WARN_ON(stage2_apply_range() == -EINVAL: no stage-2 pgt) in __unmap_stage2_range"
W_SET_SPTE_SIZE = "WARN_ON(set_spte range is not one page) in arm64 set_spte handler"
W_AGE_SIZE = "WARN_ON(size not PAGE_SIZE/PMD_SIZE/PUD_SIZE) in arm64 age handler"
W_TEST_AGE_SIZE = "WARN_ON(size not PAGE_SIZE/PMD_SIZE/PUD_SIZE) in arm64 test_age handler"


class Arm64Mmu(Kvm):
    """What both versions share: the stage-2 walkers, fault rules and flushes."""
    arch = "arm64"
    address_space_num = 1            # KVM_ADDRESS_SPACE_NUM (generic default)
    user_mem_slots = 512             # KVM_USER_MEM_SLOTS (v5.12 arch/arm64/include/asm/kvm_host.h)
    readonly_mem = True              # __KVM_HAVE_READONLY_MEM
    max_level = LEVEL_1G             # PUD blocks with 4K pages (kvm_block_mapping_supported)
    uses_retry_hva = False           # user_mem_abort uses mmu_notifier_retry

    def __init__(self) -> None:
        super().__init__()
        self.pgt = True              # kvm->arch.mmu.pgt: set at VM creation, NULL after release

    def note(self, text: str) -> None:
        # recording helper (no kernel counterpart): side effects without an observation field
        self.obs.note = f"{self.obs.note}; {text}" if self.obs.note else text

    # ----- flushes ----------------------------------------------------------------------
    def kvm_flush_remote_tlbs(self, origin: str = "kvm_flush_remote_tlbs") -> None:
        # v5.12 arch/arm64/kvm/mmu.c kvm_flush_remote_tlbs: one hyp call invalidating the
        # whole VMID; no vCPU requests and tlbs_dirty is never used on arm64
        self.flush_tlb_all(f"{origin} (__kvm_tlb_flush_vmid)")

    # ----- page-table helpers -------------------------------------------------------------
    def has_last_level_table(self, as_id: int, gfn: int) -> bool:
        """A 4K page table exists under the 2 MiB entry of gfn (see module docstring)."""
        # v5.12 arch/arm64/kvm/hyp/pgtable.c stage2_map_walk_leaf (tables are created only by
        # faults, freed by stage2_unmap_walker once their page refcount says empty)
        base = gfn - gfn % PMD_PAGES
        return any(x.as_id == as_id and x.level == LEVEL_4K and base <= x.gfn < base + PMD_PAGES
                   for x in self.leaves.values())

    def has_pmd_table(self, as_id: int, gfn: int) -> bool:
        """A table of 2 MiB entries exists under the 1 GiB entry of gfn."""
        # v5.12 arch/arm64/kvm/hyp/pgtable.c stage2_unmap_walker (same refcount rule, level 1)
        base = gfn - gfn % PUD_PAGES
        return any(x.as_id == as_id and x.level <= LEVEL_2M and base <= x.gfn < base + PUD_PAGES
                   for x in self.leaves.values())

    def stage2_unmap(self, as_id: int, start: int, end: int) -> None:
        # v5.12 arch/arm64/kvm/hyp/pgtable.c kvm_pgtable_stage2_unmap / stage2_unmap_walker:
        # every valid leaf touching [start, end) pages is cleared whole with a TLBI for its
        # IPA (stage2_put_pte); a table the walk passes that is left empty is freed, also
        # with a TLBI; nothing is returned to the caller
        pmd_regions, pud_regions = set(), set()
        for leaf in self.leaves_in(as_id, start, end):
            self.zap_leaf(leaf)
            self.flush_tlb_range(as_id, leaf.gfn, leaf.gfn_end, "stage2_put_pte (leaf TLBI by IPA)")
            if leaf.level == LEVEL_4K:
                pmd_regions.add(leaf.gfn - leaf.gfn % PMD_PAGES)
            if leaf.level <= LEVEL_2M:
                pud_regions.add(leaf.gfn - leaf.gfn % PUD_PAGES)
        for base in sorted(pmd_regions):
            if not self.has_last_level_table(as_id, base):
                at = max(start, base)
                self.flush_tlb_range(as_id, at, at + 1, "stage2_put_pte (empty table freed)")
        for base in sorted(pud_regions):
            if not self.has_pmd_table(as_id, base):
                at = max(start, base)
                self.flush_tlb_range(as_id, at, at + 1, "stage2_put_pte (empty table freed)")

    def unmap_stage2_range(self, as_id: int, start: int, end: int, may_block: bool) -> str:
        # v5.12 arch/arm64/kvm/mmu.c stage2_apply_range: cut at 1 GiB (stage-2 PGD entry)
        # boundaries, re-read pgt per chunk; cond_resched_lock between chunks when may_block
        if not self.pgt:
            self.warn(W_UNMAP_NO_PGT)
            return "no pgt"
        chunks = 0
        addr = start
        while addr < end:
            nxt = min(addr - addr % PUD_PAGES + PUD_PAGES, end)
            before = len(self.obs.zapped)
            self.stage2_unmap(as_id, addr, nxt)
            chunks += 1
            # offered after a chunk that unmapped something (one that changed nothing leaves the
            # state as it was after the chunk before), so the points per event stay bounded by
            # the leaves, not by the range: a 1 TiB range has 1024 chunks
            if may_block and nxt != end and len(self.obs.zapped) > before:
                self.cond_resched_lock()
                if not self.pgt:
                    # the next chunk re-reads mmu->pgt, which the VM's teardown may have cleared
                    self.warn(W_UNMAP_NO_PGT)
                    break
            addr = nxt
        return f"pgd chunks {chunks}" + (", may_block" if may_block else "")

    def stage2_map_ro_page(self, as_id: int, gfn: int, pfn: int) -> str:
        # v5.12 arch/arm64/kvm/hyp/pgtable.c kvm_pgtable_stage2_map with one page, PROT_R and
        # no memcache: stage2_map_walk_leaf / stage2_map_walker_try_leaf (694d071f8d85 filter)
        leaf = self.leaf_covering(as_id, gfn)
        if leaf is not None and leaf.level > LEVEL_4K:
            return "-ENOMEM (inside a block)"          # would need a new table
        if leaf is None:
            if not self.has_last_level_table(as_id, gfn):
                return "-ENOMEM (no last-level table)"
            self.install_leaf(Leaf(as_id, gfn, LEVEL_4K, pfn, 1, writable=False, young=True))
            return "installed"
        if leaf.pfn == pfn and leaf.young:
            return "-EAGAIN (only permissions differ)"   # the old leaf stays as it is
        # break-before-make: clear, TLBI for this IPA, write the new read-only young page
        self.change_leaf(leaf, pfn, writable=False, young=True)
        self.flush_tlb_range(as_id, leaf.gfn, leaf.gfn_end, "stage2_map_walker_try_leaf (BBM TLBI)")
        return "break-before-make"

    def stage2_mkold(self, as_id: int, gfn: int) -> bool:
        # v5.12 arch/arm64/kvm/hyp/pgtable.c kvm_pgtable_stage2_mkold: the leaf holding the
        # IPA loses AF (written only if it changes), no TLBI; the old pte is returned
        leaf = self.leaf_covering(as_id, gfn)
        if leaf is None or not leaf.young:
            return False
        self.age_leaf(leaf)
        return True

    def stage2_is_young(self, as_id: int, gfn: int) -> bool:
        # v5.12 arch/arm64/kvm/hyp/pgtable.c kvm_pgtable_stage2_is_young: AF of the leaf
        leaf = self.leaf_covering(as_id, gfn)
        return leaf is not None and leaf.young

    def clean_dcache_guest_page(self, pfn: int) -> None:
        # v5.12 arch/arm64/include/asm/kvm_mmu.h clean_dcache_guest_page: a cache
        # maintenance side effect only, recorded in the note
        self.note(f"dcache clean pfn {pfn:#x}")

    # ----- memslot removal and release -------------------------------------------------------
    def kvm_arch_flush_shadow_memslot(self, slot: Memslot) -> None:
        # v5.12 arch/arm64/kvm/mmu.c kvm_arch_flush_shadow_memslot: unmap_stage2_range of the
        # whole slot under mmu_lock (taken by the caller here); TLBIs come from the walker
        self.unmap_stage2_range(slot.as_id, slot.base_gfn, slot.gfn_end, True)

    def kvm_arch_flush_shadow_all(self) -> None:
        # v5.12 arch/arm64/kvm/mmu.c kvm_arch_flush_shadow_all -> kvm_free_stage2_pgd: pgt set
        # to NULL under mmu_lock, then kvm_pgtable_stage2_destroy frees every table (no TLBI)
        self.mmu_lock()
        had = self.pgt
        self.pgt = None
        self.mmu_unlock()
        if had:
            for leaf in list(self.leaves.values()):
                self.zap_leaf(leaf)

    # ----- the fault path ----------------------------------------------------------------------
    def fault_commit(self, fault: int) -> None:
        # v5.12 arch/arm64/kvm/mmu.c user_mem_abort; after release no vCPU can run (the mm is
        # gone), so a fault reaching a NULL pgt is only noted
        if not self.pgt and fault in self.faults:
            self.faults.pop(fault)
            self.obs.note = "no stage-2 pgt (after release)"
            return
        super().fault_commit(fault)

    def fault_supports_stage2_huge_mapping(self, slot: Memslot, hva: int, size: int) -> bool:
        # v5.12 arch/arm64/kvm/mmu.c fault_supports_stage2_huge_mapping: gpa and hva equally
        # aligned within size, and the size-aligned block around hva inside the slot's hvas
        if size == 1 << self.page_shift:
            return True
        gpa_start = slot.base_gfn << self.page_shift
        if (gpa_start & (size - 1)) != (slot.userspace_addr & (size - 1)):
            return False
        block = hva & ~(size - 1)
        return block >= slot.hva_start and block + size <= slot.hva_end

    def memslot_is_logging(self, slot: Memslot) -> bool:
        # v5.12 arch/arm64/kvm/mmu.c memslot_is_logging: dirty bitmap and not read-only
        return bool(slot.flags & KVM_MEM_LOG_DIRTY_PAGES) and not (slot.flags & KVM_MEM_READONLY)

    def fault_level(self, f: PendingFault) -> int:
        # v5.12 arch/arm64/kvm/mmu.c user_mem_abort: logging forces pages; a 1G hugetlb
        # mapping tries PUD, then falls back to PMD, then to a page; a 2M host mapping
        # (hugetlb PMD or THP via transparent_hugepage_adjust) tries PMD, then a page
        if self.memslot_is_logging(f.slot):
            return LEVEL_4K
        host = f.pte.level
        if host >= LEVEL_1G:
            if self.fault_supports_stage2_huge_mapping(f.slot, f.hva, 1 << 30):
                return LEVEL_1G
            host = LEVEL_2M
        if host == LEVEL_2M and self.fault_supports_stage2_huge_mapping(f.slot, f.hva, 2 << 20):
            return LEVEL_2M
        return LEVEL_4K

    def huge_frame_allowed(self, slot: Memslot, gfn: int, level: int) -> bool:
        # v5.12 arch/arm64/kvm/mmu.c fault_supports_stage2_huge_mapping, asked for the hva of gfn
        return self.fault_supports_stage2_huge_mapping(
            slot, slot.gfn_to_hva(gfn), pages_per_level(level, self.page_shift) << self.page_shift)

    def map_fault(self, f: PendingFault) -> None:
        # v5.12 arch/arm64/kvm/mmu.c user_mem_abort -> kvm_pgtable_stage2_map: the IPA is
        # rounded down to the block; a table in the way of a new block is invalidated with
        # one TLBI for the whole VMID (pgtable.c stage2_map_walk_table_pre) and freed; a
        # read fault on a logging slot maps read-only
        level = self.fault_level(f)
        n = pages_per_level(level, self.page_shift)
        base = f.gfn - f.gfn % n
        below = self.leaves_in(f.as_id, base, base + n)
        for old in below:
            self.zap_leaf(old)
        if below:
            self.flush_tlb_all("stage2_map_walk_table_pre (__kvm_tlb_flush_vmid)")
        writable = f.pte.writable and not (f.slot.flags & KVM_MEM_READONLY)
        if self.memslot_is_logging(f.slot) and not f.write:
            writable = False
        self.install_leaf(Leaf(f.as_id, base, level, f.pte.pfn - (f.gfn - base), n,
                               writable=writable, young=True, dirty=f.write and writable))


class Arm64V5_12(Arm64Mmu, KvmMainV5_12):
    """arm64 with the v5.12 hva hooks and handle_hva_to_gpa."""

    def handle_hva_to_gpa(self, start: int, end: int, handler, data=None) -> int:
        # v5.12 arch/arm64/kvm/mmu.c handle_hva_to_gpa: address space 0 only; gpa from the
        # floored gfn of the clamped start, size in bytes from the unrounded clamped range
        ret = 0
        for slot in self.memslots.in_as_hitting(0, start, end):
            hva_start = max(start, slot.hva_start)
            hva_end = min(end, slot.hva_end)
            if hva_start >= hva_end:
                continue
            ret |= int(handler(slot, slot.hva_to_gfn(hva_start), hva_end - hva_start, data))
        return ret

    def kvm_unmap_hva_handler(self, slot: Memslot, gfn: int, size: int, flags: int) -> int:
        # v5.12 arch/arm64/kvm/mmu.c kvm_unmap_hva_handler -> __unmap_stage2_range: the walk
        # rounds gpa + size up to a page, so it covers ceil(size / PAGE_SIZE) pages from gfn
        if size % (1 << self.page_shift):
            self.warn(W_UNMAP_SIZE)
        pages = -(-size >> self.page_shift)
        detail = self.unmap_stage2_range(slot.as_id, gfn, gfn + pages,
                                         bool(flags & MMU_NOTIFIER_RANGE_BLOCKABLE))
        self.record_call("kvm_unmap_hva_handler", slot, gfn, gfn + pages, f"bytes {size:#x}; {detail}")
        return 0

    def kvm_unmap_hva_range(self, start: int, end: int, flags: int) -> int:
        # v5.12 arch/arm64/kvm/mmu.c kvm_unmap_hva_range: 0 without pgt; always returns 0
        if not self.pgt:
            return 0
        self.handle_hva_to_gpa(start, end, self.kvm_unmap_hva_handler, flags)
        return 0

    def kvm_set_spte_handler(self, slot: Memslot, gfn: int, size: int, pfn: int) -> int:
        # v5.12 arch/arm64/kvm/mmu.c kvm_set_spte_handler: WARN unless one page, then map one
        # read-only page at gpa whatever size was; the result is ignored
        if size != 1 << self.page_shift:
            self.warn(W_SET_SPTE_SIZE)
        what = self.stage2_map_ro_page(slot.as_id, gfn, pfn)
        self.record_call("kvm_set_spte_handler", slot, gfn, gfn + 1, f"bytes {size:#x}; {what}")
        return 0

    def kvm_set_spte_hva(self, hva: int, pte: HostPte) -> int:
        # v5.12 arch/arm64/kvm/mmu.c kvm_set_spte_hva: 0 without pgt; dcache clean once
        # before the walk (even with no slot hit); walk [hva, hva + PAGE_SIZE); returns 0
        if not self.pgt:
            return 0
        self.clean_dcache_guest_page(pte.pfn)
        self.handle_hva_to_gpa(hva, hva + (1 << self.page_shift), self.kvm_set_spte_handler, pte.pfn)
        return 0

    def kvm_age_hva_handler(self, slot: Memslot, gfn: int, size: int, data=None) -> int:
        # v5.12 arch/arm64/kvm/mmu.c kvm_age_hva_handler: size WARN, mkold on gpa only
        if size not in (1 << self.page_shift, 2 << 20, 1 << 30):
            self.warn(W_AGE_SIZE)
        young = self.stage2_mkold(slot.as_id, gfn)
        self.record_call("kvm_age_hva_handler", slot, gfn, gfn + 1, f"bytes {size:#x}; mkold first ipa")
        return int(young)

    def kvm_age_hva(self, start: int, end: int) -> int:
        # v5.12 arch/arm64/kvm/mmu.c kvm_age_hva: 0 without pgt; OR of the handlers
        if not self.pgt:
            return 0
        return self.handle_hva_to_gpa(start, end, self.kvm_age_hva_handler)

    def kvm_test_age_hva_handler(self, slot: Memslot, gfn: int, size: int, data=None) -> int:
        # v5.12 arch/arm64/kvm/mmu.c kvm_test_age_hva_handler: size WARN, AF of gpa's leaf
        if size not in (1 << self.page_shift, 2 << 20, 1 << 30):
            self.warn(W_TEST_AGE_SIZE)
        self.record_call("kvm_test_age_hva_handler", slot, gfn, gfn + 1, f"bytes {size:#x}")
        return int(self.stage2_is_young(slot.as_id, gfn))

    def kvm_test_age_hva(self, hva: int) -> int:
        # v5.12 arch/arm64/kvm/mmu.c kvm_test_age_hva: walk [hva, hva + PAGE_SIZE)
        if not self.pgt:
            return 0
        return self.handle_hva_to_gpa(hva, hva + (1 << self.page_shift), self.kvm_test_age_hva_handler)


class Arm64V5_13(Arm64Mmu, KvmMainV5_13):
    """arm64 with the v5.13 gfn handlers (cd4c71835228; boolreturn fix fcb8283920b1)."""

    def kvm_unmap_gfn_range(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/arm64/kvm/mmu.c kvm_unmap_gfn_range: __unmap_stage2_range over exactly
        # [start, end) pages (page-sized, so no size WARN); always false
        if not self.pgt:
            return False
        detail = self.unmap_stage2_range(range.slot.as_id, range.start, range.end, range.may_block)
        self.record_call("kvm_unmap_gfn_range", range.slot, range.start, range.end, detail)
        return False

    def kvm_set_spte_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/arm64/kvm/mmu.c kvm_set_spte_gfn: WARN unless one gfn; dcache clean per
        # slot hit, under mmu_lock; map one read-only page at start; always false
        if not self.pgt:
            return False
        if range.end - range.start != 1:
            self.warn(W_SET_SPTE_SIZE)
        self.clean_dcache_guest_page(range.pte.pfn)
        what = self.stage2_map_ro_page(range.slot.as_id, range.start, range.pte.pfn)
        self.record_call("kvm_set_spte_gfn", range.slot, range.start, range.start + 1, what)
        return False

    def kvm_age_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/arm64/kvm/mmu.c kvm_age_gfn: size WARN on (end - start) pages, mkold on
        # start only; valid && young of the old pte
        if not self.pgt:
            return False
        size = (range.end - range.start) << self.page_shift
        if size not in (1 << self.page_shift, 2 << 20, 1 << 30):
            self.warn(W_AGE_SIZE)
        young = self.stage2_mkold(range.slot.as_id, range.start)
        self.record_call("kvm_age_gfn", range.slot, range.start, range.start + 1,
                         f"{range.end - range.start} pages handed; mkold first ipa")
        return young

    def kvm_test_age_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/arm64/kvm/mmu.c kvm_test_age_gfn: AF of start's leaf; no size WARN
        if not self.pgt:
            return False
        self.record_call("kvm_test_age_gfn", range.slot, range.start, range.start + 1)
        return self.stage2_is_young(range.slot.as_id, range.start)


class Arm64AgeEveryLeaf_df6556adf27b(Arm64Mmu):
    """df6556adf27b "KVM: arm64: Correctly handle page aging notifiers for unaligned memslot"
    (kvmarm fixes, v6.5-rc; Cc stable 5.15+): kvm_age_gfn and kvm_test_age_gfn walk every valid
    leaf in [start, end) (kvm_pgtable_stage2_test_clear_young), report young if any had the
    access flag, clear it on each when aging, and no longer WARN on the range's size.  Still no
    TLBI in the walker: clear_flush_young flushes in common code.  Applied from the first
    listed version at or after v6.5 (v6.8)."""

    def stage2_test_clear_young(self, as_id: int, start: int, end: int, mkold: bool) -> bool:
        # v6.5 arch/arm64/kvm/hyp/pgtable.c kvm_pgtable_stage2_test_clear_young / stage2_age_walker
        young = False
        for leaf in self.leaves_in(as_id, start, end):
            if leaf.young:
                young = True
                if mkold:
                    self.age_leaf(leaf)
        return young

    def kvm_age_gfn(self, range: KvmGfnRange) -> bool:
        # v6.5 arch/arm64/kvm/mmu.c kvm_age_gfn (df6556adf27b): every leaf, no size WARN
        if not self.pgt:
            return False
        young = self.stage2_test_clear_young(range.slot.as_id, range.start, range.end, True)
        self.record_call("kvm_age_gfn", range.slot, range.start, range.end, "test_clear_young, mkold")
        return young

    def kvm_test_age_gfn(self, range: KvmGfnRange) -> bool:
        # v6.5 arch/arm64/kvm/mmu.c kvm_test_age_gfn (df6556adf27b): every leaf in the range
        if not self.pgt:
            return False
        self.record_call("kvm_test_age_gfn", range.slot, range.start, range.end, "test_clear_young")
        return self.stage2_test_clear_young(range.slot.as_id, range.start, range.end, False)


# arm64's own commits after v5.13, each from the release that merged it (impls/registry.py)
LATER_OVERRIDES = [("v6.5", Arm64AgeEveryLeaf_df6556adf27b)]


MODELS = {"arm64": {
    "v5.12": (Arm64V5_12, ""),
    "v5.13-rc1": (Arm64V5_13, "v5.13-rc1 returned literal 0 where v5.13 returns false "
                              "(boolreturn fix fcb8283920b1): same value, no behaviour change"),
    "v5.13": (Arm64V5_13, ""),
}}

"""x86, legacy (rmap-based "shadow") MMU: arch/x86/kvm/mmu/mmu.c, v5.12 and v5.13.

The legacy MMU keeps, per memslot and per level (4K, 2M, 1G), an array of rmap heads indexed
by gfn_to_index; every SPTE is chained on the head of its (slot, level, frame).  We keep one
leaf per (address space, frame, level): an rmap head holds at most that leaf.

v5.12: the arch hva hooks walk both address spaces themselves (kvm_handle_hva_range), then
visit every rmap head of every level from the first gfn to the INCLUSIVE last gfn, passing
an unaligned gfn (first gfn + k pages of the level) at the huge levels.
v5.13: the common walker hands [start, end) per slot; kvm_handle_gfn_range visits the same
rmap heads with end - 1.  The rmap handlers are the same in both versions.

The TDP MMU is off (tdp_mmu module parameter, default false in v5.12): see x86_tdp.py.
"""
from __future__ import annotations

from .kvm import Kvm
from .kvm_main_v5_12 import KvmMainV5_12
from .kvm_main_v5_13 import KvmGfnRange, KvmMainV5_13
from .machine import LEVEL_1G, LEVEL_4K, HostPte, Leaf, Memslot

KVM_HPAGE_GFN_SHIFT = {1: 0, 2: 9, 3: 18}       # arch/x86/include/asm/kvm_host.h


class X86ShadowMmu(Kvm):
    """What both versions share: rmaps, rmap handlers, fault rules, deferred flushes."""
    arch = "x86-shadow"
    address_space_num = 2            # KVM_ADDRESS_SPACE_NUM: as_id 1 is SMM
    user_mem_slots = 509             # KVM_USER_MEM_SLOTS (v5.12 arch/x86/include/asm/kvm_host.h)
    max_level = LEVEL_1G             # KVM_MAX_HUGEPAGE_LEVEL
    uses_retry_hva = True            # direct_page_fault / FNAME(page_fault)
    hyperv_range_flush = False       # kvm_available_flush_tlb_with_range(): Hyper-V only

    # ----- rmaps -----------------------------------------------------------------------
    def gfn_to_index(self, gfn: int, base_gfn: int, level: int) -> int:
        # v5.12 arch/x86/include/asm/kvm_host.h gfn_to_index
        s = KVM_HPAGE_GFN_SHIFT[level]
        return (gfn >> s) - (base_gfn >> s)

    def rmap_head(self, slot: Memslot, level: int, index: int) -> Leaf | None:
        """The SPTE chained on slot->arch.rmap[level - 1][index], if any."""
        s = KVM_HPAGE_GFN_SHIFT[level]
        frame_gfn = ((slot.base_gfn >> s) + index) << s
        if not slot.has_gfn(frame_gfn):
            return None       # a frame that starts before the slot can hold no SPTE of it
        return self.leaves.get((slot.as_id, frame_gfn, level))

    def rmap_ranges(self, slot: Memslot, start_gfn: int, last_gfn: int) -> list[tuple[int, int, int]]:
        """(level, first index, last index) of the rmap heads from start_gfn to last_gfn
        INCLUSIVE, levels 4K..1G (v5.12 arch/x86/kvm/mmu/mmu.c slot_rmap_walk_init)."""
        return [(level, self.gfn_to_index(start_gfn, slot.base_gfn, level),
                 self.gfn_to_index(last_gfn, slot.base_gfn, level))
                for level in range(LEVEL_4K, LEVEL_1G + 1)]

    def for_each_slot_rmap_range(self, slot: Memslot, start_gfn: int, last_gfn: int):
        """Yield (level, index, gfn) for every rmap head the kernel visits.

        v5.12 arch/x86/kvm/mmu/mmu.c for_each_slot_rmap_range / slot_rmap_walk_next: the gfn
        starts at start_gfn and steps by the pages of the level, so it is unaligned at huge
        levels."""
        for level, first, last in self.rmap_ranges(slot, start_gfn, last_gfn):
            for index in range(first, last + 1):
                yield level, index, start_gfn + ((index - first) << KVM_HPAGE_GFN_SHIFT[level])

    def walk_rmaps(self, hook: str, slot: Memslot, start_gfn: int, end_gfn: int, handler, pte,
                   can_yield: bool = False) -> bool:
        """Run `handler` on the rmap heads for [start_gfn, end_gfn) and OR the results.

        Same visits as for_each_slot_rmap_range, but heads without an SPTE are skipped:
        every rmap handler does nothing and returns false on an empty head.  With can_yield
        (from 548f87f667a3 only) `rmap_yield` runs after each head: it may flush what is
        pending and returns what stays pending."""
        ret = False
        shape = []
        # the slot's leaves, found in one pass over the leaves (then split by level below)
        as_id, base, gfn_end = slot.as_id, slot.base_gfn, slot.gfn_end
        mine = [x for x in self.leaves.values() if x.as_id == as_id and base <= x.gfn < gfn_end]
        for level, first, last in self.rmap_ranges(slot, start_gfn, end_gfn - 1):
            s = KVM_HPAGE_GFN_SHIFT[level]
            shape.append(f"L{level}[{first}..{last}]@{start_gfn:#x}")
            busy = sorted(self.gfn_to_index(x.gfn, base, level) for x in mine if x.level == level) if mine else ()
            for index in busy:
                if first <= index <= last:
                    gfn = start_gfn + ((index - first) << s)
                    ret |= bool(handler(self.rmap_head(slot, level, index), slot, gfn, level, pte))
                    if can_yield:
                        ret = self.rmap_yield(slot, start_gfn, gfn, ret)
        self.record_call(hook, slot, start_gfn, end_gfn, " ".join(shape))
        return ret

    # ----- flushes ---------------------------------------------------------------------
    def flush_with_address(self, gfn: int, pages: int, origin: str) -> None:
        # v5.12 arch/x86/kvm/mmu/mmu.c kvm_flush_remote_tlbs_with_address (kvm_flush_remote_tlbs_range
        # from v6.3): a ranged flush only with Hyper-V's hook, otherwise a full kvm_flush_remote_tlbs
        if self.hyperv_range_flush:
            self.flush_tlb_range(None, gfn, gfn + pages, origin)
        else:
            self.kvm_flush_remote_tlbs(origin)

    # ----- rmap handlers (same code in v5.12 and v5.13) --------------------------------
    def rmap_yield(self, slot: Memslot, start_gfn: int, gfn: int, flush: bool) -> bool:
        """What the walk does after a head when it may yield: nothing before 548f87f667a3."""
        return flush

    def kvm_unmap_rmapp(self, head: Leaf | None, slot, gfn, level, pte) -> bool:
        # v5.12 arch/x86/kvm/mmu/mmu.c kvm_unmap_rmapp -> kvm_zap_rmapp: drop every SPTE, no flush
        if head is None:
            return False
        self.zap_leaf(head)
        return True

    def kvm_set_pte_rmapp(self, head: Leaf | None, slot, gfn, level, pte: HostPte) -> bool:
        # v5.12 arch/x86/kvm/mmu/mmu.c kvm_set_pte_rmapp
        if pte.level != LEVEL_4K:
            self.warn("WARN_ON(pte_huge(*ptep)) in kvm_set_pte_rmapp")
        if head is None:
            return False
        if pte.writable:
            self.zap_leaf(head)          # writable host pte: drop, refault later
        else:
            # the SPTE keeps its level and gets the new pfn, read-only and access-tracked
            self.change_leaf(head, pte.pfn, writable=False, young=False)
        if self.hyperv_range_flush:
            self.flush_tlb_range(slot.as_id, gfn, gfn + 1, "kvm_flush_remote_tlbs_with_address")
            return False
        return True

    def kvm_age_rmapp(self, head: Leaf | None, slot, gfn, level, pte) -> bool:
        # v5.12 arch/x86/kvm/mmu/mmu.c kvm_age_rmapp -> mmu_spte_age: clear Accessed, no flush
        if head is None or not head.young:
            return False
        self.age_leaf(head)
        return True

    def kvm_test_age_rmapp(self, head: Leaf | None, slot, gfn, level, pte) -> bool:
        # v5.12 arch/x86/kvm/mmu/mmu.c kvm_test_age_rmapp: any accessed SPTE on the chain
        return head is not None and head.young

    # ----- shadow paging's deferred flush ------------------------------------------------
    def sync_page(self, as_id: int, gfn: int) -> None:
        # v5.12 arch/x86/kvm/mmu/paging_tmpl.h FNAME(sync_page): an SPTE of an unsync 4K
        # shadow page is dropped and the flush is deferred by kvm->tlbs_dirty++; the whole sync
        # runs under mmu_lock (its callers hold it), so the SPTE is looked up under the lock
        self.mmu_lock()
        leaf = self.leaves.get((as_id, gfn, LEVEL_4K))
        if leaf is None:
            self.obs.note = "no 4K SPTE to drop"
            self.mmu_unlock()
            return
        self.zap_leaf(leaf)
        self.sync_page_dropped_spte()
        self.mmu_unlock()

    def sync_page_dropped_spte(self) -> None:
        # v5.12 arch/x86/kvm/mmu/paging_tmpl.h FNAME(sync_page): the remote flush is deferred
        self.tlbs_dirty += 1

    def kvm_arch_flush_shadow_all(self) -> None:
        # v5.12 arch/x86/kvm/x86.c kvm_arch_flush_shadow_all -> kvm_mmu_zap_all (flushes)
        self.mmu_lock()
        self.zap_all_leaves()
        self.kvm_flush_remote_tlbs()
        self.mmu_unlock()


class X86ShadowV5_12(X86ShadowMmu, KvmMainV5_12):
    """x86 legacy MMU with the v5.12 hva hooks."""

    def kvm_handle_hva_range(self, start: int, end: int, pte, handler, hook: str) -> bool:
        # v5.12 arch/x86/kvm/mmu/mmu.c kvm_handle_hva_range: both address spaces, every slot
        page = 1 << self.page_shift
        ret = False
        for as_id in range(self.address_space_num):
            for slot in self.memslots.in_as_hitting(as_id, start, end):
                hva_start = max(start, slot.hva_start)
                hva_end = min(end, slot.hva_end)
                if hva_start >= hva_end:
                    continue
                gfn_start = slot.hva_to_gfn(hva_start)
                gfn_end = slot.hva_to_gfn(hva_end + page - 1)
                ret |= self.walk_rmaps(hook, slot, gfn_start, gfn_end, handler, pte)
        return ret

    def kvm_unmap_hva_range(self, start: int, end: int, flags: int) -> int:
        # v5.12 arch/x86/kvm/mmu/mmu.c kvm_unmap_hva_range: flags ignored
        return int(self.kvm_handle_hva_range(start, end, None, self.kvm_unmap_rmapp, "kvm_unmap_rmapp"))

    def kvm_set_spte_hva(self, hva: int, pte: HostPte) -> int:
        # v5.12 arch/x86/kvm/mmu/mmu.c kvm_set_spte_hva -> kvm_handle_hva: [hva, hva+1)
        return int(self.kvm_handle_hva_range(hva, hva + 1, pte, self.kvm_set_pte_rmapp, "kvm_set_pte_rmapp"))

    def kvm_age_hva(self, start: int, end: int) -> int:
        # v5.12 arch/x86/kvm/mmu/mmu.c kvm_age_hva
        return int(self.kvm_handle_hva_range(start, end, None, self.kvm_age_rmapp, "kvm_age_rmapp"))

    def kvm_test_age_hva(self, hva: int) -> int:
        # v5.12 arch/x86/kvm/mmu/mmu.c kvm_test_age_hva -> kvm_handle_hva: [hva, hva+1)
        return int(self.kvm_handle_hva_range(hva, hva + 1, None, self.kvm_test_age_rmapp, "kvm_test_age_rmapp"))


class X86ShadowV5_13(X86ShadowMmu, KvmMainV5_13):
    """x86 legacy MMU with the v5.13 gfn handlers (3039bcc74498)."""

    def kvm_handle_gfn_range(self, range: KvmGfnRange, handler, hook: str) -> bool:
        # v5.13 arch/x86/kvm/mmu/mmu.c kvm_handle_gfn_range: rmap walk to range->end - 1
        return self.walk_rmaps(hook, range.slot, range.start, range.end, handler, range.pte)

    def kvm_unmap_gfn_range(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/x86/kvm/mmu/mmu.c kvm_unmap_gfn_range
        return self.kvm_handle_gfn_range(range, self.kvm_unmap_rmapp, "kvm_unmap_rmapp")

    def kvm_set_spte_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/x86/kvm/mmu/mmu.c kvm_set_spte_gfn
        return self.kvm_handle_gfn_range(range, self.kvm_set_pte_rmapp, "kvm_set_pte_rmapp")

    def kvm_age_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/x86/kvm/mmu/mmu.c kvm_age_gfn
        return self.kvm_handle_gfn_range(range, self.kvm_age_rmapp, "kvm_age_rmapp")

    def kvm_test_age_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/x86/kvm/mmu/mmu.c kvm_test_age_gfn
        return self.kvm_handle_gfn_range(range, self.kvm_test_age_rmapp, "kvm_test_age_rmapp")


class X86ShadowSyncPageFlushes_6bc6db000295(X86ShadowMmu):
    """6bc6db000295 "KVM: X86: Remove tlbs_dirty" (v5.15): FNAME(sync_page) no longer defers
    its flush through kvm->tlbs_dirty; the dropped SPTE is flushed before mmu_lock is released."""

    def sync_page_dropped_spte(self) -> None:
        # v5.15 arch/x86/kvm/mmu/paging_tmpl.h FNAME(sync_page): the caller flushes what it dropped
        self.kvm_flush_remote_tlbs("kvm_sync_page")


class X86AgingConfig_v6_19(X86ShadowMmu):
    """x86's Kconfig selects KVM_ELIDE_TLB_FLUSH_IF_YOUNG (clear_flush_young does not flush: the
    Accessed bit is only a hint, and a stale TLB entry just delays the next access being seen)
    and KVM_MMU_LOCKLESS_AGING (the common walker takes no mmu_lock for aging).  kvm_age_gfn and
    kvm_test_age_gfn then take mmu_lock for write themselves around the shadow-MMU rmap pass,
    which runs whenever the TDP MMU is off, as in this legacy-MMU model.  Read in v6.19 (the
    ELIDE patch was posted in Sean Christopherson's 2024 aging series, the lockless one applied
    to kvm-x86 in February 2025; which releases merged each we did not establish), so applied
    from v6.19, the first listed version that has both."""
    kvm_elide_tlb_flush_if_young = True
    kvm_mmu_lockless_aging = True

    def kvm_age_gfn(self, range: KvmGfnRange) -> bool:
        # v6.19 arch/x86/kvm/mmu/mmu.c kvm_age_gfn: rmap pass under write_lock(mmu_lock)
        self.mmu_lock()
        try:
            return super().kvm_age_gfn(range)
        finally:
            self.mmu_unlock()

    def kvm_test_age_gfn(self, range: KvmGfnRange) -> bool:
        # v6.19 arch/x86/kvm/mmu/mmu.c kvm_test_age_gfn: rmap pass under write_lock(mmu_lock)
        self.mmu_lock()
        try:
            return super().kvm_test_age_gfn(range)
        finally:
            self.mmu_unlock()


class X86ShadowRmapZapYield_548f87f667a3(X86ShadowMmu):
    """548f87f667a3 (Sean Christopherson, "KVM: x86/mmu: Honor NEED_RESCHED when zapping rmaps
    and blocking is allowed", kvm-x86 mmu for v6.12): kvm_unmap_gfn_range zaps the rmaps through
    __kvm_rmap_zap_gfn_range, i.e. __walk_slot_rmaps with can_yield = range->may_block and
    flush_on_yield.  After any rmap head the walk may yield mmu_lock; before it does, a pending
    flush is done as kvm_flush_remote_tlbs_range(start_gfn, iterator.gfn - start_gfn + 1), and
    the flush no longer pending is not reported upward.  The model asks need_resched() after
    every head it zaps (Kvm.need_resched: true unless a schedule says no, so by default the
    most yields the walk can show, each with the smallest flush); heads without an SPTE are
    not visited, so no yield comes after one.  Without Hyper-V's ranged flush
    (hyperv_range_flush off, the default) the ranged flush is a full one; with it, the range
    ends at the iterator's gfn, which on a level after 4K is the start plus a multiple of the
    level's pages, so earlier levels' zaps above it stay unflushed (docs/leads/hyperv-yield-flush).
    Applied from v6.19, the first modelled release after v6.12."""

    def kvm_unmap_gfn_range(self, range: KvmGfnRange) -> bool:
        # v6.12 arch/x86/kvm/mmu/mmu.c kvm_unmap_gfn_range -> __kvm_rmap_zap_gfn_range
        return self.walk_rmaps(hook="kvm_unmap_rmapp", slot=range.slot, start_gfn=range.start,
                               end_gfn=range.end, handler=self.kvm_unmap_rmapp, pte=range.pte,
                               can_yield=range.may_block)

    def rmap_yield(self, slot, start_gfn: int, gfn: int, flush: bool) -> bool:
        # v6.12 arch/x86/kvm/mmu/mmu.c __walk_slot_rmaps: only when need_resched(), flush_on_yield
        # over [start_gfn, iterator.gfn], then cond_resched_rwlock_write
        if not self.need_resched():
            return flush
        if flush:
            self.flush_with_address(start_gfn, gfn - start_gfn + 1, "kvm_flush_remote_tlbs_range (yield)")
        self.resched_lock()
        return False


# commits after v5.13 that change what this arch's handlers do, from the release that has them
LATER_OVERRIDES = [("v5.15", X86ShadowSyncPageFlushes_6bc6db000295), ("v6.12", X86ShadowRmapZapYield_548f87f667a3),
                   ("v6.19", X86AgingConfig_v6_19)]

MODELS = {"x86-shadow": {
    "v5.12": (X86ShadowV5_12, ""),
    "v5.13-rc1": (X86ShadowV5_13, "no x86 legacy-MMU or kvm_main.c notifier change between v5.13-rc1 and v5.13"),
    "v5.13": (X86ShadowV5_13, ""),
}}

"""The generic MMU-notifier layer of Linux v6.8 (virt/kvm/kvm_main.c) as far as these traces
reach: v5.17's (kvm_main_v5_17.py) with the invalidation range kept in gfns, plus the one
change of v6.4 to change_pte.

* 8569992d64b8 "KVM: Use gfn instead of hva for mmu_notifier_retry" (v6.8-rc1, the guest_memfd
  pull; the counters were already renamed mmu_invalidate_* by 20ec3ebd707c in v6.0, we keep
  the model's attribute names): range_start's on_lock is kvm_mmu_invalidate_begin, which
  raises the count and, on 0 -> 1 only, sets both range bounds to INVALID_GPA.  Its handler is
  kvm_mmu_unmap_gfn_range, which first adds the slot's gfn range to the recorded one
  (kvm_mmu_invalidate_range_add: the first add since the reset sets it, later adds take the
  union, whatever the address space) and then calls the arch's kvm_unmap_gfn_range.  range_end's
  on_lock is kvm_mmu_invalidate_end: seq++, count--, then KVM_BUG_ON if the count went negative
  (c0db19232c1e, replacing v5.15's BUG_ON after the walk) and a WARN if no range was added.
  The range is never cleared at count 0: it stays until the next 0 -> 1 begin.
  x86 checks a fault with mmu_invalidate_retry_gfn on the faulting gfn (retry while the count
  is raised and the gfn is in the recorded range, WARN and retry if the range is still
  INVALID_GPA; else compare seq); other arches keep the count/seq check.
* cec29eef0a81 / 193bbfaacc84: the walker returns whether it found a memslot
  (kvm_mn_ret_t.found_memslot) and range_start calls kvm_arch_guest_memory_reclaimed after
  dropping mmu_lock iff it did (x86 SEV's cache flush; nothing elsewhere).  We record the call
  in the event's note: it touches no state these traces observe.
* 2230f9e1171a "KVM: Avoid illegal stage2 mapping on invalid memory slot" (v6.4, merged in
  Paolo's last 6.4 fixes pull; generic, not arm64-only, though arm64 is where it was seen):
  change_pte's handler is kvm_change_spte_gfn, which WARNs if no invalidation is active and
  skips a slot flagged KVM_MEMSLOT_INVALID (DELETE/MOVE in progress) instead of mapping the new
  pfn into it.  v6.8 is the first version we list that is >= v6.4, so it starts here.

Not modelled (no observable effect on these traces): the destroy-time WARN (d497a0fab8b8),
the renamed struct kvm_mmu_notifier_range with u64 bounds (e97b39c5c436),
kvm_arch_nr_memslot_as_ids (eed52e434bc3: the model's address_space_num), guest_memfd and
memory-attribute invalidations (they call begin/range_add/end with gfns of their own), and x86's
kvm_zap_gfn_range using begin/range_add/end.
"""
from __future__ import annotations

from .kvm_main_v5_13 import KvmGfnRange, KvmHvaRange
from .kvm_main_v5_17 import KvmMainV5_17
from .machine import KVM_MEMSLOT_INVALID, HostPte

INVALID_GPA = (1 << 64) - 1          # include/linux/kvm_types.h: ~(gpa_t)0


class KvmMainV6_8(KvmMainV5_17):
    # the commits this layer brings, for fuzz/history.py's history (short id, subject)
    commits = (
        ('2230f9e1171a', 'KVM: Avoid illegal stage2 mapping on invalid memory slot'),
        ('8569992d64b8', 'KVM: Use gfn instead of hva for mmu_notifier_retry'),
    )

    version = "v6.8"

    # --- the invalidation range, in gfns (8569992d64b8) ---
    def kvm_mmu_invalidate_begin(self, start: int = 0, end: int = 0) -> None:
        # v6.8 virt/kvm/kvm_main.c kvm_mmu_invalidate_begin: the hva bounds are no longer passed
        self.mmu_notifier_count += 1
        if self.mmu_notifier_count == 1:
            self.mmu_notifier_range_start = self.mmu_notifier_range_end = INVALID_GPA

    def kvm_mmu_invalidate_range_add(self, start: int, end: int) -> None:
        # v6.8 virt/kvm/kvm_main.c kvm_mmu_invalidate_range_add: union of every hit slot's gfns
        if not self.mmu_notifier_count:
            self.warn("WARN_ON_ONCE(!kvm->mmu_invalidate_in_progress) in kvm_mmu_invalidate_range_add")
        if self.mmu_notifier_range_start == INVALID_GPA:
            self.mmu_notifier_range_start, self.mmu_notifier_range_end = start, end
        else:
            self.mmu_notifier_range_start = min(self.mmu_notifier_range_start, start)
            self.mmu_notifier_range_end = max(self.mmu_notifier_range_end, end)

    def kvm_mmu_unmap_gfn_range(self, range: KvmGfnRange) -> bool:
        # v6.8 virt/kvm/kvm_main.c kvm_mmu_unmap_gfn_range: record the gfns, then zap them
        self.kvm_mmu_invalidate_range_add(range.start, range.end)
        return self.kvm_unmap_gfn_range(range)

    def kvm_mmu_invalidate_end(self, start: int = 0, end: int = 0) -> None:
        # v6.8 virt/kvm/kvm_main.c kvm_mmu_invalidate_end (c0db19232c1e: KVM_BUG_ON here)
        self.mmu_notifier_seq += 1
        self.mmu_notifier_count -= 1
        if self.mmu_notifier_count < 0:
            self.warn("KVM_BUG_ON(kvm->mmu_invalidate_in_progress < 0)")
        if self.mmu_notifier_range_start == INVALID_GPA:
            self.warn("WARN_ON_ONCE(kvm->mmu_invalidate_range_start == INVALID_GPA)")

    def fault_is_stale(self, f) -> bool:
        # v6.8 arch/x86/kvm/mmu/mmu.c is_page_fault_stale: retry by gfn; others by count/seq
        if self.uses_retry_hva:
            return self.mmu_invalidate_retry_gfn(f.mmu_seq, f.gfn)
        return self.mmu_notifier_retry(f.mmu_seq)

    def mmu_invalidate_retry_gfn(self, mmu_seq: int, gfn: int) -> bool:
        # v6.8 include/linux/kvm_host.h mmu_invalidate_retry_gfn: half-open gfn range, no as_id
        if self.mmu_notifier_count:
            if INVALID_GPA in (self.mmu_notifier_range_start, self.mmu_notifier_range_end):
                self.warn("WARN_ON_ONCE: mmu_invalidate_retry_gfn with no range recorded")
                return True
            if self.mmu_notifier_range_start <= gfn < self.mmu_notifier_range_end:
                return True
        return self.mmu_notifier_seq != mmu_seq

    # --- notifier entry points ---
    def kvm_mmu_notifier_invalidate_range_start(self, start: int, end: int, blockable: bool) -> int:
        # v6.8 virt/kvm/kvm_main.c kvm_mmu_notifier_invalidate_range_start: gfn bookkeeping,
        # then kvm_arch_guest_memory_reclaimed iff a memslot was found (cec29eef0a81)
        self.spin_lock(self.mn_invalidate_lock)
        self.mn_active_invalidate_count += 1
        self.spin_unlock(self.mn_invalidate_lock)
        _, found = self.handle_hva_range_found(KvmHvaRange(
            start, end, None, "kvm_mmu_unmap_gfn_range", self.kvm_mmu_invalidate_begin, True, blockable))
        if found:
            self.kvm_arch_guest_memory_reclaimed()
        return 0

    def kvm_arch_guest_memory_reclaimed(self) -> None:
        # v6.8 virt/kvm/kvm_main.c kvm_arch_guest_memory_reclaimed: weak no-op (x86: SEV wbinvd)
        self.obs.note = (self.obs.note + "; " if self.obs.note else "") + "kvm_arch_guest_memory_reclaimed"

    def kvm_mmu_notifier_invalidate_range_end(self, start: int, end: int, blockable: bool) -> None:
        # v6.8 virt/kvm/kvm_main.c kvm_mmu_notifier_invalidate_range_end: the negative check
        # moved into kvm_mmu_invalidate_end
        self.handle_hva_range(KvmHvaRange(start, end, None, None, self.kvm_mmu_invalidate_end,
                                          False, blockable))
        self.spin_lock(self.mn_invalidate_lock)
        self.mn_active_invalidate_count -= 1
        self.spin_unlock(self.mn_invalidate_lock)

    # --- change_pte (2230f9e1171a, v6.4) ---
    def kvm_change_spte_gfn(self, range: KvmGfnRange) -> bool:
        # v6.4 virt/kvm/kvm_main.c kvm_change_spte_gfn: an INVALID slot is skipped
        if not self.mn_active_invalidate_count:
            self.warn("WARN_ON_ONCE(!kvm->mn_active_invalidate_count) in kvm_change_spte_gfn")
        if range.slot.flags & KVM_MEMSLOT_INVALID:
            return False
        return self.kvm_set_spte_gfn(range)

    def kvm_mmu_notifier_change_pte(self, address: int, pte: HostPte) -> None:
        # v6.8 virt/kvm/kvm_main.c kvm_mmu_notifier_change_pte: v5.15's, kvm_change_spte_gfn
        if not self.mn_active_invalidate_count:
            self.warn("WARN_ON_ONCE(!kvm->mn_active_invalidate_count) in change_pte")
        if not self.mmu_notifier_count:
            return
        self.kvm_handle_hva_range(address, address + 1, pte, "kvm_change_spte_gfn")

"""The generic MMU-notifier layer of current mainline, as far as these traces reach: v6.10's
(kvm_main_v6_10.py) with what changed since, read in linux-next virt/kvm/kvm_main.c whose
Makefile says 6.19-rc5 (so the version is named v6.19; `mainline` is an alias of it).

* dca6c8853232 "KVM: Add member to struct kvm_gfn_range to indicate private/shared" (v6.14):
  the hva walker tags every gfn range KVM_FILTER_SHARED (hva-based notifications never concern
  private guest_memfd memory).  No handler we model reads it; it is recorded on the range.
* the walker (renamed kvm_handle_hva_range, with kvm_age_hva_range for aging) gained a
  `lockless` flag, set for aging when the arch selects CONFIG_KVM_MMU_LOCKLESS_AGING: such a
  walk takes no mmu_lock and runs no on_lock (a WARN if it has one), still reports
  found_memslot, and any flush runs unlocked.  clear_flush_young flushes only without
  CONFIG_KVM_ELIDE_TLB_FLUSH_IF_YOUNG.  Both options are arch choices (x86 selects both); the
  generic layer defaults them off, as for arm64, MIPS and PowerPC.
* range_end's guarded decrement of mn_active_invalidate_count is inherited from v6.10's layer.
* range_start calls kvm_arch_guest_memory_reclaimed iff the walk found a memslot, as since v6.8.

Not modelled: pfn-cache invalidation (no pfn caches in these traces), guest_memfd.
"""
from __future__ import annotations

from .kvm_main_v5_13 import KvmGfnRange, KvmHvaRange
from .kvm_main_v6_10 import KvmMainV6_10
from .machine import Memslot


class KvmMainV6_19(KvmMainV6_10):
    version = "v6.19"
    kvm_mmu_lockless_aging = False        # CONFIG_KVM_MMU_LOCKLESS_AGING (arch Kconfig)
    kvm_elide_tlb_flush_if_young = False  # CONFIG_KVM_ELIDE_TLB_FLUSH_IF_YOUNG (arch Kconfig)

    def hva_range_entry_ok(self, r: KvmHvaRange) -> bool:
        # v6.19 virt/kvm/kvm_main.c kvm_handle_hva_range: a lockless walk may not have on_lock
        if not super().hva_range_entry_ok(r):
            return False
        if r.lockless and r.on_lock is not None:
            self.warn("WARN_ON_ONCE(range->lockless && on_lock) in kvm_handle_hva_range")
            return False
        return True

    def gfn_range_of(self, slot: Memslot, r: KvmHvaRange) -> KvmGfnRange | None:
        # v6.19 virt/kvm/kvm_main.c kvm_handle_hva_range: hva ranges are KVM_FILTER_SHARED
        g = super().gfn_range_of(slot, r)
        if g is not None:
            g.attr_filter = "KVM_FILTER_SHARED"
        return g

    def kvm_age_hva_range(self, start: int, end: int, handler: str, flush_on_ret: bool) -> int:
        # v6.19 virt/kvm/kvm_main.c kvm_age_hva_range: lockless when the arch selects it
        return self.handle_hva_range(KvmHvaRange(start, end, None, handler, None, flush_on_ret,
                                                 False, self.kvm_mmu_lockless_aging))

    def kvm_mmu_notifier_clear_flush_young(self, start: int, end: int) -> int:
        # v6.19 virt/kvm/kvm_main.c kvm_mmu_notifier_clear_flush_young: flush unless elided
        return self.kvm_age_hva_range(start, end, "kvm_age_gfn", not self.kvm_elide_tlb_flush_if_young)

    def kvm_mmu_notifier_clear_young(self, start: int, end: int) -> int:
        # v6.19 virt/kvm/kvm_main.c kvm_mmu_notifier_clear_young: never flushes
        return self.kvm_age_hva_range(start, end, "kvm_age_gfn", False)

    def kvm_mmu_notifier_test_young(self, address: int) -> int:
        # v6.19 virt/kvm/kvm_main.c kvm_mmu_notifier_test_young: [address, address + 1)
        return self.kvm_age_hva_range(address, address + 1, "kvm_test_age_gfn", False)

"""The generic MMU-notifier layer of Linux v5.12 (virt/kvm/kvm_main.c), before the series.

Every entry point takes mmu_lock and calls an hva-based arch hook with the raw hva range:
    kvm_unmap_hva_range(start, end, flags)  kvm_set_spte_hva(hva, pte)
    kvm_age_hva(start, end)                 kvm_test_age_hva(hva)
The arch walks its own memslots (see the arch files).
"""
from __future__ import annotations

from .kvm import MMU_NOTIFIER_RANGE_BLOCKABLE, Kvm
from .machine import HostPte


class KvmMainV5_12(Kvm):
    version = "v5.12"

    # --- arch hooks, one per architecture file ---
    def kvm_unmap_hva_range(self, start: int, end: int, flags: int) -> int:
        raise NotImplementedError

    def kvm_set_spte_hva(self, hva: int, pte: HostPte) -> int:
        raise NotImplementedError

    def kvm_age_hva(self, start: int, end: int) -> int:
        raise NotImplementedError

    def kvm_test_age_hva(self, hva: int) -> int:
        raise NotImplementedError

    # --- notifier entry points ---
    def kvm_mmu_notifier_invalidate_range_start(self, start: int, end: int, blockable: bool) -> int:
        # v5.12 virt/kvm/kvm_main.c kvm_mmu_notifier_invalidate_range_start
        self.mmu_lock()
        self.mmu_notifier_count += 1
        if self.mmu_notifier_count == 1:
            self.mmu_notifier_range_start, self.mmu_notifier_range_end = start, end
        else:
            self.mmu_notifier_range_start = min(self.mmu_notifier_range_start, start)
            self.mmu_notifier_range_end = max(self.mmu_notifier_range_end, end)
        flags = MMU_NOTIFIER_RANGE_BLOCKABLE if blockable else 0
        need_tlb_flush = self.kvm_unmap_hva_range(start, end, flags)
        if need_tlb_flush or self.tlbs_dirty:
            self.kvm_flush_remote_tlbs()
        self.mmu_unlock()
        return 0

    def kvm_mmu_notifier_invalidate_range_end(self, start: int, end: int, blockable: bool) -> None:
        # v5.12 virt/kvm/kvm_main.c kvm_mmu_notifier_invalidate_range_end: no arch call, no flush
        self.mmu_lock()
        self.mmu_notifier_seq += 1
        self.mmu_notifier_count -= 1
        self.mmu_unlock()
        if self.mmu_notifier_count < 0:
            self.warn("BUG_ON(kvm->mmu_notifier_count < 0)")

    def kvm_mmu_notifier_change_pte(self, address: int, pte: HostPte) -> None:
        # v5.12 virt/kvm/kvm_main.c kvm_mmu_notifier_change_pte: seq bumped before the arch hook
        self.mmu_lock()
        self.mmu_notifier_seq += 1
        if self.kvm_set_spte_hva(address, pte):
            self.kvm_flush_remote_tlbs()
        self.mmu_unlock()

    def kvm_mmu_notifier_clear_flush_young(self, start: int, end: int) -> int:
        # v5.12 virt/kvm/kvm_main.c kvm_mmu_notifier_clear_flush_young: flush iff young
        self.mmu_lock()
        young = self.kvm_age_hva(start, end)
        if young:
            self.kvm_flush_remote_tlbs()
        self.mmu_unlock()
        return young

    def kvm_mmu_notifier_clear_young(self, start: int, end: int) -> int:
        # v5.12 virt/kvm/kvm_main.c kvm_mmu_notifier_clear_young: deliberately never flushes
        self.mmu_lock()
        young = self.kvm_age_hva(start, end)
        self.mmu_unlock()
        return young

    def kvm_mmu_notifier_test_young(self, address: int) -> int:
        # v5.12 virt/kvm/kvm_main.c kvm_mmu_notifier_test_young
        self.mmu_lock()
        young = self.kvm_test_age_hva(address)
        self.mmu_unlock()
        return young

    def kvm_mmu_notifier_release(self) -> None:
        # v5.12 virt/kvm/kvm_main.c kvm_mmu_notifier_release: srcu only, no mmu_lock
        self.kvm_arch_flush_shadow_all()

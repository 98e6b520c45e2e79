"""The generic MMU-notifier layer of Linux v6.10 as far as these traces reach: v5.15's
(kvm_main_v5_15.py) with two named changes.

* c3f3edf73a8f "KVM: Stop processing *all* memslots when "null" mmu_notifier handler is
  found": after on_lock with a null handler the walker leaves both loops (goto mmu_unlock), so
  the null stub is never called.
* f3b65bbaed7c "KVM: Remove change_pte() mmu_notifier callback" (with 997308f9ae72 on the mm
  side): KVM no longer hooks change_pte, so the event changes the host pte and nothing else.

Not modelled here (they arrive as their own named versions): the v5.17 interval-tree walk,
v6.8's gfn-based invalidation range and retry, pfn caches and guest_memfd.  None changes the
lock elision these traces test; the gfn-based retry changes which faults retry on x86.
"""
from __future__ import annotations

from .kvm_main_v5_13 import KvmHvaRange
from .kvm_main_v5_15 import KvmMainV5_15
from .machine import HostPte


class KvmMainV6_10(KvmMainV5_15):
    version = "v6.10"

    def null_handler_hit(self, r: KvmHvaRange) -> bool:
        # v6.10 virt/kvm/kvm_main.c __kvm_handle_hva_range (c3f3edf73a8f): goto mmu_unlock
        return True

    def kvm_mmu_notifier_change_pte(self, address: int, pte: HostPte) -> None:
        # v6.10 virt/kvm/kvm_main.c (f3b65bbaed7c): no change_pte callback any more
        return

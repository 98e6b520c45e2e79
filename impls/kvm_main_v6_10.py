"""The generic MMU-notifier layer of Linux v6.10 as far as these traces reach: v6.8's
(kvm_main_v6_8.py, which carries v5.15's lock elision, v5.17's hva tree and v6.8's gfn-based
invalidation range) with two named changes, both merged for v6.10.

* c3f3edf73a8f "KVM: Stop processing *all* memslots when "null" mmu_notifier handler is
  found" (kvm-x86 fixes for 6.10): after on_lock with a null handler the walker leaves both
  loops (goto mmu_unlock, which also skips the flush test), so the null stub is never called.
* f3b65bbaed7c "KVM: delete .change_pte MMU notifier callback" with 5257de954cab (drop the
  now unused pte argument) and 997308f9ae72 "mmu_notifier: remove the .change_pte() callback"
  on the mm side, all three in kvm.git's `next` pushed on 2024-05-12 for the 6.10 merge
  window (the notes' 6.10 is right; they are not in v6.9): KVM no longer hooks change_pte, so
  the event changes the host pte and nothing else.

And one that reached mainline between v6.8 and v6.10 (posted 2024-01-10 by Sean
Christopherson as "KVM: Harden against unpaired kvm_mmu_notifier_invalidate_range_end()
calls", after the 6.8 KVM pull; we did not establish whether it went in for 6.9 or 6.10, so it
starts at v6.10, the first listed version that surely has it): range_end no longer decrements
mn_active_invalidate_count below zero; it WARNs instead.
"""
from __future__ import annotations

from .kvm_main_v5_13 import KvmHvaRange
from .kvm_main_v6_8 import KvmMainV6_8
from .machine import HostPte


class KvmMainV6_10(KvmMainV6_8):
    # the commits this layer brings, for fuzz/history.py's history (short id, subject)
    commits = (
        ('c3f3edf73a8f', 'KVM: Stop processing *all* memslots when "null" mmu_notifier handler is found'),
        ('f3b65bbaed7c', 'KVM: delete .change_pte MMU notifier callback'),
    )

    version = "v6.10"

    def null_handler_hit(self, r: KvmHvaRange) -> bool:
        # v6.10 virt/kvm/kvm_main.c __kvm_handle_hva_range (c3f3edf73a8f): goto mmu_unlock
        return True

    def kvm_mmu_notifier_change_pte(self, address: int, pte: HostPte) -> None:
        # v6.10 virt/kvm/kvm_main.c (f3b65bbaed7c): no change_pte callback any more
        return

    def kvm_mmu_notifier_invalidate_range_end(self, start: int, end: int, blockable: bool) -> None:
        # v6.10 virt/kvm/kvm_main.c kvm_mmu_notifier_invalidate_range_end: guarded decrement
        self.handle_hva_range(KvmHvaRange(start, end, None, None, self.kvm_mmu_invalidate_end,
                                          False, blockable))
        self.spin_lock(self.mn_invalidate_lock)
        if not self.mn_active_invalidate_count:
            self.warn("WARN_ON_ONCE(!kvm->mn_active_invalidate_count) in range_end")
        else:
            self.mn_active_invalidate_count -= 1
        self.spin_unlock(self.mn_invalidate_lock)

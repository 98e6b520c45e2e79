"""The generic MMU-notifier layer of Linux v5.17 (virt/kvm/kvm_main.c) as far as these traces
reach: v5.15's (kvm_main_v5_15.py) with the memslots of each address space in an hva interval
tree.

* ed922739c919 "KVM: Use interval tree to do fast hva lookup in memslots" (5.17 merge window):
  the walker asks the address space's hva tree for the slots meeting the inclusive range
  [start, end - 1] instead of scanning the whole array.  Slots come in tree order (by hva
  start; among equal starts the one inserted first), no longer by descending base_gfn, and the
  per-slot "nothing in common" test is gone because the tree returns only slots that overlap.
  The same commit added a WARN_ON_ONCE at the walker's entry for an empty (or wrapped) range,
  which returns 0 before kvm->srcu, mmu_lock or on_lock.  The mm never sends an empty range,
  but range_start still raised mn_active_invalidate_count before the walker, as in v5.15.
* a54d806688fe "KVM: Keep memslots in tree-based structures instead of array-based ones" (same
  pull) keeps two memslot sets per address space and edits the inactive one; DELETE/MOVE
  still publish a copy of the slot flagged KVM_MEMSLOT_INVALID, wait for
  mn_active_invalidate_count to reach zero, flush the old slot's mappings (bcb63dcde829: on
  the old slot, same gfns as the INVALID copy), then publish the final set.

What we keep of the two-set protocol, and why: the walker, faults and the oracles see only
the active set, and every step a trace can observe (the INVALID copy published, the wait for
active invalidations, the arch flush, the final publish, each a point where other tasks run)
is already the v5.15 sequence of impls/kvm.py kvm_set_memslot with v5.15's waiting
install_new_memslots.  The one new observable is the tree's order, which depends on when each
slot was inserted: impls/machine.py Memslots.in_hva_range keeps that insertion order (the
INVALID copy and a flags-only or moved slot are re-inserted, as kvm_replace_memslot does).
The inactive set, the error path of kvm_prepare_memory_region and pfn-cache invalidation
(gfn_to_pfn_cache, reinstated in the same 5.17 pull, called from range_start before the
walker) change nothing these traces observe and are not modelled.
"""
from __future__ import annotations

from .kvm_main_v5_13 import KvmHvaRange
from .kvm_main_v5_15 import KvmMainV5_15


class KvmMainV5_17(KvmMainV5_15):
    # the commits this layer brings, for fuzz/history.py's history (short id, subject)
    commits = (
        ('ed922739c919', 'KVM: Use interval tree to do fast hva lookup in memslots'),
    )

    version = "v5.17"

    def hva_range_entry_ok(self, r: KvmHvaRange) -> bool:
        # v5.17 virt/kvm/kvm_main.c __kvm_handle_hva_range (ed922739c919): empty range WARNs first
        if r.end <= r.start:
            self.warn("WARN_ON_ONCE(range->end <= range->start) in __kvm_handle_hva_range")
            return False
        return super().hva_range_entry_ok(r)

    def hva_range_slots(self, as_id: int, r: KvmHvaRange) -> list:
        # v5.17 virt/kvm/kvm_main.c kvm_for_each_memslot_in_hva_range: inclusive [start, end - 1]
        return self.memslots.in_hva_range(as_id, r.start, r.end - 1)

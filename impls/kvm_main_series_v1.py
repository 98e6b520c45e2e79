"""The generic MMU-notifier layer of "KVM: Consolidate and optimize MMU notifiers" as first
posted (v1, 18 patches, 2021-03-26), with patch 16/18 "KVM: Don't take mmu_lock for range
invalidation unless necessary" applied: v5.13's walker plus an rwsem that keeps the memslots
stable from invalidate_range_start to invalidate_range_end.  It sat in kvm/queue, lockdep
reported a circular dependency with the mm's invalidate_range_start pseudo-lock, and it was
held out of v5.13 (v5.15 replaced it: kvm_main_v5_15.py).

What the patch changes against v5.13 (kvm_main_v5_13.py), each an override below:
* struct kvm gains `mmu_notifier_slots_lock`, an rw_semaphore.
* range_start of a blockable invalidation takes it for read and keeps it until the matching
  range_end releases it; a non-blockable one (the OOM reaper) skips it and must take mmu_lock
  up front (`must_lock`).
* the walker takes mmu_lock and runs on_lock lazily, under the first memslot hit (or up front
  when must_lock); with a null handler it then leaves both loops (goto out_unlock).  So a
  start/end pair that hits no memslot touches neither mmu_lock nor the notifier count.
* install_new_memslots takes the rwsem for write around publishing the new array.
* range_end keeps flush_on_ret as posted: a hit leaves through goto out_unlock before the flush
  test, a miss still flushes on x86's tlbs_dirty, without mmu_lock.
* change_pte is a bare walk: the v5.13 WARN on a zero count (c13fda237f08) is not in v1, nor the
  early return that v2 09/10 added.

Sources (docs/kernel-notes/concurrency.md A): the v1 16/18 and v2 09/10 mails.

The arch gfn handlers are v5.13's: the posting's arch patches are the ones merged (their later
review fixes, Book3S HV's among them, are in the v5.13 classes, since the generic question this
version answers is the locking, and the fixes change no lock).
"""
from __future__ import annotations

from .kvm_main_v5_13 import KvmHvaRange, KvmMainV5_13
from .machine import HostPte
from .tasks import RwSem


class KvmMainSeriesV1(KvmMainV5_13):
    version = "series-v1"
    needs_tasks = True

    def __init__(self) -> None:
        super().__init__()
        # series v1 16/18 include/linux/kvm_host.h: struct kvm gains the rwsem
        self.mmu_notifier_slots_lock = RwSem("mmu_notifier_slots_lock")

    def handle_hva_range(self, r: KvmHvaRange, must_lock: bool = False) -> int:
        # series v1 16/18 virt/kvm/kvm_main.c __kvm_handle_hva_range: lock lazily (up front when
        # must_lock); a null handler leaves both loops right after on_lock
        if r.on_lock is None and r.handler is None:
            self.warn("WARN_ON_ONCE: hva range with neither on_lock nor handler")
            return 0
        ret = False
        locked = False
        idx = self.srcu_read_lock()
        done = False
        if must_lock:
            locked = True
            self.mmu_lock()
            if r.on_lock is not None:
                r.on_lock(r.start, r.end)
            done = r.handler is None
        if not done:
            handler = getattr(self, r.handler) if r.handler else None
            for as_id in range(self.address_space_num):
                for slot in self.memslots.in_as_hitting(as_id, r.start, r.end):
                    g = self.gfn_range_of(slot, r)
                    if g is None:
                        continue
                    if not locked:
                        locked = True
                        self.mmu_lock()
                        if r.on_lock is not None:
                            r.on_lock(r.start, r.end)
                        if handler is None:
                            done = True
                            break          # goto out_unlock: leaves both loops
                    ret |= bool(handler(g))
                if done:
                    break
            if not done and r.flush_on_ret and (ret or self.tlbs_dirty):
                self.kvm_flush_remote_tlbs()      # range_end on a miss: tlbs_dirty, unlocked
        if locked:
            self.mmu_unlock()
        self.srcu_read_unlock(idx)
        return int(ret)

    def kvm_mmu_notifier_invalidate_range_start(self, start: int, end: int, blockable: bool) -> int:
        # series v1 16/18 virt/kvm/kvm_main.c kvm_mmu_notifier_invalidate_range_start: a blockable
        # invalidation holds the rwsem for read until its range_end
        if blockable:
            self.down_read(self.mmu_notifier_slots_lock)
        self.handle_hva_range(KvmHvaRange(start, end, None, "kvm_unmap_gfn_range",
                                          self.kvm_inc_notifier_count, True, blockable),
                              must_lock=not blockable)
        return 0

    def kvm_mmu_notifier_invalidate_range_end(self, start: int, end: int, blockable: bool) -> None:
        # series v1 16/18 virt/kvm/kvm_main.c kvm_mmu_notifier_invalidate_range_end: the count
        # drops under the first hit (or up front when !blockable), then the read hold ends
        self.handle_hva_range(KvmHvaRange(start, end, None, None, self.kvm_dec_notifier_count,
                                          True, blockable), must_lock=not blockable)
        if blockable:
            self.up_read(self.mmu_notifier_slots_lock)
        if self.mmu_notifier_count < 0:
            self.warn("BUG_ON(kvm->mmu_notifier_count < 0)")

    def kvm_mmu_notifier_change_pte(self, address: int, pte: HostPte) -> None:
        # series v1 16/18 virt/kvm/kvm_main.c kvm_mmu_notifier_change_pte: a bare walk (no WARN,
        # no early return, no seq bump since v1 10/18)
        self.kvm_handle_hva_range(address, address + 1, pte, "kvm_set_spte_gfn")

    def install_new_memslots(self, publish) -> None:
        # series v1 16/18 virt/kvm/kvm_main.c install_new_memslots: the rwsem for write around
        # the pointer swap, then the srcu grace period as before
        self.down_write(self.mmu_notifier_slots_lock)
        publish()
        self.up_write(self.mmu_notifier_slots_lock)
        self.synchronize_srcu_expedited()

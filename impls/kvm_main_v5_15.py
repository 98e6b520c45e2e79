"""The generic MMU-notifier layer of Linux v5.15 (virt/kvm/kvm_main.c): invalidate_range_start
and _end take mmu_lock only when a memslot is hit, made safe by blocking memslot updates while
any invalidation is in progress (52ac8b358b0c "KVM: Block memslot updates across range_start()
and range_end()" + 071064f14d87 "KVM: Don't take mmu_lock for range invalidation unless
necessary"), and kvm->tlbs_dirty removed (6bc6db000295).

Against v5.13 (kvm_main_v5_13.py):
* struct kvm gains mn_invalidate_lock (a spinlock), mn_active_invalidate_count and an rcuwait.
  range_start raises the count before its walk; range_end lowers it after its walk and wakes
  the installer when it reaches zero; install_new_memslots sleeps (slots_lock held) until no
  invalidation is active, then publishes under mn_invalidate_lock.  The notifier side never
  waits on the installer (unfair to memslot updates by design).
* the walker takes mmu_lock and runs on_lock under the first memslot hit only.  With a null
  handler (range_end) it then `break`s, which leaves only the memslot loop of that address
  space: on x86 the next address space is walked and, if it hits too, the null stub is called
  as a gfn handler (fixed in v6.10 by c3f3edf73a8f, kvm_main_v6_10.py).  We record that call
  as the UBSAN splat it produced.
* the flush test is `ret` alone (tlbs_dirty is gone; x86's sync_page flushes for itself, see
  x86_shadow.py).
* change_pte WARNs when no invalidation is active and returns early when the notifier count
  is zero.

The arch gfn handlers stay v5.13's: nothing between v5.13 and v5.15 in them changes what these
traces observe (x86 TDP's `flush =` fix and yield-safe root iterator are v5.16).
"""
from __future__ import annotations

from .kvm_main_v5_13 import KvmHvaRange, KvmMainV5_13
from .machine import HostPte
from .observation import HandlerCall
from .tasks import Mutex


class KvmMainV5_15(KvmMainV5_13):
    # the commits this layer brings, for fuzz/bisect.py's history (short id, subject)
    commits = (
        ('52ac8b358b0c', 'KVM: Block memslot updates across range_start() and range_end()'),
        ('071064f14d87', "KVM: Don't take mmu_lock for range invalidation unless necessary"),
    )

    version = "v5.15"
    needs_tasks = True

    def __init__(self) -> None:
        super().__init__()
        # v5.15 include/linux/kvm_host.h struct kvm (52ac8b358b0c)
        self.mn_invalidate_lock = Mutex("mn_invalidate_lock")
        self.mn_active_invalidate_count = 0

    def null_handler_hit(self, r: KvmHvaRange) -> bool:
        """After on_lock with a null handler: True leaves both loops (v6.10), False only the
        memslot loop of this address space (v5.15's `break`)."""
        return False

    def hva_range_entry_ok(self, r: KvmHvaRange) -> bool:
        """The walker's checks before kvm->srcu: False returns 0 at once."""
        # v5.15 virt/kvm/kvm_main.c __kvm_handle_hva_range: null on_lock with null handler
        if r.on_lock is None and r.handler is None:
            self.warn("WARN_ON_ONCE: hva range with neither on_lock nor handler")
            return False
        return True

    def hva_range_slots(self, as_id: int, r: KvmHvaRange) -> list:
        """The slots of one address space the walker visits, in its order (the clamp below
        skips those the range misses)."""
        # v5.15 virt/kvm/kvm_main.c __kvm_handle_hva_range: kvm_for_each_memslot, array order
        return self.memslots.in_as_hitting(as_id, r.start, r.end)

    def handle_hva_range(self, r: KvmHvaRange) -> int:
        return self.handle_hva_range_found(r)[0]

    def handle_hva_range_found(self, r: KvmHvaRange) -> tuple[int, bool]:
        """(return value, whether a memslot was hit): v6.8 names the pair kvm_mn_ret_t."""
        # v5.15 virt/kvm/kvm_main.c __kvm_handle_hva_range: lock and on_lock under the first hit
        if not self.hva_range_entry_ok(r):
            return 0, False
        ret = False
        found = locked = False
        idx = self.srcu_read_lock()
        stop = False
        for as_id in range(self.address_space_num):
            for slot in self.hva_range_slots(as_id, r):
                g = self.gfn_range_of(slot, r)
                if g is None:
                    continue
                if not found:
                    found = True
                    if not r.lockless:
                        locked = True
                        self.mmu_lock()
                        if r.on_lock is not None:
                            r.on_lock(r.start, r.end)
                        if r.handler is None:
                            stop = self.null_handler_hit(r)
                            break
                if r.handler is None:
                    # the stub kvm_null_fn called through a gfn-handler pointer (UBSAN splat)
                    self.obs.calls.append(HandlerCall("kvm_null_fn", slot.as_id, slot.id, g.start, g.end))
                    self.warn("kvm_null_fn called as a gfn handler (UBSAN)")
                    continue
                ret |= bool(getattr(self, r.handler)(g))
            if stop:
                break
        if r.flush_on_ret and ret:
            self.kvm_flush_remote_tlbs()
        if locked:
            self.mmu_unlock()
        self.srcu_read_unlock(idx)
        return int(ret), found

    def kvm_mmu_notifier_invalidate_range_start(self, start: int, end: int, blockable: bool) -> int:
        # v5.15 virt/kvm/kvm_main.c kvm_mmu_notifier_invalidate_range_start
        self.spin_lock(self.mn_invalidate_lock)
        self.mn_active_invalidate_count += 1
        self.spin_unlock(self.mn_invalidate_lock)
        self.handle_hva_range(KvmHvaRange(start, end, None, "kvm_unmap_gfn_range",
                                          self.kvm_inc_notifier_count, True, blockable))
        return 0

    def kvm_mmu_notifier_invalidate_range_end(self, start: int, end: int, blockable: bool) -> None:
        # v5.15 virt/kvm/kvm_main.c kvm_mmu_notifier_invalidate_range_end: walk, then drop the
        # active count and wake the installer (rcuwait_wake_up) when it reaches zero
        self.handle_hva_range(KvmHvaRange(start, end, None, None, self.kvm_dec_notifier_count,
                                          False, blockable))
        self.spin_lock(self.mn_invalidate_lock)
        self.mn_active_invalidate_count -= 1
        self.spin_unlock(self.mn_invalidate_lock)
        if self.mmu_notifier_count < 0:
            self.warn("BUG_ON(kvm->mmu_notifier_count < 0)")

    def kvm_mmu_notifier_change_pte(self, address: int, pte: HostPte) -> None:
        # v5.15 virt/kvm/kvm_main.c kvm_mmu_notifier_change_pte
        if not self.mn_active_invalidate_count:
            self.warn("WARN_ON_ONCE(!kvm->mn_active_invalidate_count) in change_pte")
        if not self.mmu_notifier_count:
            return
        self.kvm_handle_hva_range(address, address + 1, pte, "kvm_set_spte_gfn")

    def install_new_memslots(self, publish) -> None:
        # v5.15 virt/kvm/kvm_main.c install_new_memslots: sleep until no invalidation is active,
        # publish under mn_invalidate_lock, then the srcu grace period
        self.spin_lock(self.mn_invalidate_lock)
        while self.mn_active_invalidate_count:
            self.spin_unlock(self.mn_invalidate_lock)
            self.wait_until(lambda: not self.mn_active_invalidate_count,
                            "mn_memslots_update_rcuwait (mn_active_invalidate_count == 0)",
                            self.active_invalidators)
            self.spin_lock(self.mn_invalidate_lock)
        publish()
        self.spin_unlock(self.mn_invalidate_lock)
        self.synchronize_srcu_expedited()

    def active_invalidators(self) -> list[str]:
        """The tasks whose invalidations are open (the installer waits for them)."""
        return sorted(set(self.host.invalidating))

    def kvm_flush_remote_tlbs(self, origin: str = "kvm_flush_remote_tlbs") -> None:
        # v5.15 virt/kvm/kvm_main.c kvm_flush_remote_tlbs: no tlbs_dirty bookkeeping (6bc6db000295)
        self.kvm_vcpu_flush_tlb(origin)

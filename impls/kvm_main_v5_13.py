"""The generic MMU-notifier layer of Linux v5.13 (virt/kvm/kvm_main.c): the common hva->gfn
walker of "KVM: Consolidate and optimize MMU notifiers", as merged (3039bcc74498,
f922bd9bf33b, 8931a454aea0).  The arch supplies gfn handlers:
    kvm_unmap_gfn_range(range)  kvm_set_spte_gfn(range)
    kvm_age_gfn(range)          kvm_test_age_gfn(range)
each returning bool and called once per (address space, memslot) that the hva range hits.

v5.13-rc1 and v5.13 final have the same generic layer; their differences are arch handlers
(PowerPC Book3S HV).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .kvm import Kvm
from .machine import HostPte, Memslot


@dataclass(slots=True)
class KvmHvaRange:
    """struct kvm_hva_range (v5.13 virt/kvm/kvm_main.c).  Never changed once made (was frozen;
    a frozen dataclass took four times as long to build, and one is built per notifier call)."""
    start: int
    end: int
    pte: HostPte | None
    handler: str | None          # name of the arch gfn handler, None for kvm_null_fn
    on_lock: Callable[[int, int], None] | None
    flush_on_ret: bool
    may_block: bool
    lockless: bool = False       # ~v6.15 (mainline): aging walks without mmu_lock


@dataclass(slots=True)
class KvmGfnRange:
    """struct kvm_gfn_range (v5.13 include/linux/kvm_host.h): gfns [start, end) of one slot."""
    slot: Memslot
    start: int
    end: int
    pte: HostPte | None
    may_block: bool
    attr_filter: str | None = None   # v6.14 (dca6c8853232): KVM_FILTER_SHARED on the hva path


class KvmMainV5_13(Kvm):
    # the commits this layer brings, for fuzz/history.py's history (short id, subject)
    commits = (
        ('3039bcc74498', "KVM: Move x86's MMU notifier memslot walkers to generic code"),
        ('8931a454aea0', 'KVM: Take mmu_lock when handling MMU notifier iff the hva hits a memslot'),
    )

    version = "v5.13"

    # --- arch gfn handlers, one per architecture file ---
    def kvm_unmap_gfn_range(self, range: KvmGfnRange) -> bool:
        raise NotImplementedError

    def kvm_set_spte_gfn(self, range: KvmGfnRange) -> bool:
        raise NotImplementedError

    def kvm_age_gfn(self, range: KvmGfnRange) -> bool:
        raise NotImplementedError

    def kvm_test_age_gfn(self, range: KvmGfnRange) -> bool:
        raise NotImplementedError

    # --- the common walker ---
    def handle_hva_range(self, r: KvmHvaRange) -> int:
        # v5.13 virt/kvm/kvm_main.c __kvm_handle_hva_range
        if r.on_lock is None and r.handler is None:
            self.warn("WARN_ON_ONCE: hva range with neither on_lock nor handler")
            return 0
        ret = False
        locked = False
        idx = self.srcu_read_lock()
        if r.on_lock is not None:
            # range_start/end: lock up front, run the hook on the raw (unclamped) range
            locked = True
            self.mmu_lock()
            r.on_lock(r.start, r.end)
            if r.handler is None:
                self.mmu_unlock()
                self.srcu_read_unlock(idx)
                return 0          # goto out_unlock: no walk and no flush test
        handler = getattr(self, r.handler)
        start, end = r.start, r.end
        page = 1 << self.page_shift
        for as_id in range(self.address_space_num):
            for slot in self.memslots.in_as_hitting(as_id, start, end):
                hva_start = max(start, slot.hva_start)
                hva_end = min(end, slot.hva_end)
                if hva_start >= hva_end:
                    continue
                gfn_range = KvmGfnRange(
                    slot=slot,
                    start=slot.hva_to_gfn(hva_start),
                    end=slot.hva_to_gfn(hva_end + page - 1),   # rounded up: exclusive end
                    pte=r.pte, may_block=r.may_block)
                if not locked:
                    locked = True     # 8931a454aea0: take mmu_lock on the first hit only
                    self.mmu_lock()
                ret |= bool(handler(gfn_range))
        if r.flush_on_ret and (ret or self.tlbs_dirty):
            self.kvm_flush_remote_tlbs()
        if locked:
            self.mmu_unlock()
        self.srcu_read_unlock(idx)
        return int(ret)

    def gfn_range_of(self, slot: Memslot, r: KvmHvaRange) -> KvmGfnRange | None:
        """The clamp of the walker: the gfns of `slot` whose pages meet [r.start, r.end), or None."""
        hva_start = max(r.start, slot.hva_start)
        hva_end = min(r.end, slot.hva_end)
        if hva_start >= hva_end:
            return None
        page = 1 << self.page_shift
        return KvmGfnRange(slot=slot, start=slot.hva_to_gfn(hva_start),
                           end=slot.hva_to_gfn(hva_end + page - 1), pte=r.pte, may_block=r.may_block)

    def kvm_handle_hva_range(self, start: int, end: int, pte: HostPte | None, handler: str) -> int:
        # v5.13 virt/kvm/kvm_main.c kvm_handle_hva_range: flush_on_ret, never blocks
        return self.handle_hva_range(KvmHvaRange(start, end, pte, handler, None, True, False))

    def kvm_handle_hva_range_no_flush(self, start: int, end: int, handler: str) -> int:
        # v5.13 virt/kvm/kvm_main.c kvm_handle_hva_range_no_flush
        return self.handle_hva_range(KvmHvaRange(start, end, None, handler, None, False, False))

    # --- on_lock hooks ---
    def kvm_inc_notifier_count(self, start: int, end: int) -> None:
        # v5.13 virt/kvm/kvm_main.c kvm_inc_notifier_count
        self.mmu_notifier_count += 1
        if self.mmu_notifier_count == 1:
            self.mmu_notifier_range_start, self.mmu_notifier_range_end = start, end
        else:
            self.mmu_notifier_range_start = min(self.mmu_notifier_range_start, start)
            self.mmu_notifier_range_end = max(self.mmu_notifier_range_end, end)

    def kvm_dec_notifier_count(self, start: int, end: int) -> None:
        # v5.13 virt/kvm/kvm_main.c kvm_dec_notifier_count: the range is ignored
        self.mmu_notifier_seq += 1
        self.mmu_notifier_count -= 1

    # --- notifier entry points ---
    def kvm_mmu_notifier_change_pte(self, address: int, pte: HostPte) -> None:
        # v5.13 virt/kvm/kvm_main.c kvm_mmu_notifier_change_pte: [address, address+1), no seq bump
        if not self.mmu_notifier_count:
            self.warn("WARN_ON_ONCE(!kvm->mmu_notifier_count) in change_pte")
        self.kvm_handle_hva_range(address, address + 1, pte, "kvm_set_spte_gfn")

    def kvm_mmu_notifier_invalidate_range_start(self, start: int, end: int, blockable: bool) -> int:
        # v5.13 virt/kvm/kvm_main.c kvm_mmu_notifier_invalidate_range_start: always locks
        self.handle_hva_range(KvmHvaRange(start, end, None, "kvm_unmap_gfn_range",
                                          self.kvm_inc_notifier_count, True, blockable))
        return 0

    def kvm_mmu_notifier_invalidate_range_end(self, start: int, end: int, blockable: bool) -> None:
        # v5.13 virt/kvm/kvm_main.c kvm_mmu_notifier_invalidate_range_end: null handler
        self.handle_hva_range(KvmHvaRange(start, end, None, None,
                                          self.kvm_dec_notifier_count, False, blockable))
        if self.mmu_notifier_count < 0:
            self.warn("BUG_ON(kvm->mmu_notifier_count < 0)")

    def kvm_mmu_notifier_clear_flush_young(self, start: int, end: int) -> int:
        # v5.13 virt/kvm/kvm_main.c kvm_mmu_notifier_clear_flush_young
        return self.kvm_handle_hva_range(start, end, None, "kvm_age_gfn")

    def kvm_mmu_notifier_clear_young(self, start: int, end: int) -> int:
        # v5.13 virt/kvm/kvm_main.c kvm_mmu_notifier_clear_young: still never flushes
        return self.kvm_handle_hva_range_no_flush(start, end, "kvm_age_gfn")

    def kvm_mmu_notifier_test_young(self, address: int) -> int:
        # v5.13 virt/kvm/kvm_main.c kvm_mmu_notifier_test_young: [address, address+1)
        return self.kvm_handle_hva_range_no_flush(address, address + 1, "kvm_test_age_gfn")

    def kvm_mmu_notifier_release(self) -> None:
        # v5.13 virt/kvm/kvm_main.c kvm_mmu_notifier_release: srcu only, no mmu_lock
        self.kvm_arch_flush_shadow_all()

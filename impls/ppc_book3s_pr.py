"""PowerPC Book3S PR ("problem state" KVM): arch/powerpc/kvm/book3s_pr.c and
book3s_mmu_hpte.c, v5.12, v5.13-rc1 and v5.13.

PR KVM runs the guest in user mode and shadows the guest's hashed page table: every
translation the guest may use is a host HPTE that KVM inserted and remembers in a per-vCPU
cache of shadow HPTEs (struct hpte_cache, keyed by the guest real address `raddr`).  The
MMU notifiers act on that cache only through kvmppc_mmu_pte_pflush(vcpu, pa_start, pa_end),
which invalidates every cached entry with pa_start <= raddr < pa_end (byte addresses,
half-open) and removes its host HPTE, which issues the tlbie for it.

Normalized view used here:
  * one leaf per guest page in the shadow HPTE cache (all vCPUs folded into one cache);
  * invalidating a cached entry = zap_leaf + a ranged flush of that entry's page (the tlbie
    done when its host HPTE is removed).  No generic kvm_flush_remote_tlbs is ever asked for:
    every hook returns 0 / false.  (Were one asked for, PR handles KVM_REQ_TLB_FLUSH by emptying
    the whole shadow cache, kvmppc_core_check_requests_pr; modelled for completeness.)

v5.12: the arch walks the memslots of address space 0 itself (do_kvm_unmap_hva), clamping the
hva range to each slot and rounding the end up to a page; range_start passes [start, end),
change_pte passes [hva, hva + PAGE_SIZE) so an unaligned hva covers two pages; age and
test_age have no walk at all and always answer 0.
v5.13 (the series' PowerPC conversion, merged as b1c5356e873c): the common walker hands
[start, end) per slot; unmap and set_spte flush [start, end) of guest real addresses; change_pte
therefore covers the single page of [addr, addr + 1); age and test_age still answer false.
v5.13-rc1 and v5.13 are identical for PR (the rc fixes touched only Book3S HV).

Arch facts: KVM_ADDRESS_SPACE_NUM 1, KVM_USER_MEM_SLOTS 512, no KVM_MEM_READONLY
(__KVM_HAVE_READONLY_MEM is not defined on powerpc), only base-page shadow HPTEs.
Page size: 4 KiB (page_shift 12) by project choice, although ppc64 Book3S kernels default to
64 KiB pages; the boundary arithmetic is the same in units of PAGE_SIZE.
Fault path: book3s_64_mmu_host.c kvmppc_mmu_map_page snapshots mmu_notifier_seq and gives
up with -EAGAIN when mmu_notifier_retry says so (seq-based, not hva-based).

Not modelled: one shadow cache per vCPU (we fold them; each is pflushed with the same range),
several shadow HPTEs for one guest page (different effective addresses), the 32-bit host
(book3s_32_mmu_host.c), the guest's own tlbie / slbia, cache eviction, segment (SLB/VSID)
state, dirty logging, 64 KiB pages.

Memslot delete / move and release: kvmppc_core_flush_memslot_pr and powerpc's
kvm_arch_flush_shadow_all are empty, so the shadow HPTE cache keeps entries of a deleted or
moved slot; the model does the same (see kvm_arch_flush_shadow_memslot below).
"""
from __future__ import annotations

from .kvm import Kvm
from .kvm_main_v5_12 import KvmMainV5_12
from .kvm_main_v5_13 import KvmGfnRange, KvmMainV5_13
from .machine import LEVEL_4K, HostPte, Memslot


class PpcPrMmu(Kvm):
    """What both versions share: the shadow HPTE cache and its range invalidation."""
    arch = "ppc-pr"
    address_space_num = 1            # KVM_ADDRESS_SPACE_NUM (generic default, powerpc does not override)
    user_mem_slots = 512             # KVM_USER_MEM_SLOTS (arch/powerpc/include/asm/kvm_host.h)
    readonly_mem = False             # no __KVM_HAVE_READONLY_MEM on powerpc
    max_level = LEVEL_4K             # PR shadow HPTEs map base pages only
    uses_retry_hva = False           # kvmppc_mmu_map_page uses mmu_notifier_retry

    def kvmppc_mmu_pte_pflush(self, pa_start: int, pa_end: int) -> None:
        # v5.12 arch/powerpc/kvm/book3s_mmu_hpte.c kvmppc_mmu_pte_pflush: invalidate each cached
        # shadow HPTE whose guest real address lies in [pa_start, pa_end); removing its host
        # HPTE (invalidate_pte -> kvmppc_mmu_invalidate_pte) is what flushes it
        for leaf in sorted(self.leaves.values(), key=lambda x: x.gfn):
            raddr = leaf.gfn << self.page_shift
            if leaf.as_id == 0 and pa_start <= raddr < pa_end:
                self.zap_leaf(leaf)
                self.flush_tlb_range(leaf.as_id, leaf.gfn, leaf.gfn_end, "kvmppc_mmu_invalidate_pte")

    def kvm_vcpu_flush_tlb(self, origin: str) -> None:
        # v5.12 arch/powerpc/kvm/book3s_pr.c kvmppc_core_check_requests_pr: PR uses
        # KVM_REQ_TLB_FLUSH to empty the whole shadow HPTE cache (kvmppc_mmu_pte_flush(vcpu, 0, 0)).
        # No notifier path of either version asks for it (every hook returns 0 / false).
        self.zap_all_leaves()
        super().kvm_vcpu_flush_tlb(origin)

    def kvm_arch_flush_shadow_memslot(self, slot: Memslot) -> None:
        # v5.12 arch/powerpc/kvm/book3s_pr.c kvmppc_core_flush_memslot_pr: empty, the shadow
        # HPTE cache is left as it is when a slot is deleted or moved
        return

    def kvm_arch_flush_shadow_all(self) -> None:
        # v5.12 arch/powerpc/include/asm/kvm_host.h kvm_arch_flush_shadow_all: empty inline
        return


class PpcPrV5_12(PpcPrMmu, KvmMainV5_12):
    """Book3S PR with the v5.12 hva hooks (book3s.c dispatches to the _pr ops)."""

    def do_kvm_unmap_hva(self, start: int, end: int, hook: str) -> None:
        # v5.12 arch/powerpc/kvm/book3s_pr.c do_kvm_unmap_hva: address space 0 only; clamp the
        # hva range to each slot, first gfn rounded down, end rounded up, then pflush every vCPU
        page = 1 << self.page_shift
        for slot in self.memslots.in_as_hitting(0, start, end):
            hva_start = max(start, slot.hva_start)
            hva_end = min(end, slot.hva_end)
            if hva_start >= hva_end:
                continue
            gfn = slot.hva_to_gfn(hva_start)
            gfn_end = slot.hva_to_gfn(hva_end + page - 1)
            self.record_call(hook, slot, gfn, gfn_end, "pflush [gfn, gfn_end) on every vCPU")
            self.kvmppc_mmu_pte_pflush(gfn << self.page_shift, gfn_end << self.page_shift)

    def kvm_unmap_hva_range(self, start: int, end: int, flags: int) -> int:
        # v5.12 arch/powerpc/kvm/book3s_pr.c kvm_unmap_hva_range_pr: [start, end), returns 0
        # (book3s.c kvm_unmap_hva_range drops flags)
        self.do_kvm_unmap_hva(start, end, "kvm_unmap_hva_range_pr")
        return 0

    def kvm_set_spte_hva(self, hva: int, pte: HostPte) -> int:
        # v5.12 arch/powerpc/kvm/book3s_pr.c kvm_set_spte_hva_pr: unmaps [hva, hva + PAGE_SIZE),
        # ignores the new pte (refaulted later); void, so book3s.c kvm_set_spte_hva returns 0
        self.do_kvm_unmap_hva(hva, hva + (1 << self.page_shift), "kvm_set_spte_hva_pr")
        return 0

    def kvm_age_hva(self, start: int, end: int) -> int:
        # v5.12 arch/powerpc/kvm/book3s_pr.c kvm_age_hva_pr: no walk, never young
        return 0

    def kvm_test_age_hva(self, hva: int) -> int:
        # v5.12 arch/powerpc/kvm/book3s_pr.c kvm_test_age_hva_pr: no walk, never young
        return 0


class PpcPrV5_13(PpcPrMmu, KvmMainV5_13):
    """Book3S PR with the v5.13 gfn handlers."""

    def do_kvm_unmap_gfn(self, range: KvmGfnRange, hook: str) -> bool:
        # v5.13 arch/powerpc/kvm/book3s_pr.c do_kvm_unmap_gfn: pflush [start, end) of guest real
        # addresses on every vCPU; returns false, so the walker asks for no flush
        self.record_call(hook, range.slot, range.start, range.end, "pflush [start, end) on every vCPU")
        self.kvmppc_mmu_pte_pflush(range.start << self.page_shift, range.end << self.page_shift)
        return False

    def kvm_unmap_gfn_range(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/powerpc/kvm/book3s_pr.c kvm_unmap_gfn_range_pr
        return self.do_kvm_unmap_gfn(range, "kvm_unmap_gfn_range_pr")

    def kvm_set_spte_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/powerpc/kvm/book3s_pr.c kvm_set_spte_gfn_pr: same unmap, pte ignored
        return self.do_kvm_unmap_gfn(range, "kvm_set_spte_gfn_pr")

    def kvm_age_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/powerpc/kvm/book3s_pr.c kvm_age_gfn_pr: handed the range, always false
        self.record_call("kvm_age_gfn_pr", range.slot, range.start, range.end, "ignored: always false")
        return False

    def kvm_test_age_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/powerpc/kvm/book3s_pr.c kvm_test_age_gfn_pr: handed the range, always false
        self.record_call("kvm_test_age_gfn_pr", range.slot, range.start, range.end, "ignored: always false")
        return False


MODELS = {"ppc-pr": {
    "v5.12": (PpcPrV5_12, ""),
    "v5.13-rc1": (PpcPrV5_13, "no Book3S PR or kvm_main.c notifier change between v5.13-rc1 and v5.13 "
                              "(32b48bf8514c and da3bb206c9ce touch only book3s_64_mmu_hv.c)"),
    "v5.13": (PpcPrV5_13, ""),
}}

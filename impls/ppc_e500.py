"""PowerPC e500 / BookE (e500v2 and e500mc): arch/powerpc/kvm/e500_mmu_host.c, v5.12,
v5.13-rc1 and v5.13.

e500 KVM shadows the guest's software-managed TLB.  Each guest TLB entry has a private
"ref" (gtlb_priv[tlbsel][esel].ref: the host pfn and E500_TLB_VALID) from which the host
TLB entry is written on a guest TLB miss without going back to the fault path; host TLB1
entries are tracked in g2h_tlb1_map / h2g_tlb1_rmap.  KVM has no per-gfn invalidation: the
only way to drop shadow state is the whole-VM request KVM_REQ_TLB_FLUSH, which each vCPU
handles (booke.c kvmppc_core_check_requests) with kvmppc_core_flush_tlb: invalidate all of
its host TLB entries (kvmppc_e500_tlbil_all), release every ref (clear_tlb_privs) and clear
the TLB1 maps.  So a kvm_flush_remote_tlbs() on e500 drops every shadow mapping of the VM
and its hardware TLB entries; the model does that in kvm_vcpu_flush_tlb (the request
handler): zap every leaf, then flush the TLB.

Normalized view: one leaf per guest page with a valid shadow ref (all vCPUs folded).

v5.12: no memslot walk at all.  kvm_unmap_hva_range and kvm_set_spte_hva both call the
static kvm_unmap_hva, which traces the first hva and calls kvm_flush_remote_tlbs
unconditionally, then returns 0: every invalidate_range_start and change_pte drops every
shadow mapping of the VM, even for an empty range or one that hits no memslot.  We report
that hook as acting on every gfn of every slot (record_call per slot, whole slot).
kvm_age_hva / kvm_test_age_hva have no walk and return 0.
v5.13 (the series' PowerPC conversion, merged as b1c5356e873c): kvm_unmap_gfn_range and
kvm_set_spte_gfn call kvm_e500_mmu_unmap_gfn, which does nothing itself and returns true,
relying on the common walker's flush-on-return; that flush (the same whole-VM
kvm_flush_remote_tlbs) is issued only when the hva range hit a memslot.  Nicholas Piggin
asked in review why dropping the unconditional kvm_flush_remote_tlbs was fine.  Age and
test_age return false.  v5.13-rc1 and v5.13 are identical for e500.

Consequence worth knowing (the reference sees it through the hva each leaf was made from):
booke.c kvmppc_core_flush_memslot is empty, so deleting or moving a slot leaves its shadow
refs; v5.12 drops them at the next invalidate_range_start whatever its range, v5.13 only at
one that hits some other memslot (oracles/known/e500.toml: likely a regression).

Arch facts: KVM_ADDRESS_SPACE_NUM 1, KVM_USER_MEM_SLOTS 512, no KVM_MEM_READONLY.
Page size: 4 KiB (page_shift 12), the BookE default, and the project's choice for every arch.
Fault path: e500_mmu_host.c kvmppc_e500_shadow_map snapshots mmu_notifier_seq and gives up
when mmu_notifier_retry says so (seq-based).

Not modelled: TLB1 mappings larger than 4 KiB (the shadow map may back a large guest TLB1
entry with a large host page; max_level is 4K here), per-vCPU shadow state (folded), the
asynchrony of the flush request (a vCPU acts on it before it next enters the guest; we apply
it at once), guest tlbwe/tlbivax, e500mc LPID handling, the trace_kvm_unmap_hva tracepoint.
"""
from __future__ import annotations

from .kvm import Kvm
from .kvm_main_v5_12 import KvmMainV5_12
from .kvm_main_v5_13 import KvmGfnRange, KvmMainV5_13
from .machine import LEVEL_4K, HostPte, Memslot
from .observation import HandlerCall


class E500Mmu(Kvm):
    """What both versions share: the whole-VM shadow TLB flush."""
    arch = "e500"
    address_space_num = 1            # KVM_ADDRESS_SPACE_NUM (generic default)
    user_mem_slots = 512             # KVM_USER_MEM_SLOTS (arch/powerpc/include/asm/kvm_host.h)
    readonly_mem = False             # no __KVM_HAVE_READONLY_MEM on powerpc
    max_level = LEVEL_4K             # large TLB1 backings not modelled
    uses_retry_hva = False           # kvmppc_e500_shadow_map uses mmu_notifier_retry

    def kvm_vcpu_flush_tlb(self, origin: str) -> None:
        # v5.12 arch/powerpc/kvm/booke.c kvmppc_core_check_requests -> e500_mmu_host.c
        # kvmppc_core_flush_tlb: host TLB invalidated, every shadow ref released, TLB1 maps cleared
        self.zap_all_leaves()
        super().kvm_vcpu_flush_tlb(origin)

    def kvm_arch_flush_shadow_memslot(self, slot: Memslot) -> None:
        # v5.12 arch/powerpc/kvm/booke.c kvmppc_core_flush_memslot: empty, shadow refs of the
        # deleted or moved slot stay
        return

    def kvm_arch_flush_shadow_all(self) -> None:
        # v5.12 arch/powerpc/include/asm/kvm_host.h kvm_arch_flush_shadow_all: empty inline
        return


class E500V5_12(E500Mmu, KvmMainV5_12):
    """e500 with the v5.12 hva hooks: no walk, a whole-VM flush for every unmap."""

    def kvm_unmap_hva(self, hva: int, hook: str) -> int:
        # v5.12 arch/powerpc/kvm/e500_mmu_host.c kvm_unmap_hva: traces hva, then flushes the
        # shadow TLB of every vCPU whatever the hva; returns 0
        # one recorded call per slot, whole: the same calls for every event until the memslots
        # change, so they are made once per memslot set (HandlerCalls are never modified)
        self.obs.calls += self.memslots._view(("e500-unmap-calls", hook), lambda: [
            HandlerCall(hook, slot.as_id, slot.id, slot.base_gfn, slot.gfn_end,
                        "no memslot walk: kvm_flush_remote_tlbs drops every shadow mapping")
            for slot in self.memslots.all()])
        self.kvm_flush_remote_tlbs()
        return 0

    def kvm_unmap_hva_range(self, start: int, end: int, flags: int) -> int:
        # v5.12 arch/powerpc/kvm/e500_mmu_host.c kvm_unmap_hva_range: kvm_unmap_hva(start) only
        return self.kvm_unmap_hva(start, "kvm_unmap_hva_range")

    def kvm_set_spte_hva(self, hva: int, pte: HostPte) -> int:
        # v5.12 arch/powerpc/kvm/e500_mmu_host.c kvm_set_spte_hva: kvm_unmap_hva(hva), returns 0
        return self.kvm_unmap_hva(hva, "kvm_set_spte_hva")

    def kvm_age_hva(self, start: int, end: int) -> int:
        # v5.12 arch/powerpc/kvm/e500_mmu_host.c kvm_age_hva: no walk, always 0
        return 0

    def kvm_test_age_hva(self, hva: int) -> int:
        # v5.12 arch/powerpc/kvm/e500_mmu_host.c kvm_test_age_hva: no walk, always 0
        return 0


class E500V5_13(E500Mmu, KvmMainV5_13):
    """e500 with the v5.13 gfn handlers: unmap returns true and leaves the work to the flush."""

    def kvm_e500_mmu_unmap_gfn(self, range: KvmGfnRange, hook: str) -> bool:
        # v5.13 arch/powerpc/kvm/e500_mmu_host.c kvm_e500_mmu_unmap_gfn: touches nothing, returns
        # true so the walker's kvm_flush_remote_tlbs drops every shadow mapping
        self.record_call(hook, range.slot, range.start, range.end,
                         "returns true: the walker's kvm_flush_remote_tlbs drops every shadow mapping")
        return True

    def kvm_unmap_gfn_range(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/powerpc/kvm/e500_mmu_host.c kvm_unmap_gfn_range
        return self.kvm_e500_mmu_unmap_gfn(range, "kvm_unmap_gfn_range")

    def kvm_set_spte_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/powerpc/kvm/e500_mmu_host.c kvm_set_spte_gfn: same as unmap, pte ignored
        return self.kvm_e500_mmu_unmap_gfn(range, "kvm_set_spte_gfn")

    def kvm_age_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/powerpc/kvm/e500_mmu_host.c kvm_age_gfn: handed the range, always false
        self.record_call("kvm_age_gfn", range.slot, range.start, range.end, "ignored: always false")
        return False

    def kvm_test_age_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/powerpc/kvm/e500_mmu_host.c kvm_test_age_gfn: handed the range, always false
        self.record_call("kvm_test_age_gfn", range.slot, range.start, range.end, "ignored: always false")
        return False


MODELS = {"e500": {
    "v5.12": (E500V5_12, ""),
    "v5.13-rc1": (E500V5_13, "no e500 or kvm_main.c notifier change between v5.13-rc1 and v5.13 "
                             "(32b48bf8514c and da3bb206c9ce touch only book3s_64_mmu_hv.c)"),
    "v5.13": (E500V5_13, ""),
}}

"""PowerPC Book3S HV (arch/powerpc/kvm/book3s_64_mmu_hv.c, book3s_64_mmu_radix.c), hash and
radix MMU, v5.12, v5.13-rc1 and v5.13.

A VM is either hash (HPT) or radix; the choice is the class attribute `radix` (registry names
ppc-hv-hash and ppc-hv-radix).  KVM_ADDRESS_SPACE_NUM is 1.  Pages are 4 KiB here
(page_shift 12) for every arch, although ppc64 Book3S defaults to 64 KiB pages.

Hash: every HPTE is chained on the rmap word of one gfn of its slot.  A large-page HPTE (2M
here, level 2) is chained on the rmap of its FIRST, aligned gfn, so a per-gfn handler reaches
it only when the walk visits that gfn.  Unmapping an HPTE invalidates it with its own tlbie
(a ranged flush of the leaf) and harvests its R bit into the rmap word as REFERENCED; the age
handlers return true for a REFERENCED rmap even with nothing mapped, and clear it.  Aging an
HPTE clears R with a tlbie.  The rmap array lives with the slot: fresh on create, kept on
move and flags-only changes, freed on delete.
Radix: one partition-scoped tree; leaves are 4K, 2M or 1G.  Any gfn inside a huge leaf
removes (tlbie of the whole leaf) or ages the whole leaf; a later gfn of the same leaf finds
nothing.  Aging has no flush of its own.  The fault path picks 1G/2M only when the host pte
is exactly that size and gpa and hva agree inside it; it does NOT check the memslot bounds,
so a huge leaf can stick out of its slot (that is what the kernel does).

v5.12: the arch walks its memslots itself (kvm_handle_hva_range), one handler call per gfn of
[gfn(hs), gfn(he + PAGE_SIZE - 1)); test_age and set_spte use [hva, hva+1); unmap and
set_spte return 0 (handlers flush by themselves), age returns the OR.
v5.13-rc1 (b1c5356e873c): the gfn handlers act on range->start only; age/test_age on radix
call the radix helper, drop its result and return the hash rmap helper's result instead.
32b48bf8514c: per-gfn loops, radix OR hash, WARNs on test_age/set_spte, but the hash unmap
loop passes range->start every time.  v5.13 (da3bb206c9ce on top): the loop passes gfn.

Not modelled: secure (ultravisor) guests, nested-guest rmaps (radix rmap words are taken as
always 0, i.e. no nested guest), HPTEs that are not valid or whose RPN does not match their
rmap gfn (every HPTE here is valid and chained on its own gfn), the guest's choice of HPTE
page size (a hash fault maps the largest size host and slot allow, at most 2M), H_REMOVE and
other guest hcalls, the C bit and the dirty log, HPT resizing, hash<->radix switching, and
what Book3S HV does with KVM_REQ_TLB_FLUSH (kvm_flush_remote_tlbs is taken to flush all).
"""
from __future__ import annotations

from .kvm import Kvm, PendingFault
from .kvm_main_v5_12 import KvmMainV5_12
from .kvm_main_v5_13 import KvmGfnRange, KvmMainV5_13
from .machine import (KVM_MEM_LOG_DIRTY_PAGES, LEVEL_1G, LEVEL_2M, LEVEL_4K, HostPte, Leaf,
                      Memslot, pages_per_level)


class PpcBook3sHvMmu(Kvm):
    """What every version shares: the per-gfn hash and radix helpers and the HV fault rules."""
    arch = "ppc-hv-hash"
    address_space_num = 1            # KVM_ADDRESS_SPACE_NUM (generic default)
    user_mem_slots = 512             # KVM_USER_MEM_SLOTS (v5.12 arch/powerpc/include/asm/kvm_host.h)
    readonly_mem = False             # powerpc uapi does not define __KVM_HAVE_READONLY_MEM
    max_level = LEVEL_2M             # hash: large HPTEs kept to 2M in this model
    radix = False                    # kvm_is_radix(kvm)

    def __init__(self) -> None:
        super().__init__()
        # slot id -> indexes (gfn - base_gfn) whose rmap word has KVMPPC_RMAP_REFERENCED
        self.rmap_referenced: dict[int, set[int]] = {}

    # ----- hash: rmaps ---------------------------------------------------------------------
    def rmap_chain(self, slot: Memslot, gfn: int) -> list[Leaf]:
        """HPTEs chained on slot->arch.rmap[gfn - base_gfn]: those whose first gfn is gfn.
        On a radix VM the rmap words hold only nested-guest rmaps, none here: always empty."""
        # v5.12 arch/powerpc/kvm/book3s_hv_rm_mmu.c kvmppc_do_h_enter: chained on rmap[aligned gfn]
        if self.radix:
            return []
        return [x for x in (self.leaves.get((slot.as_id, gfn, lvl)) for lvl in (LEVEL_4K, LEVEL_2M))
                if x is not None]

    def rmap_busy(self, slot: Memslot, start: int, end: int) -> list[int]:
        """gfns of [start, end) whose rmap word is non-zero (chain present or REFERENCED),
        in walk order; every other gfn's handler call does nothing and returns 0."""
        # v5.12 arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_unmap_rmapp/kvm_age_rmapp: empty word -> 0
        refs = self.rmap_referenced.get(slot.id, set())
        busy = {slot.base_gfn + i for i in refs if start <= slot.base_gfn + i < end}
        busy |= {x.gfn for x in self.leaves.values()
                 if x.as_id == slot.as_id and start <= x.gfn < end and slot.has_gfn(x.gfn)}
        return sorted(busy)

    def kvm_unmap_rmapp(self, slot: Memslot, gfn: int) -> bool:
        # v5.12 arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_unmap_rmapp -> kvmppc_unmap_hpte:
        # each chained HPTE is unlinked, invalidated with tlbie, its R bit harvested; returns 0
        for leaf in self.rmap_chain(slot, gfn):
            if leaf.young:
                self.rmap_referenced.setdefault(slot.id, set()).add(gfn - slot.base_gfn)
            self.zap_leaf(leaf)
            self.flush_tlb_range(leaf.as_id, leaf.gfn, leaf.gfn_end, "kvmppc_invalidate_hpte")
        return False

    def kvm_age_rmapp(self, slot: Memslot, gfn: int) -> bool:
        # v5.12 arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_age_rmapp: clear REFERENCED (counts as
        # young), then clear R on every chained HPTE that has it (kvmppc_clear_ref_hpte: tlbie)
        ret = False
        refs = self.rmap_referenced.get(slot.id, set())
        if gfn - slot.base_gfn in refs:
            refs.discard(gfn - slot.base_gfn)
            ret = True
        for leaf in self.rmap_chain(slot, gfn):
            if leaf.young:
                self.age_leaf(leaf)
                self.flush_tlb_range(leaf.as_id, leaf.gfn, leaf.gfn_end, "kvmppc_clear_ref_hpte")
                ret = True
        return ret

    def kvm_test_age_rmapp(self, slot: Memslot, gfn: int) -> bool:
        # v5.12 arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_test_age_rmapp: REFERENCED or any
        # chained HPTE with R; changes nothing
        if gfn - slot.base_gfn in self.rmap_referenced.get(slot.id, set()):
            return True
        return any(leaf.young for leaf in self.rmap_chain(slot, gfn))

    # ----- radix ---------------------------------------------------------------------------
    def kvm_unmap_radix(self, slot: Memslot, gfn: int) -> bool:
        # v5.12 arch/powerpc/kvm/book3s_64_mmu_radix.c kvm_unmap_radix -> kvmppc_unmap_pte:
        # the whole leaf holding gfn is cleared and tlbie'd at its own size; returns 0
        leaf = self.leaf_covering(slot.as_id, gfn)
        if leaf is not None:
            self.zap_leaf(leaf)
            self.flush_tlb_range(leaf.as_id, leaf.gfn, leaf.gfn_end, "kvmppc_radix_tlbie_page")
        return False

    def kvm_age_radix(self, slot: Memslot, gfn: int) -> bool:
        # v5.12 arch/powerpc/kvm/book3s_64_mmu_radix.c kvm_age_radix: clear _PAGE_ACCESSED of
        # the leaf holding gfn if it is young; no TLB flush
        leaf = self.leaf_covering(slot.as_id, gfn)
        if leaf is None or not leaf.young:
            return False
        self.age_leaf(leaf)
        return True

    def kvm_test_age_radix(self, slot: Memslot, gfn: int) -> bool:
        # v5.12 arch/powerpc/kvm/book3s_64_mmu_radix.c kvm_test_age_radix: present && young
        leaf = self.leaf_covering(slot.as_id, gfn)
        return leaf is not None and leaf.young

    # ----- per-gfn loops (the kernel calls a helper for every gfn; gfns without a leaf or
    # rmap bit cost nothing and return 0, so only the busy ones are visited) -------------
    def busy_gfns(self, slot: Memslot, start: int, end: int) -> list[int]:
        # v5.12 arch/powerpc/kvm/book3s_64_mmu_radix.c kvm_unmap_radix: absent pte -> nothing
        if not self.radix:
            return self.rmap_busy(slot, start, end)
        # radix: the first gfn of [start, end) inside each leaf is the one that acts on it
        return [max(start, x.gfn) for x in self.leaves_in(slot.as_id, start, end)]

    def per_gfn(self, helper: str, slot: Memslot, start: int, end: int) -> bool:
        """OR of helper(slot, gfn) for gfn in [start, end), in ascending gfn order."""
        # v5.12 arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_handle_hva_range inner loop (v5.13: the
        # for-gfn loops of kvm_unmap_gfn_range_hv / kvm_age_gfn_hv)
        fn = getattr(self, helper)
        ret = False
        for gfn in self.busy_gfns(slot, start, end):
            ret |= bool(fn(slot, gfn))
        self.record_call(helper, slot, start, end, "per-gfn")
        return ret

    def one_gfn(self, helper: str, slot: Memslot, gfn: int, detail: str = "") -> bool:
        # v5.13 arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_*_gfn_hv: a helper on range->start alone
        ret = bool(getattr(self, helper)(slot, gfn))
        self.record_call(helper, slot, gfn, gfn + 1, detail)
        return ret

    def unmap_helper(self) -> str:
        # v5.12 arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_unmap_hva_range_hv: kvm_is_radix picks
        return "kvm_unmap_radix" if self.radix else "kvm_unmap_rmapp"

    def age_helper(self) -> str:
        # v5.12 arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_age_hva_hv: kvm_is_radix picks
        return "kvm_age_radix" if self.radix else "kvm_age_rmapp"

    def test_age_helper(self) -> str:
        # v5.12 arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_test_age_hva_hv: kvm_is_radix picks
        return "kvm_test_age_radix" if self.radix else "kvm_test_age_rmapp"

    # ----- fault path ----------------------------------------------------------------------
    def fault_level(self, f: PendingFault) -> int:
        if not self.radix:
            # hash: v5.12 arch/powerpc/kvm/book3s_64_mmu_hv.c kvmppc_book3s_hv_page_fault with
            # kvmppc_do_h_enter; the large page must fit the slot and host: the default rule
            return super().fault_level(f)
        # v5.12 arch/powerpc/kvm/book3s_64_mmu_radix.c kvmppc_book3s_instantiate_page: huge
        # only if the host pte is exactly that size and gpa/hva agree inside it; no slot check
        if f.slot.flags & KVM_MEM_LOG_DIRTY_PAGES:
            return LEVEL_4K
        hva_page = f.hva >> self.page_shift
        for level in (LEVEL_1G, LEVEL_2M):
            n = pages_per_level(level, self.page_shift)
            if f.pte.level == level and not (f.gfn ^ hva_page) & (n - 1):
                return level
        return LEVEL_4K

    # ----- memslot updates -----------------------------------------------------------------
    def set_user_memory_region(self, as_id: int, slot: int, flags: int, guest_phys_addr: int,
                               memory_size: int, userspace_addr: int) -> None:
        # v5.12 arch/powerpc/kvm/book3s_hv.c kvmppc_core_prepare_memory_region_hv: the rmap
        # array is allocated zeroed on create only; kvmppc_core_free_memslot_hv frees it
        super().set_user_memory_region(as_id, slot, flags, guest_phys_addr, memory_size, userspace_addr)
        if self.obs.error is None and self.obs.note in ("create", "delete"):
            self.rmap_referenced.pop(slot, None)

    def kvm_arch_flush_shadow_memslot(self, slot: Memslot) -> None:
        # v5.12 arch/powerpc/kvm/book3s_hv.c kvmppc_core_flush_memslot_hv: hash unmaps every
        # rmap with a chain (each HPTE tlbie'd, R harvested); radix: kvmppc_radix_flush_memslot
        # unmaps per gfn (tlbie per leaf) and bumps mmu_notifier_seq.  Radix takes mmu_lock
        # itself; the shared caller already holds it here.
        if self.radix:
            for leaf in self.leaves_in(slot.as_id, slot.base_gfn, slot.gfn_end):
                self.kvm_unmap_radix(slot, max(slot.base_gfn, leaf.gfn))
            self.mmu_notifier_seq += 1
            return
        for gfn in sorted({x.gfn for x in self.leaves.values()
                           if x.as_id == slot.as_id and slot.has_gfn(x.gfn)}):
            self.kvm_unmap_rmapp(slot, gfn)

    def kvm_arch_flush_shadow_all(self) -> None:
        # v5.12 arch/powerpc/include/asm/kvm_host.h kvm_arch_flush_shadow_all: empty on powerpc
        return


class PpcRadixVm:
    """Mixin: a radix (POWER9 partition-scoped) VM instead of hash."""
    arch = "ppc-hv-radix"
    radix = True
    max_level = LEVEL_1G             # radix leaves: 4K, 2M (PMD), 1G (PUD)


# ----- v5.12 ----------------------------------------------------------------------------------
class PpcHvV5_12(PpcBook3sHvMmu, KvmMainV5_12):
    """Book3S HV with the v5.12 hva hooks (book3s.c dispatch to the _hv ops)."""

    def kvm_handle_hva_range(self, start: int, end: int, helper: str) -> bool:
        # v5.12 arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_handle_hva_range: kvm_memslots (as 0),
        # clamp to the slot, handler once per gfn of [gfn(hs), gfn(he + PAGE_SIZE - 1))
        page = 1 << self.page_shift
        ret = False
        for slot in self.memslots.in_as_hitting(0, start, end):
            hva_start = max(start, slot.hva_start)
            hva_end = min(end, slot.hva_end)
            if hva_start >= hva_end:
                continue
            gfn = slot.hva_to_gfn(hva_start)
            gfn_end = slot.hva_to_gfn(hva_end + page - 1)
            ret |= self.per_gfn(helper, slot, gfn, gfn_end)
        return ret

    def kvm_unmap_hva_range(self, start: int, end: int, flags: int) -> int:
        # v5.12 arch/powerpc/kvm/book3s.c kvm_unmap_hva_range (flags dropped) ->
        # book3s_64_mmu_hv.c kvm_unmap_hva_range_hv: result thrown away, returns 0
        self.kvm_handle_hva_range(start, end, self.unmap_helper())
        return 0

    def kvm_set_spte_hva(self, hva: int, pte: HostPte) -> int:
        # v5.12 arch/powerpc/kvm/book3s.c kvm_set_spte_hva -> kvm_set_spte_hva_hv (void):
        # kvm_handle_hva over [hva, hva+1) with the unmap helpers; the pte is ignored; 0
        self.kvm_handle_hva_range(hva, hva + 1, self.unmap_helper())
        return 0

    def kvm_age_hva(self, start: int, end: int) -> int:
        # v5.12 arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_age_hva_hv: OR over every gfn
        return int(self.kvm_handle_hva_range(start, end, self.age_helper()))

    def kvm_test_age_hva(self, hva: int) -> int:
        # v5.12 arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_test_age_hva_hv: [hva, hva+1)
        return int(self.kvm_handle_hva_range(hva, hva + 1, self.test_age_helper()))


# ----- v5.13-rc1 --------------------------------------------------------------------------------
class PpcHvV5_13rc1(PpcBook3sHvMmu, KvmMainV5_13):
    """As merged in b1c5356e873c: only range->start is handled; radix aging falls through to
    the hash rmap helper."""
    version = "v5.13-rc1"

    def kvm_unmap_gfn_range(self, range: KvmGfnRange) -> bool:
        # v5.13-rc1 arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_unmap_gfn_range_hv: start only
        return self.one_gfn(self.unmap_helper(), range.slot, range.start, "range->start only")

    def kvm_age_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13-rc1 arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_age_gfn_hv: radix result dropped,
        # the hash rmap helper's result on start is returned for radix VMs too
        if self.radix:
            self.one_gfn("kvm_age_radix", range.slot, range.start, "result discarded")
        return self.one_gfn("kvm_age_rmapp", range.slot, range.start, "range->start only")

    def kvm_test_age_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13-rc1 arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_test_age_gfn_hv: same fall-through
        if self.radix:
            self.one_gfn("kvm_test_age_radix", range.slot, range.start, "result discarded")
        return self.one_gfn("kvm_test_age_rmapp", range.slot, range.start, "range->start only")

    def kvm_set_spte_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13-rc1 arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_set_spte_gfn_hv: unmap start,
        # return the helper's 0; no WARN
        return self.one_gfn(self.unmap_helper(), range.slot, range.start, "range->start only")


# ----- v5.13 final ------------------------------------------------------------------------------
class PpcHvV5_13(PpcBook3sHvMmu, KvmMainV5_13):
    """v5.13: 32b48bf8514c (per-gfn loops, radix or hash, WARNs) + da3bb206c9ce (hash unmap
    loop passes gfn)."""

    def kvm_unmap_gfn_range(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_unmap_gfn_range_hv: every gfn, false
        self.per_gfn(self.unmap_helper(), range.slot, range.start, range.end)
        return False

    def kvm_age_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_age_gfn_hv: OR over every gfn
        return self.per_gfn(self.age_helper(), range.slot, range.start, range.end)

    def kvm_test_age_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_test_age_gfn_hv: WARN unless one gfn,
        # then test start only
        if range.start + 1 != range.end:
            self.warn("WARN_ON(range->start + 1 != range->end) in kvm_test_age_gfn_hv")
        return self.one_gfn(self.test_age_helper(), range.slot, range.start)

    def kvm_set_spte_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_set_spte_gfn_hv: WARN unless one gfn,
        # unmap start, return false
        if range.start + 1 != range.end:
            self.warn("WARN_ON(range->start + 1 != range->end) in kvm_set_spte_gfn_hv")
        self.one_gfn(self.unmap_helper(), range.slot, range.start)
        return False


class PpcHvV5_13_32b48bf8514c(PpcHvV5_13):
    """32b48bf8514c alone (before da3bb206c9ce): the hash unmap loop runs end - start times
    but passes range->start each time, so only the first gfn's rmap is unmapped."""
    version = "v5.13-rc1+32b48bf8514c"

    def kvm_unmap_gfn_range(self, range: KvmGfnRange) -> bool:
        # 32b48bf8514c arch/powerpc/kvm/book3s_64_mmu_hv.c kvm_unmap_gfn_range_hv
        if self.radix:
            return super().kvm_unmap_gfn_range(range)
        n = range.end - range.start
        self.kvm_unmap_rmapp(range.slot, range.start)   # the other n - 1 calls find an empty rmap
        self.record_call("kvm_unmap_rmapp", range.slot, range.start, range.start + 1,
                         f"range->start passed {n} times")
        return False


class PpcHvRadixV5_12(PpcRadixVm, PpcHvV5_12):
    pass


class PpcHvRadixV5_13rc1(PpcRadixVm, PpcHvV5_13rc1):
    pass


class PpcHvRadixV5_13(PpcRadixVm, PpcHvV5_13):
    pass


class PpcHvRadixV5_13_32b48bf8514c(PpcRadixVm, PpcHvV5_13_32b48bf8514c):
    pass


MODELS = {
    "ppc-hv-hash": {
        "v5.12": (PpcHvV5_12, ""),
        "v5.13-rc1": (PpcHvV5_13rc1, ""),
        "v5.13": (PpcHvV5_13, ""),
    },
    "ppc-hv-radix": {
        "v5.12": (PpcHvRadixV5_12, ""),
        "v5.13-rc1": (PpcHvRadixV5_13rc1, ""),
        "v5.13": (PpcHvRadixV5_13, ""),
    },
}

# The history points fuzz/history.py walks: the commits each listed version brings to Book3S HV,
# and the state between them that a model names (after 32b48bf8514c, before da3bb206c9ce).
VERSION_COMMITS = {arch: {
    "v5.13-rc1": [("b1c5356e873c", "KVM: PPC: Convert to the gfn-based MMU notifier callbacks")],
    "v5.13": [("da3bb206c9ce", "KVM: PPC: Book3S HV: Fix kvm_unmap_gfn_range_hv() for Hash MMU")],
} for arch in ("ppc-hv-hash", "ppc-hv-radix")}
COMMIT_POINTS = {
    "ppc-hv-hash": [("v5.13-rc1", "32b48bf8514c",
                     "KVM: PPC: Book3S HV: Fix conversion to gfn-based MMU notifier callbacks",
                     PpcHvV5_13_32b48bf8514c)],
    "ppc-hv-radix": [("v5.13-rc1", "32b48bf8514c",
                      "KVM: PPC: Book3S HV: Fix conversion to gfn-based MMU notifier callbacks",
                      PpcHvRadixV5_13_32b48bf8514c)],
}

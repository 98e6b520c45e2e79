"""x86, TDP MMU (module parameter tdp_mmu=1): arch/x86/kvm/mmu/tdp_mmu.c and mmu.c, v5.12 and v5.13.

Every guest mapping lives in a TDP MMU paging structure hanging off a root.  A root belongs to
one address space (as_id 1 is SMM).  The legacy rmap pass of x86_shadow.py still runs first in
every notifier hook, but its rmaps are empty: the TDP MMU maps everything, so every rmap head
it visits is empty (we reuse that walk and its recorded calls unchanged).

What we model
* Pages are 4 KiB (page_shift 12); TDP paging has 4 levels; levels 1-3 can be leaves (4K, 2M,
  1G), levels 2-4 can point to a child table.  Each root keeps the set of its present non-leaf
  SPTEs (`tables`); leaves are the shared `Kvm.leaves`.  Empty tables are NOT freed when their
  leaves go (as in the kernel); they go only when the SPTE that points at them is zeroed.
* Roots: created at the first fault_begin of a vCPU task in an address space (the vCPU has
  loaded one), newest at the head of the root list, and shared by the vCPUs of that address
  space: each (vCPU task, as_id) holds one reference (a vCPU task faulting in two address
  spaces counts as one vCPU per mode, so no SMM switch unloads a root).  A memslot delete/move
  (kvm_mmu_zap_all_fast) raises KVM_REQ_MMU_RELOAD for every vCPU and zaps every root whole;
  v5.13 first marks them invalid, each with an extra reference that its deferred zap puts.  A
  vCPU's next fault_begin handles the reload (under mmu_lock): it puts its reference and takes
  a root again (v5.12 may take the emptied root back while another vCPU still holds it; v5.13
  skips invalid roots).  The last put unlinks the root, zaps what is left and frees it.  A
  walk holding no reference that yields in a root freed meanwhile (the v5.13 notifier unmap
  until 7533377215b6) is reported as a use-after-free.
* zap_gfn_range (the notifier unmap until v5.18's f47e5bbbc92f, then only the other zaps; see
  X86TdpZapLeafs_f47e5bbbc92f): a present leaf that touches [start, end) is zeroed whole (a partly covered
  huge leaf included); a present non-leaf SPTE is zeroed only when its span lies fully inside
  [start, end), which frees the child table and everything below it: each freed table costs one
  TLB flush in handle_removed_tdp_mmu_page (kvm_flush_remote_tlbs_with_address, a full flush
  without Hyper-V), even when the table held no leaf any more.
* Yields (v5.13 notifier zap with may_block; every zap that passes can_yield): the zap may
  yield just before zeroing an SPTE when at least one SPTE was already zeroed by this
  zap_gfn_range call since it started or last yielded (the kernel's forward-progress test,
  narrowed to points where something changed).  There it asks need_resched(), which is true
  unless a schedule says no (Kvm.need_resched): by default the most yields the walk can show.
  Each yield first flushes if a flush is pending (the zap's own `flush` argument), then drops
  and retakes mmu_lock.  Because the notifier wrappers OR the zap's result into the
  incoming flush (`flush |=`), a flush done at a yield is still reported upward; that redundant
  final flush (fixed in v5.16 by c7785d85b6c6, X86TdpUnmapFlush_c7785d85b6c6 from v5.17) needs
  an incoming flush of true, i.e. a second root of the same address space or a non-empty rmap
  pass, neither of which this model has.
* Aging assumes A/D bits enabled: v5.12 age_gfn_range also clears the Dirty bit, v5.13 does not.
* change_pte: only 4K present leaves are touched (a huge leaf is left alone).  The second write
  of the read-only case still reports the original SPTE as "old", so a pfn change makes
  __handle_changed_spte BUG() (a host crash): recorded as a warning, then the model goes on.

Not modelled: the NX-hugepage workaround (disallowed_hugepage_adjust; we assume it is off, so a
huge fault over an existing table replaces the table), A/D-disabled access tracking, MMIO SPTEs,
5-level paging, Hyper-V ranged flushes (off, as in x86_shadow), roots split by role bits other
than SMM, parallel faults under the read lock, the RCU-deferred freeing of tables, and a fault in
flight across a fast zap installing into its invalid root (before a955cad84cda, v5.16): it
reloads at its commit instead, because the roots of an address space share `Kvm.leaves`.
"""
from __future__ import annotations

from .kvm import PendingFault
from .kvm_main_v5_13 import KvmGfnRange
from .machine import KVM_MEM_READONLY, LEVEL_4K, HostPte, Leaf, pages_per_level
from .tdp_iter import ROOT_LEVEL, Root, TdpIter
from .x86_shadow import X86ShadowMmu, X86ShadowSyncPageFlushes_6bc6db000295, X86ShadowV5_12, X86ShadowV5_13

MAX_GFN = 1 << (52 - 12)          # 1 << (shadow_phys_bits - PAGE_SHIFT) on a 52-bit host: whole root


class X86TdpMmu(TdpIter, X86ShadowMmu):
    """What both versions share: roots, the TDP paging structure, zap/age/set-spte bodies."""
    arch = "x86-tdp"

    def __init__(self) -> None:
        # v5.12 arch/x86/kvm/mmu/tdp_mmu.c kvm_mmu_init_tdp_mmu: empty root list, TDP MMU on
        super().__init__()
        self.roots: list[Root] = []          # kvm->arch.tdp_mmu_roots, head first
        self._next_root_id = 0
        # (vCPU task, as_id) -> the root it runs on, holding one reference (vcpu->arch.mmu->root_hpa)
        self.vcpu_roots: dict[tuple[str, int], Root] = {}
        # the (vCPU task, as_id) pairs with KVM_REQ_MMU_RELOAD raised and not yet handled
        self.reload_pending: set[tuple[str, int]] = set()

    # ----- the legacy rmap pass: always runs, finds every head empty --------------------------
    def rmap_head(self, slot, level, index):
        # v5.12 arch/x86/kvm/mmu/mmu.c __gfn_to_rmap: with the TDP MMU on, no SPTE is ever
        # chained on a legacy rmap, so each head the walk visits is empty
        return None

    def sync_page(self, as_id: int, gfn: int) -> None:
        # v5.12 arch/x86/kvm/mmu/paging_tmpl.h FNAME(sync_page): shadow paging only; the TDP MMU
        # has no unsync pages, so tlbs_dirty never moves
        self.obs.note = "not modelled on this arch"

    # ----- roots -------------------------------------------------------------------------------
    def roots_of(self, as_id: int) -> list[Root]:
        # v5.13 arch/x86/kvm/mmu/tdp_mmu.c for_each_tdp_mmu_root: list order, as_id filter only
        return [r for r in self.roots if r.as_id == as_id]

    def current_vcpu(self) -> str:
        """The vCPU task that runs the fault ("main" when every event runs atomically)."""
        return self.sched.current.name if self.sched is not None else "main"

    def get_vcpu_root(self, as_id: int, locked: bool = True) -> Root:
        # v5.12 arch/x86/kvm/x86.c vcpu_enter_guest: KVM_REQ_MMU_RELOAD -> kvm_mmu_unload (put
        # the vCPU's root, mmu.c mmu_free_root_page, under the write lock), then kvm_mmu_reload ->
        # kvm_mmu_load takes a root again; a vCPU with a root it may keep runs on it
        # (the first load of a (vCPU, as_id) takes no lock here: it only puts a new root at the
        # head of the list, which no walk in progress reaches, so only its scheduling point
        # would differ; a reload takes it, because its put can free a root another task walks)
        key = (self.current_vcpu(), as_id)
        root = self.vcpu_roots.get(key)
        if root is not None and key not in self.reload_pending:
            return root
        reload = key in self.reload_pending
        if reload and not locked:
            self.mmu_lock()
        if reload:
            self.reload_pending.discard(key)
            self.put_root(self.vcpu_roots.pop(key))
        root = self.vcpu_roots[key] = self.alloc_vcpu_root(as_id)
        if reload and not locked:
            self.mmu_unlock()
        return root

    def alloc_vcpu_root(self, as_id: int) -> Root:
        # v5.12 arch/x86/kvm/mmu/tdp_mmu.c get_tdp_mmu_vcpu_root: the first listed root of the
        # role takes one more reference (a root emptied by a fast zap included: v5.12 never
        # marks a TDP root invalid); else a new root with one reference, at the head of the list
        for r in self.roots:
            if r.as_id == as_id and self.root_reusable(r):
                r.refs += 1
                return r
        root = Root(self._next_root_id, as_id, refs=1)
        self._next_root_id += 1
        self.roots.insert(0, root)
        return root

    def root_reusable(self, root: Root) -> bool:
        # v5.13 arch/x86/kvm/mmu/tdp_mmu.c kvm_tdp_mmu_get_vcpu_root_hpa: role.word includes
        # role.invalid, and kvm_tdp_mmu_get_root refuses an invalid root (v5.12 has neither)
        return not root.invalid

    def put_root(self, root: Root) -> None:
        # v5.12 arch/x86/kvm/mmu/mmu.c mmu_free_root_page -> kvm_mmu_put_root, and at zero
        # tdp_mmu.c kvm_tdp_mmu_free_root; v5.13 tdp_mmu.c kvm_tdp_mmu_put_root
        root.refs -= 1
        if root.refs == 0:
            self.free_root(root)

    def free_root(self, root: Root) -> None:
        # v5.12 arch/x86/kvm/mmu/tdp_mmu.c kvm_tdp_mmu_free_root: unlink, zap whole without
        # yielding, no flush of its own, free.  v5.13 kvm_tdp_mmu_put_root: list_del_rcu, the
        # same zap, call_rcu.  The model frees at once: no task of a model holds rcu_read_lock
        # across a scheduling point, and a zap that yielded dropped it, so the grace period
        # may end before that zap resumes.
        self.roots.remove(root)
        for level, gfn in sorted(root.tables, key=lambda t: (-t[0], t[1])):
            if (level, gfn) in root.tables:
                self.handle_removed_table(root, level, gfn)
        root.freed = True

    def yield_safe_roots(self, as_id: int | None, valid_only: bool):
        """The roots a yield-safe walk visits, in list order, each holding a reference while
        the caller works on it (as_id None: every address space)."""
        # v5.12 arch/x86/kvm/mmu/tdp_mmu.c for_each_tdp_mmu_root_yield_safe (tdp_mmu_next_root_valid
        # takes the reference, tdp_mmu_next_root puts it, which may free the root); v5.13
        # tdp_mmu_next_root: kvm_tdp_mmu_get_root skips invalid roots and roots at zero
        for root in list(self.roots):
            if root.freed or not root.refs or (as_id is not None and root.as_id != as_id):
                continue
            if valid_only and root.invalid:
                continue
            root.refs += 1
            try:
                yield root
            finally:
                self.put_root(root)

    def unmap_roots(self, as_id: int):
        """The roots the notifier unmap walks."""
        # v5.13 arch/x86/kvm/mmu/tdp_mmu.c kvm_tdp_mmu_unmap_gfn_range: for_each_tdp_mmu_root, an
        # RCU list walk under mmu_lock: list order, invalid roots too, no reference held, a root
        # unlinked meanwhile is not reached from the one before it
        for root in self.roots_of(as_id):
            if not root.freed:
                yield root

    def raise_reload(self) -> None:
        # v5.12 virt/kvm/kvm_main.c kvm_reload_remote_mmus: KVM_REQ_MMU_RELOAD to every vCPU
        self.reload_pending.update(self.vcpu_roots)

    # ----- the paging structure: reads in impls/tdp_iter.py (TdpIter), changes here --------
    def handle_removed_table(self, root: Root, level: int, gfn: int, shared: bool = False) -> None:
        # v5.12 arch/x86/kvm/mmu/tdp_mmu.c handle_removed_tdp_mmu_page: the table under the
        # level-`level` SPTE at gfn is unlinked; each present child goes through the change
        # bookkeeping (child tables recursively), then one flush "with address" for the table
        root.tables.discard((level, gfn))
        child = level - 1
        n = self.span(child)
        for g in [x for x in self.present_at(root, child) if gfn <= x < gfn + self.span(level)]:
            kind = self.spte_kind(root, child, g)
            if kind == "leaf":
                self.zap_leaf(self.leaves[(root.as_id, g, child)])
            elif kind == "table":
                self.handle_removed_table(root, child, g, shared)
        # the kernel passes the gfn of the last child slot, not the table base (shifted range)
        last = gfn + self.span(level) - n
        self.flush_with_address(last, self.span(level), "handle_removed_tdp_mmu_page")

    def zero_spte(self, root: Root, level: int, gfn: int, shared: bool = False) -> None:
        # v5.12 arch/x86/kvm/mmu/tdp_mmu.c tdp_mmu_set_spte(iter, 0) -> __handle_changed_spte;
        # shared (v5.13 read-lock zap): tdp_mmu_zap_spte_atomic, which also flushes the SPTE's range
        if self.spte_kind(root, level, gfn) == "leaf":
            self.zap_leaf(self.leaves[(root.as_id, gfn, level)])
        else:
            self.handle_removed_table(root, level, gfn, shared)
        if shared:
            self.flush_with_address(gfn, self.span(level), "tdp_mmu_zap_spte_atomic")

    def iter_cond_resched(self, flush: bool) -> None:
        # v5.12 arch/x86/kvm/mmu/tdp_mmu.c tdp_mmu_iter_cond_resched, once need_resched() said
        # yes: flush what is pending, drop and retake mmu_lock, restart the walk from the root
        if flush:
            self.kvm_flush_remote_tlbs("tdp_mmu_iter_cond_resched")
        self.resched_lock()

    def zap_gfn_range(self, root: Root, start: int, end: int, can_yield: bool, flush: bool,
                      shared: bool = False) -> bool:
        # v5.12 arch/x86/kvm/mmu/tdp_mmu.c zap_gfn_range (v5.13 adds `shared`): zero present
        # leaves touching [start, end) and non-leaves wholly inside it; yield per the rule above
        def keeps(level: int, gfn: int, kind: str) -> bool:
            # a table that sticks out of the range: zap below it instead
            return kind == "table" and (gfn < start or gfn + self.span(level) > end)
        return self.zap_walk(root, start, end, can_yield, flush, shared, keeps)

    def zap_walk(self, root: Root, start: int, end: int, can_yield: bool, flush: bool,
                 shared: bool, keeps) -> bool:
        """The loop zap_gfn_range and tdp_mmu_zap_leafs share: walk the present SPTEs of
        [start, end), zero each one `keeps(level, gfn, kind)` does not keep (a zeroed table
        takes its subtree with it), yielding first per the module's rule; returns the flush
        still owed (a shared zap flushes each SPTE itself, tdp_mmu_zap_spte_atomic)."""
        # v5.12 arch/x86/kvm/mmu/tdp_mmu.c zap_gfn_range loop body; v6.8 tdp_mmu_zap_leafs
        zeroed_since_yield = 0
        walk = self.walk_ptes(root, start, end)
        while (spte := next(walk, None)) is not None:
            level, gfn = spte
            if keeps(level, gfn, self.spte_kind(root, level, gfn)):
                continue
            if can_yield and zeroed_since_yield and self.need_resched():
                self.iter_cond_resched(flush)
                flush = False
                zeroed_since_yield = 0
                if root.freed:
                    # a walk holding no reference: while mmu_lock was dropped another task
                    # put the root's last reference, and the restart reads the freed root->spt.
                    # What the kernel does next is undefined; the model leaves this root
                    self.warn("use-after-free: tdp_iter_restart reads a TDP MMU root freed "
                              "while the zap yielded (no reference held across the yield)")
                    return flush
                # tdp_iter_next after a yield: tdp_iter_restart walks again from the root down
                # to this gfn, reading every SPTE anew (other tasks ran while mmu_lock was
                # dropped: this one may be gone, others may have appeared), and goes on from there
                walk = self.walk_ptes(root, gfn, end)
                continue
            self.zero_spte(root, level, gfn, shared)
            zeroed_since_yield += 1
            if not shared:
                flush = True
        return flush

    def present_leaves(self, root: Root, start: int, end: int) -> list[Leaf]:
        # v5.12 arch/x86/kvm/mmu/tdp_mmu.c tdp_root_for_each_leaf_pte: present leaves only
        return [self.leaves[(root.as_id, g, lv)] for lv, g in self.walk_ptes(root, start, end)
                if self.spte_kind(root, lv, g) == "leaf"]

    def age_one(self, leaf: Leaf) -> None:
        # v5.13 arch/x86/kvm/mmu/tdp_mmu.c age_gfn_range: clear Accessed (A/D bits on)
        self.age_leaf(leaf)

    def set_4k_spte(self, root: Root, leaf: Leaf, pte: HostPte, intermediate_flush: bool) -> None:
        # v5.12 arch/x86/kvm/mmu/tdp_mmu.c set_tdp_spte body / v5.13 set_spte_gfn: zero the 4K
        # SPTE; then, for a read-only host pte, write one with the new pfn (read-only,
        # access-tracked).  The second write still passes the original SPTE as old_spte.
        old_pfn = leaf.pfn
        if pte.writable:
            self.zap_leaf(leaf)
        if intermediate_flush:
            self.flush_with_address(leaf.gfn, 1, "set_tdp_spte")
        if not pte.writable:
            if old_pfn != pte.pfn:
                self.warn("BUG() in __handle_changed_spte: present leaf SPTE replaced by a present "
                          "leaf with a different pfn")
            self.change_leaf(leaf, pte.pfn, writable=False, young=False)

    # ----- fault path --------------------------------------------------------------------------
    def fault_begin(self, fault: int, as_id: int, gfn: int, write: bool) -> None:
        # v5.12 arch/x86/kvm/mmu/mmu.c kvm_mmu_load -> kvm_tdp_mmu_get_vcpu_root_hpa: the
        # faulting vCPU runs on a root of its address space
        if 0 <= as_id < self.address_space_num and fault not in self.faults:
            self.get_vcpu_root(as_id, locked=False)
        super().fault_begin(fault, as_id, gfn, write)

    def map_fault(self, f: PendingFault) -> None:
        # v5.12 arch/x86/kvm/mmu/tdp_mmu.c kvm_tdp_mmu_map: build missing tables down to the
        # target level (kvm_mmu_hugepage_adjust, same rules as legacy), replace a huge leaf above
        # it, and install the leaf over whatever is at the target level (a table there is freed)
        root = self.get_vcpu_root(f.as_id)
        level = self.fault_level(f)
        for lv in range(ROOT_LEVEL, level, -1):
            g = f.gfn - f.gfn % self.span(lv)
            if self.spte_kind(root, lv, g) == "leaf":
                # tdp_mmu_zap_spte_atomic: freeze, flush its range, then zero
                self.zap_leaf(self.leaves[(root.as_id, g, lv)])
                self.flush_with_address(g, self.span(lv), "tdp_mmu_zap_spte_atomic")
            if self.spte_kind(root, lv, g) is None:
                root.tables.add((lv, g))
        n = pages_per_level(level, self.page_shift)
        base = f.gfn - f.gfn % n
        if self.spte_kind(root, level, base) == "table":
            self.handle_removed_table(root, level, base, shared=True)
        writable = f.pte.writable and not (f.slot.flags & KVM_MEM_READONLY)
        self.install_leaf(Leaf(f.as_id, base, level, f.pte.pfn - (f.gfn - base), n,
                               writable=writable, young=True, dirty=f.write and writable))

    def snapshot_extra(self, extra: dict) -> None:
        # model bookkeeping only (no kernel counterpart): the roots, for reports
        stale = {id(r) for k, r in self.vcpu_roots.items() if k in self.reload_pending}
        extra["tdp_roots"] = [(r.id, r.as_id, r.invalid, id(r) in stale, len(r.tables)) for r in self.roots]

    # ----- release: kvm_mmu_zap_all -------------------------------------------------------------
    def kvm_arch_flush_shadow_all(self) -> None:
        # v5.12 arch/x86/kvm/x86.c kvm_arch_flush_shadow_all -> mmu.c kvm_mmu_zap_all: the
        # legacy list is empty (commit of an empty list: no flush), then kvm_tdp_mmu_zap_all
        self.mmu_lock()
        self.kvm_tdp_mmu_zap_all()
        self.mmu_unlock()

    def kvm_tdp_mmu_zap_all(self) -> None:
        # v5.12 / v5.13 arch/x86/kvm/mmu/tdp_mmu.c kvm_tdp_mmu_zap_all: per version, below
        raise NotImplementedError


class X86TdpV5_12(X86TdpMmu, X86ShadowV5_12):
    """x86 TDP MMU with the v5.12 hva hooks: root-major walk, as_id from each root."""

    def kvm_tdp_mmu_handle_hva_range(self, start: int, end: int, handler, hook: str, data=None) -> int:
        # v5.12 arch/x86/kvm/mmu/tdp_mmu.c kvm_tdp_mmu_handle_hva_range: every listed root, the
        # memslots of that root's address space, clamped, gfn end rounded up; results ORed
        page = 1 << self.page_shift
        ret = 0
        for root in list(self.roots):
            for slot in self.memslots.in_as_hitting(root.as_id, start, end):
                hva_start = max(start, slot.hva_start)
                hva_end = min(end, slot.hva_end)
                if hva_start >= hva_end:
                    continue
                gfn_start = slot.hva_to_gfn(hva_start)
                gfn_end = slot.hva_to_gfn(hva_end + page - 1)
                ret |= handler(slot, root, gfn_start, gfn_end, data, hook)
        return ret

    def zap_gfn_range_hva_wrapper(self, slot, root, start, end, data, hook) -> int:
        # v5.12 arch/x86/kvm/mmu/tdp_mmu.c zap_gfn_range_hva_wrapper: never yields, flush=false
        self.record_call(hook, slot, start, end, f"root{root.id}")
        return int(self.zap_gfn_range(root, start, end, False, False))

    def age_gfn_range(self, slot, root, start, end, data, hook) -> int:
        # v5.12 arch/x86/kvm/mmu/tdp_mmu.c age_gfn_range: accessed present leaves lose A and
        # also their Dirty bit; no flush
        self.record_call(hook, slot, start, end, f"root{root.id}")
        young = 0
        for leaf in self.present_leaves(root, start, end):
            if not leaf.young:
                continue
            self.age_one(leaf)
            leaf.dirty = False
            young = 1
        return young

    def test_age_gfn(self, slot, root, gfn, unused, data, hook) -> int:
        # v5.12 arch/x86/kvm/mmu/tdp_mmu.c test_age_gfn: only [gfn, gfn+1), first accessed leaf
        self.record_call(hook, slot, gfn, gfn + 1, f"root{root.id}")
        return int(any(x.young for x in self.present_leaves(root, gfn, gfn + 1)))

    def set_tdp_spte(self, slot, root, gfn, unused, pte: HostPte, hook) -> int:
        # v5.12 arch/x86/kvm/mmu/tdp_mmu.c set_tdp_spte: only [gfn, gfn+1); only a present 4K
        # SPTE is changed, with a flush right after zeroing it and another after the loop;
        # returns 0 whatever it did
        self.record_call(hook, slot, gfn, gfn + 1, f"root{root.id}")
        if pte.level != LEVEL_4K:
            self.warn("WARN_ON(pte_huge(*ptep)) in set_tdp_spte")
        need_flush = False
        leaf = self.leaves.get((root.as_id, gfn, LEVEL_4K))
        if leaf is not None:
            self.set_4k_spte(root, leaf, pte, intermediate_flush=True)
            need_flush = True
        if need_flush:
            self.flush_with_address(gfn, 1, "set_tdp_spte")
        return 0

    def kvm_unmap_hva_range(self, start: int, end: int, flags: int) -> int:
        # v5.12 arch/x86/kvm/mmu/mmu.c kvm_unmap_hva_range: rmap pass, then OR the TDP zap
        r = super().kvm_unmap_hva_range(start, end, flags)
        r |= self.kvm_tdp_mmu_handle_hva_range(start, end, self.zap_gfn_range_hva_wrapper,
                                               "zap_gfn_range")
        return r

    def kvm_set_spte_hva(self, hva: int, pte: HostPte) -> int:
        # v5.12 arch/x86/kvm/mmu/mmu.c kvm_set_spte_hva: rmap pass, then OR the TDP result (0)
        r = super().kvm_set_spte_hva(hva, pte)
        r |= self.kvm_tdp_mmu_handle_hva_range(hva, hva + 1, self.set_tdp_spte, "set_tdp_spte", pte)
        return r

    def kvm_age_hva(self, start: int, end: int) -> int:
        # v5.12 arch/x86/kvm/mmu/mmu.c kvm_age_hva: rmap pass, then OR kvm_tdp_mmu_age_hva_range
        young = super().kvm_age_hva(start, end)
        young |= self.kvm_tdp_mmu_handle_hva_range(start, end, self.age_gfn_range, "age_gfn_range")
        return young

    def kvm_test_age_hva(self, hva: int) -> int:
        # v5.12 arch/x86/kvm/mmu/mmu.c kvm_test_age_hva: rmap pass, then OR kvm_tdp_mmu_test_age_hva
        young = super().kvm_test_age_hva(hva)
        young |= self.kvm_tdp_mmu_handle_hva_range(hva, hva + 1, self.test_age_gfn, "test_age_gfn")
        return young

    def kvm_tdp_mmu_zap_all(self) -> None:
        # v5.12 arch/x86/kvm/mmu/tdp_mmu.c kvm_tdp_mmu_zap_all -> __kvm_tdp_mmu_zap_gfn_range:
        # every root in list order, may yield, flush = (not |=) the last result, then one flush
        # (for_each_tdp_mmu_root_yield_safe: a reference on each root across its zap)
        flush = False
        for root in self.yield_safe_roots(None, valid_only=False):
            flush = self.zap_gfn_range(root, 0, MAX_GFN, True, flush)
        if flush:
            self.kvm_flush_remote_tlbs("kvm_tdp_mmu_zap_all")

    def kvm_arch_flush_shadow_memslot(self, slot) -> None:
        # v5.12 arch/x86/kvm/mmu/mmu.c kvm_mmu_invalidate_zap_pages_in_memslot ->
        # kvm_mmu_zap_all_fast: reload every vCPU, zap obsolete legacy pages (none), then zap
        # every TDP root whole, whatever slot went away; the roots stay valid and listed
        self.raise_reload()
        self.kvm_tdp_mmu_zap_all()


class X86TdpV5_13(X86TdpMmu, X86ShadowV5_13):
    """x86 TDP MMU with the v5.13 gfn handlers (3039bcc74498, e1eed5847b09)."""

    def kvm_tdp_mmu_unmap_gfn_range(self, range: KvmGfnRange, flush: bool) -> bool:
        # v5.13 arch/x86/kvm/mmu/tdp_mmu.c kvm_tdp_mmu_unmap_gfn_range: the roots of the slot's
        # as_id (invalid ones too, no reference), can_yield = may_block, flush |= result
        for root in self.unmap_roots(range.slot.as_id):
            self.record_call("zap_gfn_range", range.slot, range.start, range.end,
                             f"root{root.id}" + (" invalid" if root.invalid else ""))
            flush = self.unmap_flush(flush, self.zap_gfn_range(root, range.start, range.end,
                                                              range.may_block, flush, False))
        return flush

    def unmap_flush(self, pending: bool, zapped: bool) -> bool:
        # v5.13 arch/x86/kvm/mmu/mmu.c kvm_unmap_gfn_range and tdp_mmu.c
        # kvm_tdp_mmu_unmap_gfn_range: the TDP zap's result is ORed into the pending flush
        return pending | zapped

    def kvm_tdp_mmu_handle_gfn(self, range: KvmGfnRange, handler, hook: str) -> bool:
        # v5.13 arch/x86/kvm/mmu/tdp_mmu.c kvm_tdp_mmu_handle_gfn: present leaves of [start, end)
        # in every root of the slot's as_id; results ORed; never yields
        ret = False
        for root in self.roots_of(range.slot.as_id):
            self.record_call(hook, range.slot, range.start, range.end, f"root{root.id}")
            for leaf in self.present_leaves(root, range.start, range.end):
                ret |= bool(handler(root, leaf, range))
        return ret

    def age_gfn_range(self, root: Root, leaf: Leaf, range: KvmGfnRange) -> bool:
        # v5.13 arch/x86/kvm/mmu/tdp_mmu.c age_gfn_range: Dirty bit left alone
        if not leaf.young:
            return False
        self.age_one(leaf)
        return True

    def test_age_gfn(self, root: Root, leaf: Leaf, range: KvmGfnRange) -> bool:
        # v5.13 arch/x86/kvm/mmu/tdp_mmu.c test_age_gfn
        return leaf.young

    def set_spte_gfn(self, root: Root, leaf: Leaf, range: KvmGfnRange) -> bool:
        # v5.13 arch/x86/kvm/mmu/tdp_mmu.c set_spte_gfn: WARN per visited leaf; 4K only
        if range.pte.level != LEVEL_4K or range.start + 1 != range.end:
            self.warn("WARN_ON(pte_huge(range->pte) || range->start + 1 != range->end) in set_spte_gfn")
        if leaf.level != LEVEL_4K:
            return False
        self.set_4k_spte(root, leaf, range.pte, intermediate_flush=False)
        return True

    def kvm_unmap_gfn_range(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/x86/kvm/mmu/mmu.c kvm_unmap_gfn_range: rmap result is the TDP zap's flush
        flush = super().kvm_unmap_gfn_range(range)
        return self.unmap_flush(flush, self.kvm_tdp_mmu_unmap_gfn_range(range, flush))

    def kvm_set_spte_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/x86/kvm/mmu/mmu.c kvm_set_spte_gfn + tdp_mmu.c kvm_tdp_mmu_set_spte_gfn:
        # one 1-page flush at range->start if a leaf changed, then false
        flush = super().kvm_set_spte_gfn(range)
        if self.kvm_tdp_mmu_handle_gfn(range, self.set_spte_gfn, "set_spte_gfn"):
            self.flush_with_address(range.start, 1, "kvm_tdp_mmu_set_spte_gfn")
        return flush

    def kvm_age_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/x86/kvm/mmu/mmu.c kvm_age_gfn: rmap pass OR kvm_tdp_mmu_age_gfn_range
        young = super().kvm_age_gfn(range)
        young |= self.kvm_tdp_mmu_handle_gfn(range, self.age_gfn_range, "age_gfn_range")
        return young

    def kvm_test_age_gfn(self, range: KvmGfnRange) -> bool:
        # v5.13 arch/x86/kvm/mmu/mmu.c kvm_test_age_gfn: rmap pass OR kvm_tdp_mmu_test_age_gfn
        young = super().kvm_test_age_gfn(range)
        young |= self.kvm_tdp_mmu_handle_gfn(range, self.test_age_gfn, "test_age_gfn")
        return young

    def kvm_tdp_mmu_zap_all(self) -> None:
        # v5.13 arch/x86/kvm/mmu/tdp_mmu.c kvm_tdp_mmu_zap_all: address space by address space,
        # valid roots only (the yield-safe iterator skips invalid ones), may yield, one flush
        flush = False
        for as_id in range(self.address_space_num):
            for root in self.yield_safe_roots(as_id, valid_only=True):
                flush = self.zap_gfn_range(root, 0, MAX_GFN, True, flush, False)
        if flush:
            self.kvm_flush_remote_tlbs("kvm_tdp_mmu_zap_all")

    def kvm_arch_flush_shadow_memslot(self, slot) -> None:
        # v5.13 arch/x86/kvm/mmu/mmu.c kvm_mmu_zap_all_fast (4c6654bd160d): mark every root
        # invalid and reload the vCPUs under the write lock, then (read lock) tear every invalid
        # root down with the shared zap: one flush per zeroed SPTE, none at the end
        # kvm_tdp_mmu_invalidate_all_roots: every live root (an invalid one again) takes an
        # extra reference and is marked invalid; kvm_tdp_mmu_zap_invalidated_roots zaps each
        # invalid live root in list order and puts that reference, which may free it.  The
        # model keeps the caller's exclusive mmu_lock across both halves (no read side, see the
        # module doc), so other tasks run only where the deferred zap yields
        for root in self.roots:
            if root.refs:
                root.refs += 1
                root.invalid = True
        self.raise_reload()
        flush = False
        for root in list(self.roots):
            if root.freed or not root.invalid or not root.refs:
                continue
            flush = self.zap_gfn_range(root, 0, MAX_GFN, True, flush, True)
            self.put_root(root)
        if flush:
            self.kvm_flush_remote_tlbs("kvm_tdp_mmu_zap_invalidated_roots")


class X86TdpAgingLockless_v6_19(X86TdpMmu):
    """x86's Kconfig selects KVM_ELIDE_TLB_FLUSH_IF_YOUNG and KVM_MMU_LOCKLESS_AGING (see
    x86_shadow.py X86AgingConfig_v6_19).  With the TDP MMU on, kvm_age_gfn / kvm_test_age_gfn
    walk the TDP roots without mmu_lock and take it for the rmap pass only when shadow-MMU SPTEs
    exist (kvm_has_shadow_mmu_sptes: indirect_shadow_pages, i.e. nested guests), which this
    model never has, so that pass is skipped.  Applied from v6.19, where we read it."""
    kvm_elide_tlb_flush_if_young = True
    kvm_mmu_lockless_aging = True

    def kvm_age_gfn(self, range: KvmGfnRange) -> bool:
        # v6.19 arch/x86/kvm/mmu/mmu.c kvm_age_gfn: lockless TDP pass; no shadow-MMU SPTEs
        return self.kvm_tdp_mmu_handle_gfn(range, self.age_gfn_range, "age_gfn_range")

    def kvm_test_age_gfn(self, range: KvmGfnRange) -> bool:
        # v6.19 arch/x86/kvm/mmu/mmu.c kvm_test_age_gfn: lockless TDP pass; no shadow-MMU SPTEs
        return self.kvm_tdp_mmu_handle_gfn(range, self.test_age_gfn, "test_age_gfn")


class X86TdpUnmapFlush_c7785d85b6c6(X86TdpMmu):
    """c7785d85b6c6 (v5.16, Hou Wenlong, "KVM: x86/mmu: Skip tlb flush if it has been done in
    zap_gfn_range()"): the TDP unmap's result replaces the pending flush instead of being ORed
    into it, in kvm_unmap_gfn_range and per root, since a zap that yielded has flushed already.
    Applied from v5.17, the first modelled release that has it.  The two differ only when a
    flush is already pending as the zap starts and the zap yields (flushing it) and then zeroes
    nothing more.  The module doc says why this model's incoming flush is always false (no
    rmap pass result, one root per address space), so the layer changes no observation here;
    it keeps the later versions' code saying what the kernel's does."""

    def unmap_flush(self, pending: bool, zapped: bool) -> bool:
        # v5.16 arch/x86/kvm/mmu/mmu.c kvm_unmap_gfn_range, tdp_mmu.c kvm_tdp_mmu_unmap_gfn_range:
        # flush = the zap's result (it took the pending flush in and flushed it if it yielded)
        return zapped


class X86TdpUnmapRootRef_7533377215b6(X86TdpMmu):
    """7533377215b6 (v5.16, Sean Christopherson, "KVM: x86/mmu: Use yield-safe TDP MMU root
    iter in MMU notifier unmapping", Cc stable, Fixes: e1eed5847b09): the notifier unmap walks
    the roots with the yield-safe iterator, so it holds a reference on the root it zaps across
    every yield and puts it afterwards (the put may be the last one, and free the root).
    Before it, from e1eed5847b09 (v5.13) on, the unmap held none: a memslot delete running
    while the zap yielded could invalidate the root, zap it and put its own reference, a vCPU's
    reload could put the last one, and the zap resumed in freed memory (reported by zap_walk).
    In v5.16 that iterator skipped invalid roots, so the unmap missed them; d62007edf01f
    ("KVM: x86/mmu: Zap _all_ roots when unmapping gfn range in TDP MMU", with 04dc4e6ce274
    and 83b83a02073e) walks invalid roots too.  Applied from v5.17, the first modelled release,
    which has all of them: every live root of the address space, each with a reference."""

    def unmap_roots(self, as_id: int):
        # v5.17 arch/x86/kvm/mmu/tdp_mmu.c __kvm_tdp_mmu_zap_gfn_range:
        # for_each_tdp_mmu_root_yield_safe (only_valid false): a reference per root
        yield from self.yield_safe_roots(as_id, valid_only=False)


class X86TdpZapLeafs_f47e5bbbc92f(X86TdpMmu):
    """f47e5bbbc92f (v5.18, Sean Christopherson, "KVM: x86/mmu: Zap only TDP MMU leafs in zap
    range and mmu_notifier unmap"; it re-applies cf3e26427c08 with a flush fix): the notifier
    unmap calls tdp_mmu_zap_leafs, which zeroes present leaf SPTEs only.  A table wholly inside
    the range is walked through and left in place, so no handle_removed_tdp_mmu_page runs and
    none of its per-table flushes; a leaf is zeroed whole when it touches the range (a partly
    covered huge leaf included), as before.  The result replaces the pending flush (as with
    c7785d85b6c6).  Yields follow the module's rule.  Applied from v6.8, the first modelled
    release after v5.18; every later tdp_mmu.c read has this shape."""

    def kvm_tdp_mmu_unmap_gfn_range(self, range: KvmGfnRange, flush: bool) -> bool:
        # v6.8 arch/x86/kvm/mmu/tdp_mmu.c kvm_tdp_mmu_unmap_gfn_range: every root of the slot's
        # as_id, invalid ones too; flush = tdp_mmu_zap_leafs(..., may_block, flush)
        for root in self.unmap_roots(range.slot.as_id):
            self.record_call("tdp_mmu_zap_leafs", range.slot, range.start, range.end,
                             f"root{root.id}" + (" invalid" if root.invalid else ""))
            flush = self.tdp_mmu_zap_leafs(root, range.start, range.end, range.may_block, flush)
        return flush

    def tdp_mmu_zap_leafs(self, root: Root, start: int, end: int, can_yield: bool, flush: bool) -> bool:
        # v6.8 arch/x86/kvm/mmu/tdp_mmu.c tdp_mmu_zap_leafs: walk down to 4K over [start, end),
        # skip what is not a present leaf, zero the leaf (flush = true); may yield first
        return self.zap_walk(root, start, end, can_yield, flush, False,
                             lambda level, gfn, kind: kind != "leaf")


# commits after v5.13 that change what this arch's handlers do, from the release that has them
LATER_OVERRIDES = [("v5.15", X86ShadowSyncPageFlushes_6bc6db000295), ("v5.17", X86TdpUnmapFlush_c7785d85b6c6),
                   ("v5.17", X86TdpUnmapRootRef_7533377215b6),
                   ("v5.18", X86TdpZapLeafs_f47e5bbbc92f), ("v6.19", X86TdpAgingLockless_v6_19)]

MODELS = {"x86-tdp": {
    "v5.12": (X86TdpV5_12, ""),
    "v5.13-rc1": (X86TdpV5_13, "no change to the TDP MMU notifier handlers, mmu.c gfn handlers or "
                               "kvm_main.c walker found between v5.13-rc1 and v5.13 (unverified: "
                               "tdp_mmu.c at the v5.13 tag was not read)"),
    "v5.13": (X86TdpV5_13, ""),
}}

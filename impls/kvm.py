"""struct kvm as every model sees it: memslots, host page table, secondary MMU, TLB,
notifier bookkeeping, the two-step guest fault path and guest accesses.

Version- and arch-independent parts only.  The generic MMU-notifier layer of each kernel
version lives in kvm_main_v5_12.py / kvm_main_v5_13.py, the arch parts in one file per
architecture.  Models never import fuzz/.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .machine import (LEVEL_4K, PAGE_SHIFT, HostPageTable, HostPte, KVM_MEM_LOG_DIRTY_PAGES,
                      KVM_MEMSLOT_INVALID, KVM_MEM_READONLY, Leaf, Memslot, MemslotUpdateError,
                      Memslots, Tlb, pages_per_level)
from .observation import Flush, HandlerCall, Observation
from .tasks import Mutex, RwSem, Scheduler, Srcu

MMU_NOTIFIER_RANGE_BLOCKABLE = 1 << 0   # include/linux/mmu_notifier.h (v5.12)


class ModelError(Exception):
    """A trace asked the model for something the kernel can never see (e.g. a commit of a
    fault that never began).  Reported as an input error, identical for every model."""


@dataclass
class PendingFault:
    """A guest fault between fault_begin and fault_commit."""
    as_id: int
    gfn: int
    write: bool
    mmu_seq: int
    slot: Memslot | None
    hva: int | None
    pte: HostPte | None


class WouldSleep(Exception):
    """An atomic (one-task) run reached a wait that only another task could end."""


@dataclass(slots=True)
class State:
    """Normalized copy of what the oracles need from a model at one instant.  (Slots: two are
    made per event.)"""
    slots: list[Memslot]
    leaves: dict[tuple[int, int, int], Leaf]
    tlb: frozenset
    address_space_num: int
    mmu_notifier_count: int
    mmu_notifier_seq: int
    tlbs_dirty: int
    page_shift: int = PAGE_SHIFT
    extra: dict = field(default_factory=dict)


class Kvm:
    """Base of every model.  Subclasses set the arch facts below and provide the notifier
    entry points (a kvm_main layer) and the arch hooks they call."""

    arch = "abstract"
    version = "abstract"
    address_space_num = 1            # KVM_ADDRESS_SPACE_NUM
    user_mem_slots = 32              # KVM_USER_MEM_SLOTS
    readonly_mem = True              # __KVM_HAVE_READONLY_MEM
    page_shift = PAGE_SHIFT
    max_level = LEVEL_4K             # largest mapping the fault path may install
    uses_retry_hva = False           # x86 checks mmu_notifier_retry_hva, others mmu_notifier_retry
    needs_tasks = False              # a generic layer whose behaviour needs real blocking (series-v1, v5.15+)
    sched: Scheduler | None = None   # set by the runner in task mode; None: every event runs atomically

    def __init__(self) -> None:
        self.memslots = Memslots(self.address_space_num, self.user_mem_slots,
                                 self.readonly_mem, self.page_shift)
        self.host = HostPageTable(self.page_shift)
        self.leaves: dict[tuple[int, int, int], Leaf] = {}
        self.tlb = Tlb()
        self.mmu_lock_held = False
        self.mmu_notifier_seq = 0
        self.mmu_notifier_count = 0
        self.mmu_notifier_range_start = 0
        self.mmu_notifier_range_end = 0
        self.tlbs_dirty = 0
        self.faults: dict[int, PendingFault] = {}
        self.obs = Observation("idle")
        # task mode only (impls/tasks.py): the real locks behind the flags above
        self.mmu_lock_obj = Mutex("mmu_lock")
        self.slots_lock = Mutex("slots_lock")
        self.srcu = Srcu("kvm->srcu")
        self.fault_srcu: dict[int, int] = {}
        self.fault_hva: int | None = None   # the hva of the fault installing leaves, while it does
        # (as_id, gfn) -> (pfn, task) of leaves a notifier zapped and no flush has covered yet
        self.unflushed: dict[tuple[int, int], tuple[int, str]] = {}

    # ----- recording -------------------------------------------------------------------
    def begin(self, op: str) -> None:
        self.obs = Observation(op)

    def warn(self, what: str) -> None:
        """A modelled WARN_ON / WARN_ON_ONCE / BUG_ON fired."""
        self.obs.warnings.append(what)

    def record_call(self, hook: str, slot: Memslot, start: int, end: int, detail: str = "") -> None:
        self.obs.calls.append(HandlerCall(hook, slot.as_id, slot.id, start, end, detail))

    # ----- mmu_lock ------------------------------------------------------------------------
    def mmu_lock(self) -> None:
        # KVM_MMU_LOCK: write_lock on x86 (KVM_HAVE_MMU_RWLOCK), spin_lock elsewhere; every
        # notifier path takes the exclusive side, so one exclusive lock models both
        if self.sched is not None:
            self.mmu_lock_obj.lock(self.sched, self.sched.site())
        elif self.mmu_lock_held:
            self.warn("mmu_lock taken recursively (deadlock)")
        self.mmu_lock_held = True
        self.obs.lock_taken = True

    def mmu_unlock(self) -> None:
        if self.sched is not None:
            if self.mmu_lock_obj.holder is not self.sched.current:
                self.warn("mmu_lock released while not held")
            self.mmu_lock_held = False
            self.mmu_lock_obj.unlock(self.sched)     # a point where other tasks may run
            return
        if not self.mmu_lock_held:
            self.warn("mmu_lock released while not held")
        self.mmu_lock_held = False

    def need_resched(self) -> bool:
        """need_resched() || rwlock_needbreak(&kvm->mmu_lock), asked by a walk that may yield:
        true unless the schedule says otherwise (task mode, a `no_resched` directive; see
        impls/tasks.py).  With every event atomic nothing else could run, so it is always true
        there: the walk yields, and flushes first where it would, at every point it may."""
        return self.sched is None or self.sched.need_resched()

    def resched_lock(self) -> None:
        """Drop mmu_lock and take it again: the yield itself, once need_resched() said yes
        (another task may run there in task mode)."""
        self.mmu_unlock()
        self.mmu_lock()

    def cond_resched_lock(self) -> None:
        """cond_resched_lock(&kvm->mmu_lock) in a walk that may block: the lock is dropped and
        retaken only when the CPU or the lock is wanted (`need_resched`)."""
        # v5.12 include/linux/sched.h cond_resched_lock (kernel/sched/core.c __cond_resched_lock:
        # spin_needbreak or should_resched, else nothing)
        if self.need_resched():
            self.resched_lock()

    # ----- other kernel locks: real in task mode, no-ops when every event runs atomically ----
    def spin_lock(self, lock: Mutex) -> None:
        if self.sched is not None:
            lock.lock(self.sched, self.sched.site())

    def spin_unlock(self, lock: Mutex) -> None:
        if self.sched is not None:
            lock.unlock(self.sched)

    def down_read(self, sem: RwSem) -> None:
        if self.sched is not None:
            sem.down_read(self.sched, self.sched.site())

    def up_read(self, sem: RwSem) -> None:
        if self.sched is not None:
            sem.up_read(self.sched)

    def down_write(self, sem: RwSem) -> None:
        if self.sched is not None:
            sem.down_write(self.sched, self.sched.site())

    def up_write(self, sem: RwSem) -> None:
        if self.sched is not None:
            sem.up_write(self.sched)

    def wait_until(self, ready, what: str, holders) -> None:
        """rcuwait_wait_event / schedule() until `ready()`.  Only task mode can wait: with every
        event atomic nobody else could make `ready()` true, so the event ends here (WouldSleep)."""
        if self.sched is not None:
            self.sched.wait_until(ready, what, holders)
        elif not ready():
            self.warn(f"would sleep forever: {what}")
            raise WouldSleep(f"would sleep forever: {what} (only task mode runs other tasks)")

    # ----- kvm->srcu (task mode only; an atomic event needs no grace period) -------------
    def srcu_read_lock(self) -> int:
        return self.srcu.read_lock(self.sched) if self.sched is not None else 0

    def srcu_read_unlock(self, idx: int) -> None:
        if self.sched is not None:
            self.srcu.read_unlock(self.sched, idx)

    def synchronize_srcu_expedited(self) -> None:
        if self.sched is not None:
            self.srcu.synchronize(self.sched)

    # ----- secondary MMU primitives, used by arch code -----------------------------------
    def leaf_covering(self, as_id: int, gfn: int) -> Leaf | None:
        for level in range(self.max_level, 0, -1):
            n = pages_per_level(level, self.page_shift)
            leaf = self.leaves.get((as_id, gfn - gfn % n, level))
            if leaf is not None:
                return leaf
        return None

    def leaves_in(self, as_id: int, start: int, end: int) -> list[Leaf]:
        return sorted((x for x in self.leaves.values() if x.intersects(as_id, start, end)),
                      key=lambda x: x.gfn)

    def zap_leaf(self, leaf: Leaf) -> None:
        del self.leaves[leaf.key]
        self.obs.zapped.append(leaf.snapshot())
        if self.sched is not None and self.obs.op in ("invalidate_range_start", "change_pte"):
            for i in range(leaf.pages):
                self.unflushed[(leaf.as_id, leaf.gfn + i)] = (leaf.pfn + i, self.sched.current.name)

    def age_leaf(self, leaf: Leaf) -> None:
        before = leaf.snapshot()
        leaf.young = False
        self.obs.aged.append(before)

    def change_leaf(self, leaf: Leaf, pfn: int, writable: bool, young: bool) -> None:
        before = leaf.snapshot()
        leaf.pfn, leaf.writable, leaf.young = pfn, writable, young
        self.obs.changed.append((before, leaf.snapshot()))

    def install_leaf(self, leaf: Leaf, fill_tlb: bool = True) -> None:
        """A new present leaf.  A fault's leaf is used at once (fill_tlb); one written by a
        notifier handler (set_spte creating a mapping) is not cached until the guest uses it."""
        if leaf.hva < 0:
            slot = self.memslots.find_gfn(leaf.as_id, leaf.gfn)
            leaf.hva = slot.gfn_to_hva(leaf.gfn) if slot else -1
        self.leaves[leaf.key] = leaf
        self.obs.installed.append(leaf.snapshot())
        if self.host.open_invalidations and self.obs.op == "fault_commit":
            for task, start, end in self.host.open_invalidations:
                if leaf.backs(start, end, self.page_shift):
                    fault_hva = getattr(self, "fault_hva", None)   # a candidate may skip __init__
                    page = 1 << self.page_shift
                    own = (fault_hva is None or leaf.pages == 1
                           or (start < (fault_hva & -page) + page and fault_hva & -page < end))
                    # a huge leaf made by a fault outside the range that reaches into it: what a
                    # retry check on the faulting address alone lets through
                    shape = ("fault-installed-inside-open-invalidation" if own
                             else "fault-installed-huge-leaf-over-open-invalidation")
                    self.obs.violations.append((
                        "stale-mapping", shape,
                        f"a fault {'at hva ' + format(fault_hva, '#x') + ' ' if fault_hva is not None else ''}"
                        f"mapped as{leaf.as_id} gfn {leaf.gfn:#x}+{leaf.pages} (hva {leaf.hva:#x}) while {task}'s "
                        f"invalidation of [{start:#x}, {end:#x}) was open: the retry check missed it"))
                    break
        if fill_tlb:
            self.tlb.fill(leaf)

    # ----- TLB flushes ----------------------------------------------------------------------
    def kvm_flush_remote_tlbs(self, origin: str = "kvm_flush_remote_tlbs") -> None:
        # v5.12 virt/kvm/kvm_main.c kvm_flush_remote_tlbs: snapshot tlbs_dirty, request a
        # flush on every vCPU (they have flushed when it returns), then cmpxchg tlbs_dirty to 0
        dirty_count = self.tlbs_dirty
        self.kvm_vcpu_flush_tlb(origin)
        if self.tlbs_dirty == dirty_count:
            self.tlbs_dirty = 0

    def kvm_vcpu_flush_tlb(self, origin: str) -> None:
        """What every vCPU does for KVM_REQ_TLB_FLUSH: drop its TLB.  An arch whose request
        handler also drops shadow mappings (Book3S PR, e500) overrides this."""
        self.flush_tlb_all(origin)

    def zap_all_leaves(self) -> None:
        for leaf in sorted(self.leaves.values(), key=lambda x: (x.as_id, x.gfn)):
            self.zap_leaf(leaf)

    def flush_tlb_all(self, origin: str) -> None:
        self.tlb.flush_all()
        self.obs.flushes.append(Flush("all", self.mmu_lock_held, origin))
        self.unflushed.clear()

    def flush_tlb_range(self, as_id: int | None, start: int, end: int, origin: str) -> None:
        self.tlb.flush_range(as_id, start, end)
        self.obs.flushes.append(Flush("range", self.mmu_lock_held, origin, as_id, start, end))
        if self.unflushed:
            for key in [k for k in self.unflushed if (as_id is None or k[0] == as_id) and start <= k[1] < end]:
                del self.unflushed[key]

    # ----- memslot updates (identical for every model) ---------------------------------
    def set_user_memory_region(self, as_id: int, slot: int, flags: int, guest_phys_addr: int,
                               memory_size: int, userspace_addr: int) -> None:
        # v5.13 virt/kvm/kvm_main.c kvm_set_memory_region -> __kvm_set_memory_region ->
        # kvm_set_memslot under slots_lock (checks in machine.Memslots, same since v5.12)
        if self.sched is not None:
            self.slots_lock.lock(self.sched, "kvm_set_memory_region")
        try:
            try:
                change = self.memslots.prepare(as_id, slot, flags, guest_phys_addr, memory_size, userspace_addr)
            except MemslotUpdateError as e:
                self.obs.error = e.errno_name
                self.obs.note = e.why
                return
            self.obs.note = change.kind
            if change.kind == "none":
                return
            self.kvm_set_memslot(change)
        finally:
            if self.sched is not None:
                self.slots_lock.unlock(self.sched)

    def kvm_set_memslot(self, change) -> None:
        # v5.13 virt/kvm/kvm_main.c kvm_set_memslot: for DELETE and MOVE, first publish a copy
        # with the old slot marked KVM_MEMSLOT_INVALID (install_new_memslots waits out srcu
        # readers), then zap and flush every mapping of it (kvm_arch_flush_shadow_memslot),
        # then publish the final array; each step is a point where other tasks run
        if change.kind in ("delete", "move"):
            self.install_new_memslots(lambda: self.memslots.mark_invalid(change.old))
            self.mmu_lock()
            self.kvm_arch_flush_shadow_memslot(change.old)
            self.mmu_unlock()
        self.install_new_memslots(lambda: self.memslots.commit(change))
        if change.kind in ("delete", "move"):
            # a fault that raced with the update finds its slot gone and is retried
            for f in self.faults.values():
                if f.slot is not None and f.slot.key == change.old.key:
                    f.slot = None

    def install_new_memslots(self, publish) -> None:
        # v5.13 virt/kvm/kvm_main.c install_new_memslots: publish the new array (rcu_assign_pointer),
        # then synchronize_srcu_expedited so no walker or fault still uses the old one
        publish()
        self.synchronize_srcu_expedited()

    def kvm_arch_flush_shadow_memslot(self, slot: Memslot) -> None:
        # default for every arch: drop every leaf of the slot, then flush them all
        for leaf in self.leaves_in(slot.as_id, slot.base_gfn, slot.gfn_end):
            self.zap_leaf(leaf)
        self.flush_tlb_all("kvm_arch_flush_shadow_memslot")

    # ----- host page table (the primary MMU) -------------------------------------------
    def host_map(self, hva: int, size: int, pfn: int | None, page_size: int, writable: bool) -> None:
        try:
            self.host.map(hva, size, pfn, page_size, writable)
        except ValueError as e:
            raise ModelError(str(e)) from None

    # ----- guest faults: begin (snapshot seq, read the host pte) then commit ---------------
    def fault_begin(self, fault: int, as_id: int, gfn: int, write: bool) -> None:
        # v5.12 arch/x86/kvm/mmu/mmu.c direct_page_fault: mmu_seq = kvm->mmu_notifier_seq;
        # smp_rmb(); then the pfn is looked up through the host page table
        if fault in self.faults:
            raise ModelError(f"fault {fault} begun twice")
        if self.sched is not None:
            # the vCPU is inside kvm->srcu for the whole fault (vcpu_run holds it)
            self.fault_srcu[fault] = self.srcu_read_lock()
        if not 0 <= as_id < self.address_space_num:
            self.faults[fault] = PendingFault(as_id, gfn, write, self.mmu_notifier_seq, None, None, None)
            return
        slot = self.memslots.find_gfn(as_id, gfn)
        if slot is not None and slot.flags & KVM_MEMSLOT_INVALID:
            # v5.13 virt/kvm/kvm_main.c __gfn_to_hva_many: an INVALID slot gives KVM_HVA_ERR_BAD
            slot = None
        hva = slot.gfn_to_hva(gfn) if slot else None
        pte = self.host.lookup(hva) if slot else None
        self.faults[fault] = PendingFault(as_id, gfn, write, self.mmu_notifier_seq, slot, hva, pte)

    def fault_commit(self, fault: int) -> None:
        f = self.faults.pop(fault, None)
        if f is None:
            raise ModelError(f"fault {fault} committed without fault_begin")
        if self.sched is not None and fault in self.fault_srcu:
            try:
                self._fault_commit(f)
            finally:
                self.srcu_read_unlock(self.fault_srcu.pop(fault))
            return
        self._fault_commit(f)

    def _fault_commit(self, f: PendingFault) -> None:
        if f.slot is None or f.pte is None:
            self.obs.note = "no memslot" if f.slot is None else "no host page"
            return
        if f.write and (f.slot.flags & KVM_MEM_READONLY):
            self.obs.note = "write to read-only slot (MMIO exit)"
            return
        self.mmu_lock()
        if self.fault_is_stale(f):
            self.obs.note = "retry"
        elif self.leaf_covering(f.as_id, f.gfn) is not None:
            self.obs.note = "already mapped"
        else:
            self.fault_hva = f.hva
            try:
                self.map_fault(f)
            finally:
                self.fault_hva = None
        self.mmu_unlock()

    def fault_is_stale(self, f: PendingFault) -> bool:
        if self.uses_retry_hva:
            return self.mmu_notifier_retry_hva(f.mmu_seq, f.hva)
        return self.mmu_notifier_retry(f.mmu_seq)

    def mmu_notifier_retry(self, mmu_seq: int) -> bool:
        # v5.12 include/linux/kvm_host.h mmu_notifier_retry
        if self.mmu_notifier_count:
            return True
        return self.mmu_notifier_seq != mmu_seq

    def mmu_notifier_retry_hva(self, mmu_seq: int, hva: int) -> bool:
        # v5.12 include/linux/kvm_host.h mmu_notifier_retry_hva: half-open union range
        if (self.mmu_notifier_count and self.mmu_notifier_range_start <= hva
                and hva < self.mmu_notifier_range_end):
            return True
        return self.mmu_notifier_seq != mmu_seq

    def fault_level(self, f: PendingFault) -> int:
        """Largest level the fault may map: the host mapping size, the slot's alignment and
        the arch limit.  Arch files override where their rule differs."""
        level = min(self.max_level, f.pte.level)
        if f.slot.flags & KVM_MEM_LOG_DIRTY_PAGES:
            return LEVEL_4K
        while level > LEVEL_4K and not self.huge_frame_allowed(f.slot, f.gfn, level):
            level -= 1
        return level

    def huge_frame_allowed(self, slot: Memslot, gfn: int, level: int) -> bool:
        # v5.12 arch/x86/kvm/x86.c kvm_alloc_memslot_metadata: a huge frame is disallowed when
        # gfn and hva are not equally aligned inside it, or it is not wholly inside the slot
        n = pages_per_level(level, self.page_shift)
        if (slot.base_gfn ^ (slot.userspace_addr >> self.page_shift)) & (n - 1):
            return False
        base = gfn - gfn % n
        return base >= slot.base_gfn and base + n <= slot.gfn_end

    def map_fault(self, f: PendingFault) -> None:
        level = self.fault_level(f)
        n = pages_per_level(level, self.page_shift)
        base = f.gfn - f.gfn % n
        for old in self.leaves_in(f.as_id, base, base + n):
            # a smaller mapping inside the new huge frame is replaced (and flushed)
            self.zap_leaf(old)
            self.flush_tlb_range(f.as_id, old.gfn, old.gfn_end, "fault: replace smaller mapping")
        writable = f.pte.writable and not (f.slot.flags & KVM_MEM_READONLY)
        # the leaf's host address comes from the faulting hva: a huge leaf may start before
        # its slot on an arch that does not check the slot bounds (Book3S HV radix)
        self.install_leaf(Leaf(f.as_id, base, level, f.pte.pfn - (f.gfn - base), n,
                               writable=writable, young=True, dirty=f.write and writable,
                               hva=f.hva - ((f.gfn - base) << self.page_shift)))

    # ----- guest accesses -----------------------------------------------------------------
    def guest_access(self, as_id: int, gfn: int, write: bool) -> None:
        """The guest touches gfn: a present leaf gets its accessed bit (and dirty on a
        write) and is cached in the TLB.  Without a leaf the guest would fault instead."""
        leaf = self.leaf_covering(as_id, gfn)
        if leaf is None:
            self.obs.note = "not mapped"
            if self.sched is not None and (as_id, gfn) in self.unflushed:
                pfn, zapper = self.unflushed[(as_id, gfn)]
                cached = any(e.intersects(as_id, gfn, gfn + 1) for e in self.tlb.entries)
                if cached and self.mmu_lock_obj.holder is not self.sched.tasks.get(zapper):
                    self.obs.note = "used a zapped translation from the TLB"
                    self.obs.violations.append((
                        "missed-flush", "guest-used-zapped-translation-while-mmu_lock-dropped",
                        f"as{as_id} gfn {gfn:#x} -> pfn {pfn:#x} was zapped by {zapper}, which dropped "
                        f"mmu_lock before flushing it, and the guest used it from the TLB"))
            return
        leaf.young = True
        if write and leaf.writable:
            leaf.dirty = True
        self.tlb.fill(leaf)

    def sync_page(self, as_id: int, gfn: int) -> None:
        """x86 shadow paging only (FNAME(sync_page)); other arches have no deferred flush."""
        self.obs.note = "not modelled on this arch"

    # ----- notifier entry points: provided by a kvm_main layer -------------------------
    def kvm_mmu_notifier_invalidate_range_start(self, start: int, end: int, blockable: bool) -> int:
        raise NotImplementedError

    def kvm_mmu_notifier_invalidate_range_end(self, start: int, end: int, blockable: bool) -> None:
        raise NotImplementedError

    def kvm_mmu_notifier_change_pte(self, address: int, pte: HostPte) -> None:
        raise NotImplementedError

    def kvm_mmu_notifier_clear_flush_young(self, start: int, end: int) -> int:
        raise NotImplementedError

    def kvm_mmu_notifier_clear_young(self, start: int, end: int) -> int:
        raise NotImplementedError

    def kvm_mmu_notifier_test_young(self, address: int) -> int:
        raise NotImplementedError

    def kvm_mmu_notifier_release(self) -> None:
        raise NotImplementedError

    def kvm_arch_flush_shadow_all(self) -> None:
        # what most arches do at release: drop every mapping and flush
        self.zap_all_leaves()
        self.flush_tlb_all("kvm_arch_flush_shadow_all")

    # ----- snapshot ----------------------------------------------------------------------
    def snapshot(self) -> State:
        """A copy of the state the oracles read, unaffected by what the model does later."""
        state = State(slots=self.memslots.all(),
                      leaves={k: v.snapshot() for k, v in self.leaves.items()},
                      tlb=frozenset(self.tlb.entries),
                      address_space_num=self.address_space_num,
                      mmu_notifier_count=self.mmu_notifier_count,
                      mmu_notifier_seq=self.mmu_notifier_seq,
                      tlbs_dirty=self.tlbs_dirty,
                      page_shift=self.page_shift)
        self.snapshot_extra(state.extra)
        return state

    def shallow_snapshot(self) -> State:
        """snapshot() without copying each leaf: the leaf dict and the TLB set are copied, the
        Leaf objects are this model's own.  Exact afterwards for which leaves there were and
        for their keys, gfns, pages and hvas, not for what an event changes in place (young,
        dirty, pfn, writable): the runner's pre-event state, of which the checks read only
        those.  A subclass that overrides snapshot() itself gets snapshot()."""
        if type(self).snapshot is not Kvm.snapshot:
            return self.snapshot()
        return State(self.memslots.all(), dict(self.leaves), frozenset(self.tlb.entries),
                     self.address_space_num, self.mmu_notifier_count, self.mmu_notifier_seq,
                     self.tlbs_dirty, self.page_shift, {})

    def snapshot_extra(self, extra: dict) -> None:
        """Model bookkeeping a subclass adds to its snapshots for reports (no oracle reads it)."""

    def view(self) -> State:
        """The state the oracles read, as it is now, without copying the leaves: the State
        shares this model's leaf dict and Leaf objects, so it is exact only until the model
        next runs (the runner reads the state after an event before the next event starts, as
        snapshot() would give it then).  `tlb` is the TLB's own set, not a frozenset (the same
        entries; every oracle reads it as an unordered collection).  `extra` is left empty
        (reports take snapshots).  A
        subclass that overrides snapshot() itself gets snapshot(): its copy may differ."""
        if type(self).snapshot is not Kvm.snapshot:
            return self.snapshot()
        return State(self.memslots.all(), self.leaves, self.tlb.entries, self.address_space_num,
                     self.mmu_notifier_count, self.mmu_notifier_seq, self.tlbs_dirty, self.page_shift, {})

"""The abstract KVM machine that every model shares (design card section 3).

Memslots with KVM_SET_USER_MEMORY_REGION's rules, the host page table (the primary MMU),
the normalized secondary-MMU view (leaves), and the TLB.  Nothing here is version
specific: the memslot rules and the TLB are the same for every kernel we model, so every
model gives the same answer to the same memslot update and differs only in its MMU-notifier
path (v5.12 and v5.13 virt/kvm/kvm_main.c __kvm_set_memory_region agree on these checks).
"""
from __future__ import annotations

import errno
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field, replace
from types import MappingProxyType

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT

# Page-table levels, as x86 names them (PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_1G); other
# architectures map their block sizes onto the same numbers (arm64 PMD = 2, PUD = 3).
LEVEL_4K, LEVEL_2M, LEVEL_1G = 1, 2, 3
LEVEL_PAGE_SIZE = {LEVEL_4K: 4096, LEVEL_2M: 2 << 20, LEVEL_1G: 1 << 30}
LEVEL_OF_PAGE_SIZE = {v: k for k, v in LEVEL_PAGE_SIZE.items()}


def pages_per_level(level: int, page_shift: int = PAGE_SHIFT) -> int:
    """Number of base pages in one mapping of this level (KVM_PAGES_PER_HPAGE)."""
    return LEVEL_PAGE_SIZE[level] >> page_shift


# KVM_SET_USER_MEMORY_REGION flags (include/uapi/linux/kvm.h, v5.12/v5.13).
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1
# include/linux/kvm_host.h (v5.13): set on the copy of a slot being deleted or moved
KVM_MEMSLOT_INVALID = 1 << 16


class MemslotUpdateError(Exception):
    """KVM_SET_USER_MEMORY_REGION refused the update; `errno_name` is what KVM returns."""

    def __init__(self, errno_name: str, why: str):
        super().__init__(f"{errno_name}: {why}")
        self.errno_name = errno_name
        self.why = why


@dataclass(frozen=True)
class Memslot:
    """One struct kvm_memory_slot: gfns [base_gfn, base_gfn+npages) backed by hvas from userspace_addr."""
    as_id: int
    id: int
    base_gfn: int
    npages: int
    userspace_addr: int
    flags: int = 0
    page_shift: int = PAGE_SHIFT

    @property
    def hva_start(self) -> int:
        return self.userspace_addr

    @property
    def hva_end(self) -> int:
        return self.userspace_addr + (self.npages << self.page_shift)

    @property
    def gfn_end(self) -> int:
        return self.base_gfn + self.npages

    def gfn_to_hva(self, gfn: int) -> int:
        # v5.12 include/linux/kvm_host.h __gfn_to_hva_memslot
        return self.userspace_addr + ((gfn - self.base_gfn) << self.page_shift)

    def hva_to_gfn(self, hva: int) -> int:
        # v5.12 include/linux/kvm_host.h hva_to_gfn_memslot: floor division
        return self.base_gfn + ((hva - self.userspace_addr) >> self.page_shift)

    def has_gfn(self, gfn: int) -> bool:
        return self.base_gfn <= gfn < self.gfn_end

    @property
    def key(self) -> tuple[int, int]:
        return (self.as_id, self.id)

    def describe(self) -> str:
        return (f"as{self.as_id}/slot{self.id} gfn[{self.base_gfn:#x},{self.gfn_end:#x}) "
                f"hva[{self.hva_start:#x},{self.hva_end:#x})")


class SlotList(list):
    """Memslots.all(): the slots, address space 0 first, each in kernel array order, shared by
    every snapshot taken while the memslots stay the same (treat it as read-only).  It carries
    an index of the slots by hva, built on first use and living as long as the memslot set."""

    _hva: tuple | None = None
    _equal: "SlotList | None" = None     # another SlotList found equal to this one (see __eq__)

    def __eq__(self, other):
        """List equality, remembered: both lists are read-only for their lifetime, so once two
        SlotLists compare equal they stay equal (the runner compares the two sides' memslots at
        every notifier event; with hundreds of slots the element-wise test dominated)."""
        if other is self or (other is not None and other is self._equal):
            return True
        same = list.__eq__(self, other)
        if same is True and isinstance(other, SlotList):
            self._equal, other._equal = other, self
        return same

    def __ne__(self, other):
        same = self.__eq__(other)
        return same if same is NotImplemented else not same

    __hash__ = None

    def overlapping_hva(self, start: int, end: int) -> list[Memslot]:
        """The slots (with pages) whose hvas meet [start, end), in hva-start order: bisect on
        the sorted starts, then a scan from the first slot whose end (running maximum) passes
        `start` (output-sensitive: no walk over slots wholly before or after the range)."""
        if self._hva is None:
            by_start = sorted((s for s in self if s.npages), key=lambda s: (s.hva_start, s.as_id, s.id))
            if len(by_start) <= 16:
                # few slots: a scan of (hva_start, hva_end, slot) is cheaper than the index
                self._hva = ([(s.hva_start, s.hva_end, s) for s in by_start], None, None)
            else:
                reach, top = [], -1
                for s in by_start:
                    top = max(top, s.hva_end)
                    reach.append(top)
                self._hva = ([s.hva_start for s in by_start], reach, by_start)
        starts, reach, by_start = self._hva
        if reach is None:
            return [s for hs, he, s in starts if hs < end and start < he]
        k = bisect_left(starts, end)
        j = bisect_right(reach, start, 0, k)
        return [s for s in by_start[j:k] if s.hva_end > start]


@dataclass
class MemslotChange:
    """What __kvm_set_memory_region decided: KVM_MR_CREATE, DELETE, MOVE, FLAGS_ONLY or nothing."""
    kind: str                      # "create" | "delete" | "move" | "flags_only" | "none"
    old: Memslot | None
    new: Memslot | None


class Memslots:
    """The memslot arrays of all address spaces, with the update rules of
    v5.12 virt/kvm/kvm_main.c __kvm_set_memory_region (unchanged in v5.13)."""

    def __init__(self, address_space_num: int, user_mem_slots: int, readonly_mem: bool,
                 page_shift: int = PAGE_SHIFT, max_nr_pages: int = (1 << 31) - 1):
        self.address_space_num = address_space_num
        self.user_mem_slots = user_mem_slots
        self.readonly_mem = readonly_mem
        self.page_shift = page_shift
        self.max_nr_pages = max_nr_pages
        self._by_as: list[dict[int, Memslot]] = [dict() for _ in range(address_space_num)]
        # (as_id, slot id) -> when the slot object now published was last inserted into its
        # address space (create, move, flags-only, the INVALID copy of delete/move): the tie
        # order of v5.17's hva interval tree (in_hva_range)
        self._inserted: dict[tuple[int, int], int] = {}
        self._insertions = 0
        # views of the slots built on first use and dropped on every change (_changed): the
        # kernel keeps its arrays and trees across walks the same way
        self._views: dict = {}

    def _changed(self) -> None:
        self._views.clear()

    def _view(self, key, build):
        v = self._views.get(key)
        if v is None:
            v = self._views[key] = build()
        return v

    def in_as(self, as_id: int) -> list[Memslot]:
        """Slots of one address space in kvm_for_each_memslot order.

        v5.12 virt/kvm/kvm_main.c update_memslots keeps the array sorted by base_gfn,
        highest first; v5.13 is the same (the gfn tree arrives in v5.17)."""
        return list(self._view(("as", as_id), lambda: sorted(self._by_as[as_id].values(),
                                                              key=lambda s: (-s.base_gfn, s.id))))

    def in_as_hitting(self, as_id: int, start: int, end: int) -> list[Memslot]:
        """The slots of in_as(as_id) whose hvas meet [start, end), in in_as order: what a
        kvm_for_each_memslot walk that clamps [start, end) to each slot and skips a slot when
        max(start, hva_start) >= min(end, hva_end) hands on, in the order it hands them on.

        The kernel's walk (v5.12's per-arch hva walkers, v5.13's __kvm_handle_hva_range) tests
        every slot; a slot it skips is only that test, so handing the walker the hits alone
        gives the same calls in the same order.  The hits come from an index by hva (bisect on
        the sorted starts, a running maximum of the ends), then are put back in array order."""
        if start >= end:
            return []

        def build():
            order = self._view(("as", as_id), lambda: sorted(self._by_as[as_id].values(),
                                                             key=lambda s: (-s.base_gfn, s.id)))
            if len(order) <= 16:
                # few slots: a scan of (hva_start, hva_end, slot) in array order is cheaper
                return [(s.hva_start, s.hva_end, s) for s in order], None, None, None
            pos = {s.id: i for i, s in enumerate(order)}
            by_start = sorted((s for s in order if s.npages), key=lambda s: (s.hva_start, pos[s.id]))
            reach, top = [], -1
            for s in by_start:
                top = max(top, s.hva_end)
                reach.append(top)
            return [s.hva_start for s in by_start], reach, by_start, pos
        starts, reach, by_start, pos = self._view(("hit", as_id), build)
        if reach is None:
            return [s for hs, he, s in starts if hs < end and start < he and hs < he]
        k = bisect_left(starts, end)
        j = bisect_right(reach, start, 0, k)
        hits = [s for s in by_start[j:k] if s.hva_end > start]
        if len(hits) > 1:
            hits.sort(key=lambda s: pos[s.id])
        return hits

    def in_hva_range(self, as_id: int, start: int, last: int) -> list[Memslot]:
        """Slots of one address space whose hvas meet the inclusive range [start, last], in
        the order v5.17's hva interval tree yields them.

        v5.17 virt/kvm/kvm_main.c kvm_for_each_memslot_in_hva_range (ed922739c919): a node
        spans [userspace_addr, userspace_addr + npages * PAGE_SIZE - 1]; the walk is in-order,
        i.e. by hva start, and include/linux/interval_tree_generic.h inserts an equal start to
        the right, so slots with the same start come oldest insertion first.  A plain scan
        sorted that way gives the same hits in the same order as the tree."""
        # the tree as a sorted array: hva start, then insertion; a running maximum of the ends
        # lets the scan start at the first slot that can reach `start` (an output-sensitive
        # walk, as the tree's)
        def build():
            order = sorted((s for s in self._by_as[as_id].values() if s.npages),
                           key=lambda s: (s.hva_start, self._inserted.get(s.key, 0)))
            reach, top = [], -1
            for s in order:
                top = max(top, s.hva_end - 1)
                reach.append(top)
            return [s.hva_start for s in order], reach, order
        starts, reach, order = self._view(("hva", as_id), build)
        k = bisect_right(starts, last)
        j = bisect_left(reach, start, 0, k)
        return [s for s in order[j:k] if start <= s.hva_end - 1]

    def _insert(self, slot: Memslot) -> None:
        self._changed()
        self._insertions += 1
        self._inserted[slot.key] = self._insertions

    def all(self) -> SlotList:
        """Every slot, address space 0 first, each in kernel array order: one SlotList shared
        until the memslots change (read-only for its users)."""
        v = self._views.get("all")
        if v is None:
            v = self._views["all"] = SlotList(s for a in range(self.address_space_num) for s in self.in_as(a))
        return v

    def find_gfn(self, as_id: int, gfn: int) -> Memslot | None:
        """The slot of one address space holding gfn: a binary search over the slots sorted by
        base_gfn, as v5.12 search_memslots does (the slots of an address space never share a
        gfn; were two to, the scan in insertion order the model used before decides)."""
        def build():
            order = sorted(self._by_as[as_id].values(), key=lambda s: s.base_gfn)
            disjoint = all(a.gfn_end <= b.base_gfn for a, b in zip(order, order[1:]))
            return ([s.base_gfn for s in order], order) if disjoint else None
        index = self._view(("gfn", as_id), build)
        if index is None:
            return next((s for s in self._by_as[as_id].values() if s.has_gfn(gfn)), None)
        starts, order = index
        i = bisect_right(starts, gfn) - 1
        return order[i] if i >= 0 and order[i].has_gfn(gfn) else None

    def set_user_memory_region(self, as_id: int, slot_id: int, flags: int,
                               guest_phys_addr: int, memory_size: int,
                               userspace_addr: int) -> MemslotChange:
        """Validate and apply one KVM_SET_USER_MEMORY_REGION in one step."""
        change = self.prepare(as_id, slot_id, flags, guest_phys_addr, memory_size, userspace_addr)
        self.commit(change)
        return change

    def mark_invalid(self, slot: Memslot) -> None:
        """Publish the copy of `slot` flagged KVM_MEMSLOT_INVALID (DELETE/MOVE, first install)."""
        self._changed()
        self._by_as[slot.as_id][slot.id] = replace(slot, flags=slot.flags | KVM_MEMSLOT_INVALID)
        self._insert(slot)

    def commit(self, change: MemslotChange) -> None:
        """Publish the final array of a validated update."""
        if change.kind == "none":
            return
        if change.kind == "delete":
            self._changed()
            self._by_as[change.old.as_id].pop(change.old.id, None)
            self._inserted.pop(change.old.key, None)
        else:
            self._by_as[change.new.as_id][change.new.id] = change.new
            self._insert(change.new)

    def prepare(self, as_id: int, slot_id: int, flags: int,
                guest_phys_addr: int, memory_size: int,
                userspace_addr: int) -> MemslotChange:
        """Validate one KVM_SET_USER_MEMORY_REGION and say what it changes (nothing applied).

        v5.12 virt/kvm/kvm_main.c kvm_vm_ioctl_set_memory_region, check_memory_region_flags,
        __kvm_set_memory_region; raises MemslotUpdateError with KVM's errno."""
        page_mask = (1 << self.page_shift) - 1
        valid = KVM_MEM_LOG_DIRTY_PAGES | (KVM_MEM_READONLY if self.readonly_mem else 0)
        if slot_id < 0 or slot_id >= self.user_mem_slots:
            raise MemslotUpdateError("EINVAL", f"slot {slot_id} >= KVM_USER_MEM_SLOTS ({self.user_mem_slots})")
        if flags & ~valid:
            raise MemslotUpdateError("EINVAL", f"flags {flags:#x} not in {valid:#x}")
        if memory_size & page_mask:
            raise MemslotUpdateError("EINVAL", f"memory_size {memory_size:#x} not page aligned")
        if guest_phys_addr & page_mask:
            raise MemslotUpdateError("EINVAL", f"guest_phys_addr {guest_phys_addr:#x} not page aligned")
        if userspace_addr & page_mask:
            raise MemslotUpdateError("EINVAL", f"userspace_addr {userspace_addr:#x} not page aligned")
        if memory_size < 0 or guest_phys_addr < 0 or userspace_addr < 0:
            raise MemslotUpdateError("EINVAL", "negative address or size")
        if userspace_addr + memory_size > (1 << 47):
            raise MemslotUpdateError("EINVAL", "userspace range fails access_ok")
        if as_id < 0 or as_id >= self.address_space_num:
            raise MemslotUpdateError("EINVAL", f"as_id {as_id} >= KVM_ADDRESS_SPACE_NUM ({self.address_space_num})")
        if guest_phys_addr + memory_size > (1 << 64) - 1:
            raise MemslotUpdateError("EINVAL", "guest_phys_addr + memory_size wraps")
        npages = memory_size >> self.page_shift
        if npages > self.max_nr_pages:
            raise MemslotUpdateError("EINVAL", f"npages {npages} > KVM_MEM_MAX_NR_PAGES")
        base_gfn = guest_phys_addr >> self.page_shift
        old = self._by_as[as_id].get(slot_id)
        new = Memslot(as_id, slot_id, base_gfn, npages, userspace_addr, flags, self.page_shift)

        if npages == 0:
            if old is None:
                raise MemslotUpdateError("EINVAL", f"delete of as{as_id}/slot{slot_id}, which does not exist")
            return MemslotChange("delete", old, None)

        if old is None:
            kind = "create"
        else:
            if userspace_addr != old.userspace_addr:
                raise MemslotUpdateError("EINVAL", "userspace_addr of an existing slot cannot change")
            if npages != old.npages:
                raise MemslotUpdateError("EINVAL", "size of an existing slot cannot change")
            if (flags ^ old.flags) & KVM_MEM_READONLY:
                raise MemslotUpdateError("EINVAL", "KVM_MEM_READONLY of an existing slot cannot change")
            if base_gfn != old.base_gfn:
                kind = "move"
            elif flags != old.flags:
                kind = "flags_only"
            else:
                return MemslotChange("none", old, old)

        if kind in ("create", "move"):
            for other in self._by_as[as_id].values():
                if other.id == slot_id:
                    continue
                if base_gfn + npages <= other.base_gfn or base_gfn >= other.gfn_end:
                    continue
                raise MemslotUpdateError(
                    "EEXIST", f"gfn [{base_gfn:#x},{base_gfn + npages:#x}) overlaps {other.describe()}")
        return MemslotChange(kind, old, new)


@dataclass(frozen=True)
class HostPte:
    """One base page of the host page table: its pfn, writability and the size of the host
    mapping that holds it (the level host_pfn_mapping_level would read)."""
    pfn: int
    writable: bool
    level: int = LEVEL_4K


@dataclass(frozen=True)
class HostExtent:
    """A run of host pages [hva, hva_end) mapped to consecutive pfns from `pfn`, all with the
    same writability and mapping level: what HostPageTable keeps instead of one entry per page.
    A LEVEL_4K extent of many pages stands for that many 4K ptes."""
    hva: int
    hva_end: int
    pfn: int
    writable: bool
    level: int

    def pte(self, hva: int, page_shift: int = PAGE_SHIFT) -> HostPte:
        """The pte of the page holding `hva` (which must lie in this extent)."""
        return HostPte(self.pfn + ((hva - self.hva) >> page_shift), self.writable, self.level)


class HostPageTable:
    """The primary MMU: hva page -> HostPte, kept as sorted, disjoint extents (HostExtent), so
    the cost of a mapping does not grow with its size (a 16 TiB host_map is one extent).
    Neighbouring extents that continue each other (next pfn, same writability and level) are
    kept merged.

    Every answer is the one a table of one HostPte per base page would give: `lookup` returns
    the pte of one page, `map` and `set_pte` change pages exactly as before, including the split
    of a huge frame partly changed (`_split_around`).  Which pages two separate mappings came
    from is not kept (nor was it before): two 2M mappings with consecutive pfns read as one
    4M run of 2M pages, exactly as their per-page ptes did."""

    def __init__(self, page_shift: int = PAGE_SHIFT):
        self.page_shift = page_shift
        # sorted by page; _starts[i] == _ext[i][0]; each extent (first page, end page, pfn of
        # the first page, writable, level), end exclusive, none overlapping
        self._starts: list[int] = []
        self._ext: list[tuple[int, int, int, bool, int]] = []
        # the mm's invalidations whose range_start has returned and whose range_end has not
        # begun, as (task, start, end): no secondary MMU may map their pages then (task mode)
        self.open_invalidations: list[tuple[str, int, int]] = []
        # tasks from their call of range_start to the return of the matching range_end
        self.invalidating: list[str] = []

    # ----- queries ------------------------------------------------------------------------
    def _pte_at_page(self, page: int) -> HostPte | None:
        i = bisect_right(self._starts, page) - 1
        if i >= 0:
            s, e, pfn, writable, level = self._ext[i]
            if page < e:
                return HostPte(pfn + page - s, writable, level)
        return None

    def lookup(self, hva: int) -> HostPte | None:
        """The pte of the base page holding `hva`, or None.  O(log extents)."""
        return self._pte_at_page(hva >> self.page_shift)

    def _overlapping(self, first: int, end: int) -> range:
        """Indices of the extents that meet pages [first, end)."""
        lo = bisect_right(self._starts, first) - 1
        if lo < 0 or self._ext[lo][1] <= first:
            lo += 1
        return range(lo, bisect_left(self._starts, end))

    def present_in(self, start: int, end: int) -> bool:
        """Is some page meeting the hva range [start, end) present?  (Pages are whole: an
        unaligned range meets the pages it touches.)"""
        if start >= end:
            return False
        first = start >> self.page_shift
        last = (end - 1) >> self.page_shift
        return bool(self._overlapping(first, last + 1))

    def extents(self, start: int = 0, end: int | None = None) -> list[HostExtent]:
        """The present extents meeting the hva range [start, end) (every one when end is
        None), in hva order, clipped to the pages that meet the range."""
        shift = self.page_shift
        if end is None:
            idx = range(len(self._ext))
            first, stop = 0, None
        else:
            if start >= end:
                return []
            first, stop = start >> shift, ((end - 1) >> shift) + 1
            idx = self._overlapping(first, stop)
        out = []
        for i in idx:
            s, e, pfn, writable, level = self._ext[i]
            cs = max(s, first)
            ce = e if stop is None else min(e, stop)
            out.append(HostExtent(cs << shift, ce << shift, pfn + cs - s, writable, level))
        return out

    def copy(self) -> "HostPageTable":
        """The page table as it is now, for reading later (the oracle checks a fault's leaf
        against the host as of its install).  O(extents); open invalidations are not copied."""
        out = HostPageTable(self.page_shift)
        out._starts, out._ext = list(self._starts), list(self._ext)
        return out

    @property
    def ptes(self) -> MappingProxyType:
        """Page number -> HostPte for every present page, read-only and as large as the mapping
        (for tests and debugging; nothing else uses it).  Change pages through map/set_pte."""
        return MappingProxyType({p: HostPte(pfn + p - s, w, lv)
                                 for s, e, pfn, w, lv in self._ext for p in range(s, e)})

    # ----- changes -------------------------------------------------------------------------
    def map(self, hva: int, size: int, pfn: int | None, page_size: int, writable: bool) -> None:
        """Map [hva, hva+size) to consecutive pfns from `pfn` with backing page size
        `page_size`, or unmap it when pfn is None.  Huge backing needs hva, size and pfn
        aligned to the page size, as a THP or hugetlbfs mapping would be."""
        level = LEVEL_OF_PAGE_SIZE.get(page_size)
        if level is None:
            raise ValueError(f"host page size {page_size:#x} is not 4K, 2M or 1G")
        mask = page_size - 1
        if hva & ((1 << self.page_shift) - 1) or size & ((1 << self.page_shift) - 1):
            raise ValueError(f"host mapping [{hva:#x},+{size:#x}) is not page aligned")
        if pfn is not None and (hva & mask or size & mask or (pfn << self.page_shift) & mask):
            raise ValueError(f"host mapping [{hva:#x},+{size:#x}) pfn {pfn:#x} not aligned to {page_size:#x}")
        first = hva >> self.page_shift
        count = size >> self.page_shift
        self._split_around(first, count, level)
        if count <= 0:
            return            # nothing mapped or unmapped (a split above may still happen)
        self._put(first, first + count, None if pfn is None else (first, first + count, pfn, writable, level))

    def set_pte(self, hva: int, pfn: int, writable: bool) -> None:
        """set_pte_at for one base page (what change_pte accompanies); a 4K pte."""
        page = hva >> self.page_shift
        self._split_around(page, 1, LEVEL_4K)
        self._put(page, page + 1, (page, page + 1, pfn, writable, LEVEL_4K))

    def _put(self, first: int, end: int, new: tuple | None, keep=None) -> None:
        """Replace whatever maps pages [first, end) by `new` (None: nothing).  `keep(ext)` may
        give, for each overlapped extent, the pieces inside [first, end) to put back instead."""
        idx = self._overlapping(first, end)
        pieces = []
        for i in idx:
            s, e, pfn, writable, level = self._ext[i]
            if s < first:
                pieces.append((s, first, pfn, writable, level))
            if keep is not None:
                pieces += keep((max(s, first), min(e, end), pfn + max(s, first) - s, writable, level))
            if end < e:
                pieces.append((end, e, pfn + end - s, writable, level))
        if new is not None:
            pieces.append(new)
        # the neighbours too, so that runs of pages that agree stay one extent
        lo, hi = max(idx.start - 1, 0), min(idx.stop + 1, len(self._ext))
        pieces += self._ext[lo:idx.start] + self._ext[idx.stop:hi]
        pieces.sort()
        merged: list[tuple[int, int, int, bool, int]] = []
        for p in pieces:
            if p[0] >= p[1]:
                continue
            if merged:
                q = merged[-1]
                if q[1] == p[0] and q[2] + (q[1] - q[0]) == p[2] and q[3:] == p[3:]:
                    merged[-1] = (q[0], p[1], q[2], q[3], q[4])
                    continue
            merged.append(p)
        self._ext[lo:hi] = merged
        self._starts[lo:hi] = [p[0] for p in merged]

    def _split_around(self, first: int, count: int, new_level: int) -> None:
        """Changing part of a huge mapping splits it first (split_huge_pmd/pud): the pages
        of a huge frame left outside the change become 4K ptes with their pfns.

        Page for page what the table of one HostPte per page did: per level (2M, then 1G)
        and per frame of that level meeting the change, if the frame's head page is present
        at that level or above, its pages at that level or above outside the change become
        4K.  Only the frames holding the change's first and last page can have pages outside
        it.  As before, a head already made 4K by the 2M pass leaves its 1G frame unsplit
        (a change in the first 2M of a 1G mapping splits that 2M only; the rest stays 1G)."""
        end = first + count
        for level in (LEVEL_2M, LEVEL_1G):
            if level <= new_level:
                continue
            n = LEVEL_PAGE_SIZE[level] >> self.page_shift
            every = range(first - first % n, end, n)
            for frame in sorted({every[0], every[-1]} if every else ()):
                head = self._pte_at_page(frame)
                if head is None or head.level < level:
                    continue      # huge mappings are frame aligned: the head tells
                outside = (((frame, min(first, frame + n)), (max(end, frame), frame + n)) if first < end
                           else ((frame, frame + n),))
                for lo, hi in outside:
                    if lo < hi:
                        self._put(lo, hi, None, keep=lambda p, lv=level: [
                            p if p[4] < lv else (p[0], p[1], p[2], p[3], LEVEL_4K)])


@dataclass
class Leaf:
    """A present leaf translation of the secondary MMU, normalized across architectures:
    gfns [gfn, gfn + pages) of address space as_id map to pfns [pfn, pfn + pages)."""
    as_id: int
    gfn: int
    level: int
    pfn: int
    pages: int
    writable: bool = False
    young: bool = True
    dirty: bool = False
    hva: int = -1          # host address the leaf was installed from (-1: unknown)

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.as_id, self.gfn, self.level)

    @property
    def gfn_end(self) -> int:
        return self.gfn + self.pages

    def covers(self, as_id: int, gfn: int) -> bool:
        return as_id == self.as_id and self.gfn <= gfn < self.gfn_end

    def intersects(self, as_id: int, start: int, end: int) -> bool:
        return as_id == self.as_id and self.gfn < end and start < self.gfn_end

    def backs(self, start: int, end: int, page_shift: int = PAGE_SHIFT) -> bool:
        """True if the host range [start, end) intersects the hvas this leaf was made from."""
        return start < end and self.hva >= 0 and self.hva < end and start < self.hva + (self.pages << page_shift)

    def snapshot(self) -> "Leaf":
        return Leaf(self.as_id, self.gfn, self.level, self.pfn, self.pages,
                    self.writable, self.young, self.dirty, self.hva)


@dataclass(frozen=True)
class TlbEntry:
    """A translation a vCPU may still use: it stays until a flush that covers it."""
    as_id: int
    gfn: int
    pages: int
    pfn: int
    writable: bool
    hva: int = -1

    def backs(self, start: int, end: int, page_shift: int = PAGE_SHIFT) -> bool:
        return start < end and self.hva >= 0 and self.hva < end and start < self.hva + (self.pages << page_shift)

    def intersects(self, as_id: int | None, start: int, end: int) -> bool:
        return (as_id is None or as_id == self.as_id) and self.gfn < end and start < self.gfn + self.pages


@dataclass
class Tlb:
    """Cached translations across all vCPUs.  Filled when a leaf is installed or the guest
    touches it; emptied only by flushes, so a zap without a flush leaves a usable entry."""
    entries: set[TlbEntry] = field(default_factory=set)

    def fill(self, leaf: Leaf) -> None:
        self.entries.add(TlbEntry(leaf.as_id, leaf.gfn, leaf.pages, leaf.pfn, leaf.writable, leaf.hva))

    def flush_all(self) -> int:
        n = len(self.entries)
        self.entries.clear()
        return n

    def flush_range(self, as_id: int | None, start: int, end: int) -> int:
        gone = {e for e in self.entries if e.intersects(as_id, start, end)}
        self.entries -= gone
        return len(gone)


def errno_value(name: str) -> int:
    return getattr(errno, name)

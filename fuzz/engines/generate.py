"""Trace generation that knows the domain.

Uniform integers almost never land on a memslot edge, so every address is drawn relative to
something that matters: a slot's first or last page, one page or one byte either side, a
huge-page boundary.  Layouts favour what breaks walkers: hva aliasing (within and across
address spaces), GPA-adjacent and hva-adjacent slots, 2 MiB aligned regions backed by huge
pages, empty and 1-byte notifier ranges.

`GenConfig.kernel_only` breaks none of them: every trace then passes
`check_well_formed(strict=True)` (no language.wellformed.ALLOWANCES), i.e. it is exactly what a
running kernel's mm sends (see `_Gen` methods `present_page` and `kernel_aging`).

The generator is written once against `Source`, a tiny interface for choices, so the same
code serves the seeded random engine (RandomSource), the hypothesis strategy
(`traces()`), and byte-driven engines.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

from language.trace import (ChangePte, ClearFlushYoung, ClearYoung, Event, FaultBegin, FaultCommit,
                    GuestAccess, HostMap, InvalidateRangeEnd, InvalidateRangeStart, Release,
                    Schedule, SetMemoryRegion, SyncPage, TestYoung)

P = 4096
HUGE = 2 << 20
GIGANTIC = 1 << 30                 # a 1 GiB host page (large-vm's backing)
HVA_BASE = 0x7f0000000000           # 1 GiB aligned
REGION_STRIDE = 16 << 20            # regions never touch each other unless a slot is placed so
GPA_HUGE = HUGE // P                # 512 gfns
GIB = 1 << 30
LARGE_HVA = 0x7e0000000000          # the large-vm guest's memory: 16 TiB below HVA_BASE, 1 TiB aligned
LARGE_GFN = 1 << 20                 # its first gfn (4 GiB), 1 GiB aligned like LARGE_HVA
PROFILES = ("default", "large-vm")


class Source:
    """Where choices come from."""

    def int(self, lo: int, hi: int) -> int:        # inclusive
        raise NotImplementedError

    def bool(self, p: float = 0.5) -> bool:
        return self.int(0, 999) < int(p * 1000)

    def choice(self, options: list):
        return options[self.int(0, len(options) - 1)]

    def weighted(self, table: list[tuple[int, object]]):
        total = sum(w for w, _ in table)
        x = self.int(0, total - 1)
        for w, v in table:
            if x < w:
                return v
            x -= w
        return table[-1][1]


class RandomSource(Source):
    def __init__(self, rng: random.Random):
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)


class HypothesisSource(Source):
    def __init__(self, draw):
        from hypothesis import strategies as st
        self.draw, self.st = draw, st

    def int(self, lo: int, hi: int) -> int:
        return self.draw(self.st.integers(lo, hi))


@dataclass
class Region:
    """A host mapping: [hva, hva+size) backed by 4K or 2M pages."""
    hva: int
    size: int
    page_size: int
    pfn: int


@dataclass
class SlotPlan:
    as_id: int
    id: int
    base_gfn: int
    npages: int
    hva: int

    @property
    def hva_end(self) -> int:
        return self.hva + self.npages * P


@dataclass
class GenConfig:
    address_space_num: int = 2
    max_events: int = 40
    aligned_only: bool = False          # notifier ranges page aligned, as the kernel's mm sends
    kernel_only: bool = False           # only what a running kernel's mm sends: check_well_formed(strict=True)
    x86_shadow_paging: bool = True      # emit sync_page (tlbs_dirty) events
    tasks: bool = False                 # several kernel tasks and a schedule (fuzz/schedule.py)
    profile: str = "default"            # default | large-vm (see profile_config)
    slots: int = 400                    # large-vm: memslots laid over the guest (capped by max_slots)
    max_slots: int = 509                # the arch's KVM_USER_MEM_SLOTS (x86's, the smallest of the big ones)
    guest_bytes: int = 1 << 40          # large-vm: guest memory, backed by 1 GiB host pages

    def __post_init__(self) -> None:
        # every range the kernel's mm sends is page aligned: kernel_only restricts a superset
        # of what aligned_only does (and the report's aligned_only says so)
        if self.kernel_only:
            self.aligned_only = True


def profile_config(profile: str, **kw) -> GenConfig:
    """A GenConfig for a generator profile.  "default": small layouts (1-3 slots at first, 2 MiB
    and 4 KiB host pages, traces of up to 40 events) where edge cases are dense.  "large-vm": a
    big guest as a cloud host runs it: `guest_bytes` (1 TiB) of guest memory in one host mapping
    of 1 GiB pages, split into `slots` (400, at most the arch's KVM_USER_MEM_SLOTS less a few for
    the slots the trace itself creates) memslots of random sizes in 2 MiB steps, contiguous in
    gfn and hva; then traces of up to 10,000 events, one in ten a fault (hundreds per trace),
    the rest notifier events, aging, accesses and memslot updates over that layout."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (one of {', '.join(PROFILES)})")
    if profile == "large-vm":
        kw.setdefault("max_events", 10_000)
    return GenConfig(profile=profile, **kw)


@dataclass
class _Gen:
    src: Source
    cfg: GenConfig
    events: list[Event] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    slots: dict[tuple[int, int], SlotPlan] = field(default_factory=dict)
    next_pfn: int = 0x10000
    next_fault: int = 0
    open_ranges: list[tuple[int, int, bool]] = field(default_factory=list)    # start, end, blockable
    open_faults: list[int] = field(default_factory=list)
    same_task: dict[int, int] = field(default_factory=dict)      # event index -> index whose task it shares

    # ----- layout -------------------------------------------------------------------------
    def region(self) -> Region:
        huge = self.src.bool(0.4)
        size = self.src.choice([HUGE, 2 * HUGE]) if huge else self.src.choice([HUGE, 64 * P])
        hva = HVA_BASE + len(self.regions) * REGION_STRIDE
        pfn = (self.next_pfn + GPA_HUGE - 1) // GPA_HUGE * GPA_HUGE
        self.next_pfn = pfn + size // P + GPA_HUGE
        r = Region(hva, size, HUGE if huge else P, pfn)
        self.regions.append(r)
        self.events.append(HostMap(hva, size, pfn, r.page_size, True))
        return r

    def slot_hva(self, npages: int) -> int:
        """An hva for a new slot: fresh, aliasing an existing slot, or hva-adjacent to one."""
        kinds = [(4, "fresh")]
        if self.slots:
            kinds += [(4, "alias"), (2, "adjacent"), (1, "overlap")]
        kind = self.src.weighted(kinds)
        if kind == "fresh" or not self.slots:
            r = self.src.choice(self.regions) if self.regions and self.src.bool(0.5) else self.region()
            max_off = max(0, r.size // P - npages)
            off = self.src.choice([0, 0, max_off, self.src.int(0, max_off)])
            return r.hva + off * P
        other = self.src.choice(list(self.slots.values()))
        if kind == "alias":
            return other.hva
        if kind == "adjacent":
            return other.hva_end if self.src.bool() else max(P, other.hva - npages * P)
        return other.hva + self.src.int(0, max(0, other.npages - 1)) * P

    def slot_gfn(self, as_id: int, npages: int) -> int:
        """A base gfn: fresh, GPA-adjacent to a slot, or the same gfn as a slot of the other AS."""
        mine = [s for s in self.slots.values() if s.as_id == as_id]
        others = [s for s in self.slots.values() if s.as_id != as_id]
        kinds = [(3, "fresh")]
        if mine:
            kinds += [(3, "after"), (2, "before")]
        if others:
            kinds += [(3, "smm-alias")]
        kind = self.src.weighted(kinds)
        if kind == "after":
            prev = self.src.choice(mine)
            return prev.base_gfn + prev.npages
        if kind == "before":
            return max(0, self.src.choice(mine).base_gfn - npages)
        if kind == "smm-alias":
            return self.src.choice(others).base_gfn
        return self.src.choice([0x100, 0x200, 0x400, 0x1000, 0x1200]) + self.src.choice([0, 0, 1, 3])

    def create_slot(self) -> None:
        as_id = self.src.int(0, self.cfg.address_space_num - 1) if self.src.bool(0.35) else 0
        sid = self.src.int(0, 3)
        if (as_id, sid) in self.slots:
            sid = max(s for a, s in self.slots if a == as_id) + 1
        npages = self.src.weighted([(6, self.src.int(1, 8)), (2, GPA_HUGE), (1, GPA_HUGE + self.src.int(1, 4))])
        hva = self.slot_hva(npages)
        gfn = self.slot_gfn(as_id, npages)
        if npages >= GPA_HUGE and self.src.bool(0.6):
            # line up gfn and hva inside 2M frames so huge mappings can arise
            gfn = gfn - gfn % GPA_HUGE + (hva // P) % GPA_HUGE
        self.events.append(SetMemoryRegion(as_id, sid, 0, gfn * P, npages * P, hva))
        self.slots[(as_id, sid)] = SlotPlan(as_id, sid, gfn, npages, hva)

    def update_slot(self) -> None:
        if not self.slots:
            return self.create_slot()
        s = self.src.choice(list(self.slots.values()))
        kind = self.src.choice(["delete", "move", "flags", "bad"])
        if kind == "delete":
            self.events.append(SetMemoryRegion(s.as_id, s.id, 0, s.base_gfn * P, 0, s.hva))
            del self.slots[(s.as_id, s.id)]
        elif kind == "move":
            gfn = self.slot_gfn(s.as_id, s.npages)
            self.events.append(SetMemoryRegion(s.as_id, s.id, 0, gfn * P, s.npages * P, s.hva))
            s.base_gfn = gfn    # if KVM refuses it (EEXIST), later picks are merely less useful
        elif kind == "flags":
            self.events.append(SetMemoryRegion(s.as_id, s.id, 1, s.base_gfn * P, s.npages * P, s.hva))
        else:
            bad = self.src.choice(["unaligned", "resize", "rehva"])
            size = s.npages * P + (1 if bad == "unaligned" else P if bad == "resize" else 0)
            hva = s.hva + (P if bad == "rehva" else 0)
            self.events.append(SetMemoryRegion(s.as_id, s.id, 0, s.base_gfn * P, size, hva))

    # ----- addresses ----------------------------------------------------------------------
    def nudge(self) -> int:
        if self.cfg.aligned_only:
            return self.src.weighted([(6, 0), (2, P), (2, -P), (1, HUGE)])
        return self.src.weighted([(6, 0), (2, P), (2, -P), (2, 1), (2, -1), (1, P // 2), (1, HUGE)])

    def edge(self) -> int:
        """An interesting hva: a slot's edge, a page inside it, or a region edge."""
        if self.slots and self.src.bool(0.85):
            s = self.src.choice(list(self.slots.values()))
            where = self.src.choice(["start", "end", "inside", "last"])
            base = {"start": s.hva, "end": s.hva_end, "last": s.hva_end - P,
                    "inside": s.hva + self.src.int(0, s.npages - 1) * P}[where]
        elif self.regions:
            r = self.src.choice(self.regions)
            base = self.src.choice([r.hva, r.hva + r.size, r.hva + self.src.int(0, r.size // P) * P])
        else:
            base = HVA_BASE
        return max(0, base + self.nudge())

    def hva_range(self) -> tuple[int, int]:
        start = self.edge()
        if self.cfg.profile == "large-vm":
            # what the mm sends a big guest is mostly local (reclaim, THP, NUMA balancing: a page,
            # a 2 MiB frame, a slot's worth); a range between two random slots of 400 would cover
            # a third of the guest every time, so it is kept, but rare
            # (and the guest is 1 GiB pages: reclaim or DAMON aging a whole hugetlb page)
            shapes = [(1, "to-edge"), (4, "pages"), (1, "empty"), (1, "one-byte"),
                      (4, "huge"), (2, "to-slot-edge"), (1, "gigantic")]
        else:
            shapes = [(4, "to-edge"), (3, "pages"), (1, "empty"), (1, "one-byte"), (1, "huge")]
        if self.cfg.kernel_only:        # the mm never sends an empty range
            shapes = [(w, k) for w, k in shapes if k != "empty"]
        shape = self.src.weighted(shapes)
        if shape == "to-slot-edge":     # to an edge of the slot holding start, or of a neighbour
            home = [s for s in self.slots.values() if s.hva <= start < s.hva_end] or list(self.slots.values())
            s = self.src.choice(home) if home else None
            end = start + P if s is None else self.src.choice([s.hva, s.hva_end, s.hva_end + P]) + self.nudge()
        elif shape == "to-edge":
            end = self.edge()
        elif shape == "pages":
            end = start + self.src.int(1, 4) * P
        elif shape == "empty":
            end = start
        elif shape == "one-byte":
            end = start + 1
        elif shape == "gigantic":
            start = start - start % GIGANTIC
            end = start + GIGANTIC
        else:
            start = start - start % HUGE
            end = start + HUGE
        if self.cfg.aligned_only:
            start, end = start - start % P, end + (-end) % P
        start, end = min(start, end), max(start, end)
        if self.cfg.kernel_only and start == end:     # e.g. "to-edge" back to the same edge
            end = start + P
        return start, end

    def present_page(self, hva: int) -> int | None:
        """The page-aligned hva of a present host page: hva's own page when a region maps it,
        else a page of a random region (None: nothing is mapped yet).  Regions are never
        unmapped (host-remap replaces pages inside an invalidation), so a region's pages are
        the present ones."""
        if any(r.hva <= hva < r.hva + r.size for r in self.regions):
            return hva - hva % P
        if not self.regions:
            return None
        r = self.src.choice(self.regions)
        return r.hva + self.src.int(0, r.size // P - 1) * P

    def kernel_aging(self, op: str) -> Event | None:
        """An aging call as a running kernel makes it (kernel_only): the rmap walk (page_referenced,
        page_idle, khugepaged, DAMON) ages a present pte at a page address, one pte
        [page, page + 4K) or one pmd (the 2 MiB frame holding it) per call; a large-vm guest's
        1 GiB hugetlb pages also as a whole 1 GiB aligned range.  Never an unmapped page."""
        page = self.present_page(self.edge())
        if page is None:
            return None
        if op == "test_young":
            return TestYoung(page)
        shapes = [(4, "pte"), (2, "pmd")] + ([(1, "pud")] if self.cfg.profile == "large-vm" else [])
        size = {"pte": P, "pmd": HUGE, "pud": GIGANTIC}[self.src.weighted(shapes)]
        start = page - page % size
        return (ClearFlushYoung if op == "clear_flush_young" else ClearYoung)(start, start + size)

    def gfn_target(self) -> tuple[int, int]:
        if not self.slots:
            return 0, 0x100
        s = self.src.choice(list(self.slots.values()))
        off = self.src.choice([0, s.npages - 1, self.src.int(0, s.npages - 1)])
        return s.as_id, s.base_gfn + off

    # ----- events ---------------------------------------------------------------------------
    def large_layout(self) -> None:
        """large-vm: one host mapping of 1 GiB pages for the whole guest, cut into memslots."""
        size = self.cfg.guest_bytes - self.cfg.guest_bytes % GIB or GIB
        pfn = (self.next_pfn + GIB // P - 1) // (GIB // P) * (GIB // P)
        self.next_pfn = pfn + size // P + GPA_HUGE
        self.regions.append(Region(LARGE_HVA, size, GIB, pfn))
        self.events.append(HostMap(LARGE_HVA, size, pfn, GIB, True))
        frames = size // HUGE
        n = max(1, min(self.cfg.slots, self.cfg.max_slots - 8, frames))
        cuts = {0, frames}
        while len(cuts) < n + 1:
            cuts.add(self.src.int(1, frames - 1))
        edges = sorted(cuts)
        for sid, (a, b) in enumerate(zip(edges, edges[1:])):
            gfn, npages, hva = LARGE_GFN + a * GPA_HUGE, (b - a) * GPA_HUGE, LARGE_HVA + a * HUGE
            self.events.append(SetMemoryRegion(0, sid, 0, gfn * P, npages * P, hva))
            self.slots[(0, sid)] = SlotPlan(0, sid, gfn, npages, hva)

    def step(self) -> None:
        if self.cfg.profile == "large-vm":     # faults are rarer than notifier events on a big guest
            kinds = [(6, "fault"), (2, "fault-begin"), (8, "access"), (16, "invalidate"),
                     (5, "cow"), (10, "age"), (2, "slot"), (1, "host-remap")]
        else:
            kinds = [(22, "fault"), (4, "fault-begin"), (8, "access"), (16, "invalidate"),
                     (5, "cow"), (10, "age"), (4, "slot"), (3, "host-remap")]
        if self.open_ranges:
            kinds.append((10, "end"))
        if self.open_faults:
            kinds.append((8, "commit"))
        if self.cfg.x86_shadow_paging:
            kinds.append((3, "sync"))
        if self.cfg.tasks and self.open_ranges:
            kinds.append((6, "split"))
        kind = self.src.weighted(kinds)
        if kind in ("fault", "fault-begin"):
            as_id, gfn = self.gfn_target()
            n = self.next_fault
            self.next_fault += 1
            self.events.append(FaultBegin(n, as_id, gfn, self.src.bool(0.4)))
            if kind == "fault":
                self.events.append(FaultCommit(n))
            else:
                self.open_faults.append(n)
        elif kind == "commit":
            n = self.open_faults.pop(self.src.int(0, len(self.open_faults) - 1))
            self.events.append(FaultCommit(n))
        elif kind == "access":
            as_id, gfn = self.gfn_target()
            self.events.append(GuestAccess(as_id, gfn, self.src.bool(0.3)))
        elif kind == "invalidate":
            start, end = self.hva_range()
            blockable = self.src.bool(0.8)
            self.events.append(InvalidateRangeStart(start, end, blockable))
            self.open_ranges.append((start, end, blockable))
        elif kind == "end":     # the same struct mmu_notifier_range as its start: same flags
            self.events.append(InvalidateRangeEnd(*self.open_ranges.pop(self.src.int(0, len(self.open_ranges) - 1))))
        elif kind == "cow":
            # what wp_page_copy / KSM do: start, set_pte_at_notify, end; or change_pte bare.
            # set_pte_at_notify replaces a present pte: the page must be in a mapped region
            hva = self.edge()
            # kernel_only: a 4K host page (the mm splits a huge pmd before set_pte_at_notify,
            # and a hugetlb page never gets one)
            regions = [r for r in self.regions if r.page_size == P] if self.cfg.kernel_only else self.regions
            if not any(r.hva <= hva < r.hva + r.size for r in regions):
                if not regions:
                    return
                r = self.src.choice(regions)
                hva = r.hva + self.src.int(0, r.size // P - 1) * P + (hva % P)
            hva_page = hva - hva % P
            pfn = self.next_pfn
            self.next_pfn += 1
            # kernel_only: always inside an invalidation of its page, as set_pte_at_notify runs
            wrapped = True if self.cfg.kernel_only else self.src.bool(0.7)
            if wrapped:
                self.events.append(InvalidateRangeStart(hva_page, hva_page + P, True))
            self.events.append(ChangePte(hva if not self.cfg.aligned_only else hva_page, pfn,
                                         self.src.bool(0.3)))
            if wrapped:
                self.events.append(InvalidateRangeEnd(hva_page, hva_page + P, True))
        elif kind == "age":
            op = self.src.choice(["clear_flush_young", "clear_young", "test_young"])
            if self.cfg.kernel_only:
                ev = self.kernel_aging(op)
                if ev is not None:
                    self.events.append(ev)
            elif op == "test_young":
                self.events.append(TestYoung(self.edge() if not self.cfg.aligned_only else self.hva_range()[0]))
            else:
                start, end = self.hva_range()
                self.events.append((ClearFlushYoung if op == "clear_flush_young" else ClearYoung)(start, end))
        elif kind == "slot":
            self.update_slot() if self.src.bool(0.6) else self.create_slot()
        elif kind == "host-remap":
            # the mm replaces part of a region: notifier start, new pages, notifier end
            if not self.regions:
                return
            r = self.src.choice(self.regions)
            npages = 1 if r.page_size == P else r.page_size // P
            first = self.src.int(0, r.size // (npages * P) - 1) * npages
            hva = r.hva + first * P
            pfn = self.next_pfn + (-self.next_pfn) % npages
            self.next_pfn = pfn + npages
            self.events.append(InvalidateRangeStart(hva, hva + npages * P, True))
            self.events.append(HostMap(hva, npages * P, pfn, r.page_size, True))
            self.events.append(InvalidateRangeEnd(hva, hva + npages * P, True))
        elif kind == "sync":
            as_id, gfn = self.gfn_target()
            self.events.append(SyncPage(as_id, gfn))
        elif kind == "split":
            # a huge pmd split inside an open invalidation of the same task (mprotect's
            # change_pmd_range -> __split_huge_pmd): its own start/end of the whole 2 MiB frame
            start = self.open_ranges[-1][0]
            owner = max(i for i, e in enumerate(self.events) if isinstance(e, InvalidateRangeStart)
                        and (e.start, e.end, e.blockable) == self.open_ranges[-1])
            frame = start - start % HUGE
            self.same_task[len(self.events)] = owner
            self.same_task[len(self.events) + 1] = owner
            self.events += [InvalidateRangeStart(frame, frame + HUGE, True), InvalidateRangeEnd(frame, frame + HUGE, True)]

    def build(self) -> list[Event]:
        if self.cfg.profile == "large-vm":
            self.large_layout()
            budget = self.src.int(max(len(self.events) + 1, self.cfg.max_events // 2), max(len(self.events) + 1, self.cfg.max_events))
        else:
            for _ in range(self.src.int(1, 3)):
                self.create_slot()
            budget = self.src.int(3, self.cfg.max_events)
        while len(self.events) < budget:
            self.step()
        while self.open_ranges:
            self.events.append(InvalidateRangeEnd(*self.open_ranges.pop()))
        if self.cfg.tasks:
            # a vCPU inside a fault always finishes it (it holds kvm->srcu until then)
            self.events += [FaultCommit(n) for n in self.open_faults]
            self.open_faults.clear()
        if self.src.bool(0.05):
            # the mm exits only once no vCPU thread is inside a fault; nothing follows release
            self.events += [FaultCommit(n) for n in self.open_faults]
            self.open_faults.clear()
            self.events.append(Release())
        if self.cfg.tasks:
            return self.assign_tasks()
        return self.events

    def assign_tasks(self) -> list[Event]:
        """Give every event the kernel task that would issue it (two mm contexts, two vCPUs, the
        memslot ioctl), keeping pairs in one task, then maybe a schedule that departs from the
        default order (fuzz/schedule.py)."""
        out: list[Event] = []
        open_by_range: dict[tuple, list[str]] = {}
        fault_task: dict[int, str] = {}
        for i, ev in enumerate(self.events):
            if i in self.same_task:
                task = out[self.same_task[i]].task
                if isinstance(ev, InvalidateRangeEnd):
                    stack = open_by_range.get((ev.start, ev.end, ev.blockable), [])
                    if task in stack:
                        stack.reverse()
                        stack.remove(task)
                        stack.reverse()
            elif isinstance(ev, SetMemoryRegion):
                task = "ioctl"
            elif isinstance(ev, FaultBegin):
                task = fault_task.setdefault(ev.fault, f"vcpu{self.src.int(0, 1)}")
            elif isinstance(ev, FaultCommit):
                task = fault_task.get(ev.fault, "vcpu0")
            elif isinstance(ev, (GuestAccess, SyncPage)):
                task = f"vcpu{self.src.int(0, 1)}"
            elif isinstance(ev, InvalidateRangeEnd):
                stack = open_by_range.get((ev.start, ev.end, ev.blockable)) or ["mm0"]
                task = stack.pop()
            elif isinstance(ev, (HostMap, ChangePte)) and out and isinstance(self.events[i - 1], InvalidateRangeStart):
                task = out[-1].task          # the pte change inside its own invalidation
            elif isinstance(ev, Release):
                task = "mm0"
            else:
                task = f"mm{self.src.int(0, 1)}"
            if isinstance(ev, InvalidateRangeStart):
                open_by_range.setdefault((ev.start, ev.end, ev.blockable), []).append(task)
            out.append(dataclasses.replace(ev, task=task))
        tasks = sorted({e.task for e in out})
        kind = self.src.weighted([(5, "preempt"), (2, "pct"), (3, "default")])
        if kind == "preempt":
            points = sorted({(self.src.int(0, 6 * len(out)), self.src.choice(tasks))
                             for _ in range(self.src.int(1, 3))})
            out.insert(0, Schedule(preempt=tuple(points)))
        elif kind == "pct":
            out.insert(0, Schedule(pct=(self.src.int(0, (1 << 32) - 1), self.src.int(2, 4))))
        if kind != "default" and self.src.weighted([(3, False), (1, True)]):
            # a walk that may block does not yield at one or two of its first need_resched()
            # queries (walks ask after each leaf they zap, so the first few are the ones met)
            skip = tuple(sorted({self.src.int(0, 7) for _ in range(self.src.int(1, 2))}))
            out[0] = dataclasses.replace(out[0], no_resched=skip)
        return out


def generate(src: Source, cfg: GenConfig | None = None) -> list[Event]:
    return _Gen(src, cfg or GenConfig()).build()


def traces(cfg: GenConfig | None = None):
    """A hypothesis strategy for traces (same generator as the random engine)."""
    from hypothesis import strategies as st

    @st.composite
    def _traces(draw):
        return generate(HypothesisSource(draw), cfg)
    return _traces()

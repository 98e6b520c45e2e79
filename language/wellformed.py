"""Well-formed traces: what the kernel's mm and KVM's vCPUs could actually send.

A trace the kernel cannot produce is an input error (TraceError), never a divergence.  The
check walks the events once, keeping a small `WalkState`; for each event every rule in `RULES`
is asked in order (a rule only reads the state and raises `TraceError` with one line naming
the event index, its op and the field), then every tracker in `TRACKERS` advances the state.
To add a rule: write `def _rule_x(st, i, ev)` raising through `st.fail(...)`, add it to
`RULES`, and if it needs state, a field in `WalkState` and a tracker in `TRACKERS`.
docs/ARCHITECTURE.md ("Well-formed traces") gives the kernel reason for each rule.

`ALLOWANCES` are rules the kernel's mm also obeys but which the fuzzer deliberately breaks
because the exploration relies on it (unaligned, empty and wide ranges reach walker corner
cases; a change_pte outside an invalidation is what v5.13 WARNs about, one inside a huge host
page reaches the huge-leaf paths; KVM's aging never reads host ptes).  They are named, checked
only with `strict=True`, and what needs them is tagged elsewhere (fuzz.reachability
"unaligned-only", oracles.reference.trace_contexts "bare-change_pte-during-fault").
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Callable, NoReturn

from language.trace import (MAIN_TASK, TASK_ROLES, ChangePte, ClearFlushYoung, ClearYoung, Event, FaultBegin,
                    FaultCommit, HostMap, InvalidateRangeEnd, InvalidateRangeStart, Release, Schedule,
                    TestYoung, TraceError, task_role)

P = 4096
PAGE_SIZES = (4096, 2 << 20, 1 << 30)
PMD = 2 << 20
PUD = 1 << 30
USER_VA_END = 1 << 57           # above every arch's user address space (x86 LA57: 56 bits)
RANGE_TYPES = (InvalidateRangeStart, InvalidateRangeEnd, ClearFlushYoung, ClearYoung)


class PageRuns:
    """A set of host page numbers kept as sorted, disjoint, merged runs [lo, hi), so a mapping
    of any size costs one run (the models' host page table is kept the same way)."""

    def __init__(self) -> None:
        self._lo: list[int] = []
        self._hi: list[int] = []

    def runs(self, lo: int = 0, hi: int | None = None) -> list[tuple[int, int]]:
        """The runs meeting pages [lo, hi), clipped to it (every run when hi is None)."""
        if hi is None:
            return list(zip(self._lo, self._hi))
        i = max(bisect_right(self._lo, lo) - 1, 0)
        out = []
        while i < len(self._lo) and self._lo[i] < hi:
            if self._hi[i] > lo:
                out.append((max(self._lo[i], lo), min(self._hi[i], hi)))
            i += 1
        return out

    def __contains__(self, page: int) -> bool:
        i = bisect_right(self._lo, page) - 1
        return i >= 0 and page < self._hi[i]

    def __len__(self) -> int:
        return sum(h - l for l, h in zip(self._lo, self._hi))

    def __bool__(self) -> bool:
        return bool(self._lo)

    def intersects(self, lo: int, hi: int) -> bool:
        return lo < hi and bool(self.runs(lo, hi))

    def _replace(self, lo: int, hi: int, keep: bool) -> None:
        """Pages [lo, hi) become present (keep) or absent."""
        if lo >= hi:
            return
        i = bisect_left(self._hi, lo)              # first run that ends at or after lo
        j = bisect_right(self._lo, hi)             # runs from j on start after hi
        new_lo, new_hi = [], []
        if keep:
            # merge with every run touching [lo, hi], ends included
            if i < j:
                lo, hi = min(lo, self._lo[i]), max(hi, self._hi[j - 1])
            new_lo, new_hi = [lo], [hi]
        else:
            for k in range(i, j):
                if self._lo[k] < lo:
                    new_lo.append(self._lo[k])
                    new_hi.append(lo)
                if self._hi[k] > hi:
                    new_lo.append(hi)
                    new_hi.append(self._hi[k])
        self._lo[i:j], self._hi[i:j] = new_lo, new_hi

    def add(self, lo: int, hi: int) -> None:
        self._replace(lo, hi, True)

    def remove(self, lo: int, hi: int) -> None:
        self._replace(lo, hi, False)


@dataclass
class WalkState:
    """What the rules need to know about the events before the current one."""
    source: str = "<trace>"
    open_ranges: list[tuple[int, int, bool]] = field(default_factory=list)   # start, end, blockable
    faults: set[int] = field(default_factory=set)
    host_pages: PageRuns = field(default_factory=PageRuns)    # mapped host pages (numbers)
    huge_pages: PageRuns = field(default_factory=PageRuns)    # those mapped by a 2M or 1G host page
    released: int | None = None         # index of the release event, once there is one
    range_tasks: list[tuple[str, int, int]] = field(default_factory=list)     # task, start, end
    fault_tasks: dict[int, str] = field(default_factory=dict)
    index: int = 0                      # the event being checked

    def fail(self, i: int, ev: Event, fld: str, problem: str) -> NoReturn:
        raise TraceError(f"{self.source}: event {i} ({ev.op}): field {fld}: {problem}")

    def covered(self, page: int) -> bool:
        """Is host page number `page` inside an open invalidation?"""
        return any(s <= page * P and (page + 1) * P <= e for s, e, _ in self.open_ranges)

    def mapped_in(self, start: int, end: int) -> bool:
        """Does [start, end) intersect a mapped host page?  (As the page walk did: the pages
        from start's to the one holding end - 1; an empty range at an unaligned address reads
        the page it lies in.)"""
        return self.host_pages.intersects(start // P, (end + P - 1) // P)

    def first_uncovered(self, lo: int, hi: int) -> int | None:
        """The first mapped host page in pages [lo, hi) no open invalidation covers, or None."""
        covered = [(-(-s // P), e // P) for s, e, _ in self.open_ranges]
        for page, end in self.host_pages.runs(lo, hi):
            moved = True
            while moved and page < end:
                moved = False
                for c_lo, c_hi in covered:
                    if c_lo <= page < c_hi:
                        page, moved = c_hi, True
            if page < end:
                return page
        return None


Rule = Callable[[WalkState, int, Event], None]

# ---------------------------------------------------------------------------- rules


def _rule_range_order(st: WalkState, i: int, ev: Event) -> None:
    """A notifier range is [start, end) with start <= end."""
    if isinstance(ev, (InvalidateRangeStart, InvalidateRangeEnd, ClearFlushYoung, ClearYoung)):
        if ev.start > ev.end:
            st.fail(i, ev, "end", f"{ev.end:#x} < start {ev.start:#x}")


def _rule_end_pairs_start(st: WalkState, i: int, ev: Event) -> None:
    """invalidate_range_end closes an open invalidate_range_start of the same range, with the
    same blockable flag (the mm passes the same struct mmu_notifier_range to both)."""
    if not isinstance(ev, InvalidateRangeEnd):
        return
    if (ev.start, ev.end, ev.blockable) in st.open_ranges:
        return
    if any((s, e) == (ev.start, ev.end) for s, e, _ in st.open_ranges):
        st.fail(i, ev, "blockable", f"{str(ev.blockable).lower()} but the open invalidate_range_start "
                f"of [{ev.start:#x}, {ev.end:#x}) has {str(not ev.blockable).lower()}")
    st.fail(i, ev, "start", f"no open invalidate_range_start for [{ev.start:#x}, {ev.end:#x})")


def _rule_fault_pairs(st: WalkState, i: int, ev: Event) -> None:
    """A fault id is begun once, then committed once."""
    if isinstance(ev, FaultBegin) and ev.fault in st.faults:
        st.fail(i, ev, "fault", f"fault {ev.fault} is already in progress")
    if isinstance(ev, FaultCommit) and ev.fault not in st.faults:
        st.fail(i, ev, "fault", f"fault {ev.fault} was not begun")


def _rule_host_page_size(st: WalkState, i: int, ev: Event) -> None:
    """Host mappings are 4K, 2M or 1G pages, aligned to their size."""
    if not isinstance(ev, HostMap):
        return
    if ev.page_size not in PAGE_SIZES:
        st.fail(i, ev, "page_size", f"{ev.page_size:#x} is not 4K, 2M or 1G")
    mask = (ev.page_size if ev.pfn is not None else P) - 1
    if ev.hva & mask or ev.size & mask or (ev.pfn is not None and (ev.pfn << 12) & mask):
        st.fail(i, ev, "hva", f"mapping not aligned to its page size {ev.page_size:#x}")


def _rule_host_map_bounds(st: WalkState, i: int, ev: Event) -> None:
    """A host mapping lies in the user address space: hva + size stays below the top of the
    largest user address space of any arch (x86 LA57).  No limit on the size itself: the
    models keep host mappings as extents, so a 16 TiB mapping costs what a 4K one does."""
    if not isinstance(ev, HostMap):
        return
    if ev.hva + ev.size > USER_VA_END:
        st.fail(i, ev, "size", f"[{ev.hva:#x}, +{ev.size:#x}) ends above the user address space")


def _rule_host_change_inside_invalidation(st: WalkState, i: int, ev: Event) -> None:
    """The mm changes or removes a present host page only inside an invalidation of it."""
    if not isinstance(ev, HostMap):
        return
    page = st.first_uncovered(ev.hva // P, (ev.hva + ev.size) // P)
    if page is not None:
        st.fail(i, ev, "hva", f"changes the mapped host page {page * P:#x} outside any "
                "invalidation of it (the mm always invalidates first)")


def _rule_change_pte_present(st: WalkState, i: int, ev: Event) -> None:
    """set_pte_at_notify only replaces a present pte.  (Outside an invalidation of its page
    is allowed on purpose: see the bare-change_pte allowance.)"""
    if isinstance(ev, ChangePte) and ev.hva // P not in st.host_pages:
        st.fail(i, ev, "hva", f"{ev.hva:#x} is in no mapped host page "
                "(set_pte_at_notify only replaces a present pte)")


def _rule_nothing_after_release(st: WalkState, i: int, ev: Event) -> None:
    """release is the last event.  mmu_notifier_release runs from exit_mmap once mm_users is
    0: the mm unhooks KVM's notifier (no notifier event, no second release), no task has
    kvm->mm as its mm any more (every vCPU and VM ioctl returns -EIO: no fault, access,
    sync_page or memslot update) and the address space is being torn down (no host_map)."""
    if st.released is not None:
        st.fail(i, ev, "op", f"after release at event {st.released} (the mm has exited and "
                "unhooked the notifier: nothing can follow)")


def _rule_release_without_fault_in_flight(st: WalkState, i: int, ev: Event) -> None:
    """No fault is in flight at release: a vCPU thread inside a fault holds a reference on the
    mm (mm_users), so the mm cannot exit until the fault has finished."""
    if isinstance(ev, Release) and st.faults:
        st.fail(i, ev, "op", f"fault {min(st.faults)} is still in flight (its vCPU thread holds "
                "the mm, which cannot exit before the fault ends)")


# ----- allowances: kernel rules the fuzzer breaks on purpose (checked with strict=True) -----


def _allow_unaligned(st: WalkState, i: int, ev: Event) -> None:
    """The mm sends page-aligned ranges and page addresses (mmu_notifier_range_init callers
    pass vma/page boundaries).  Allowed: unaligned ones reach walker corner cases, and a
    divergence that needs them is tagged "unaligned-only" (fuzz.reachability)."""
    if isinstance(ev, RANGE_TYPES):
        for name in ("start", "end"):
            if getattr(ev, name) % P:
                st.fail(i, ev, name, f"{getattr(ev, name):#x} is not page aligned")
    elif isinstance(ev, (ChangePte, TestYoung)) and ev.hva % P:
        st.fail(i, ev, "hva", f"{ev.hva:#x} is not page aligned")


def _allow_empty_range(st: WalkState, i: int, ev: Event) -> None:
    """The mm never sends an empty notifier range.  Allowed: walkers must survive one."""
    if isinstance(ev, RANGE_TYPES) and ev.start == ev.end:
        st.fail(i, ev, "end", f"empty range at {ev.start:#x}")


def _allow_bare_change_pte(st: WalkState, i: int, ev: Event) -> None:
    """set_pte_at_notify (wp_page_copy, KSM, uprobes) runs inside an invalidation of its page.
    Allowed: v5.13 WARNs on a bare one and the oracle tags what follows from it
    (oracles.reference.trace_contexts, "bare-change_pte-during-fault")."""
    if isinstance(ev, ChangePte) and not st.covered(ev.hva // P):
        st.fail(i, ev, "hva", f"{ev.hva:#x} is in no open invalidation (set_pte_at_notify runs "
                "inside one)")


def _allow_change_pte_in_huge_page(st: WalkState, i: int, ev: Event) -> None:
    """set_pte_at_notify replaces one 4K pte (wp_page_copy, KSM, uprobes): a page the host maps
    with a transparent huge pmd is split first (__split_huge_pmd, with its own invalidation of
    the whole 2 MiB, after which the host maps 4K ptes), and a hugetlb page never gets one.
    Allowed: a change_pte inside a huge host page reaches the walkers' huge-leaf handling, and
    a fault in flight sees no split (its retry check is all that stands in the way)."""
    if isinstance(ev, ChangePte) and ev.hva // P in st.huge_pages:
        st.fail(i, ev, "hva", f"{ev.hva:#x} is inside a huge host page (set_pte_at_notify replaces a "
                "4K pte: the mm splits a huge pmd first, and never calls it on a hugetlb page)")


def _allow_unmapped_aging(st: WalkState, i: int, ev: Event) -> None:
    """clear_flush_young, clear_young and test_young come from rmap walks (page_referenced,
    page_idle) and khugepaged over present ptes: their range or address lies on a mapped host
    page.  Allowed: KVM's aging handlers read only memslots and KVM's own mappings, never the
    host page table, so the same trace with the host page mapped (and not faulted) shows the
    same; the minimizer drops such a host_map as irrelevant."""
    if isinstance(ev, TestYoung):
        if ev.hva // P not in st.host_pages:
            st.fail(i, ev, "hva", f"{ev.hva:#x} is in no mapped host page (the mm ages only present ptes)")
    elif isinstance(ev, (ClearFlushYoung, ClearYoung)) and not st.mapped_in(ev.start, ev.end):
        st.fail(i, ev, "start", f"[{ev.start:#x}, {ev.end:#x}) touches no mapped host page "
                "(the mm ages only present ptes)")


def _allow_wide_aging_range(st: WalkState, i: int, ev: Event) -> None:
    """An rmap walk ages one pte, one pmd or one hugetlb page per call: [addr, addr + PAGE_SIZE),
    a 2 MiB aligned [addr, addr + PMD_SIZE), or a 1 GiB aligned [addr, addr + PUD_SIZE) (a 1 GiB
    hugetlb folio: page_referenced, DAMON's damon_hugetlb_mkold).  Allowed: other ranges drive
    the walkers' loops."""
    if isinstance(ev, (ClearFlushYoung, ClearYoung)):
        size = ev.end - ev.start
        if not (size == P or (size in (PMD, PUD) and ev.start % size == 0)):
            st.fail(i, ev, "end", f"[{ev.start:#x}, {ev.end:#x}) is neither one page, one 2 MiB pmd "
                    "nor one 1 GiB hugetlb page")


def _rule_task_role(st: WalkState, i: int, ev: Event) -> None:
    """A task issues only what its kind of kernel task can: the mm its notifier events and pte
    changes, a vCPU its faults and accesses, the memslot ioctl its updates ("main", the one task
    of a trace without tasks, issues anything)."""
    if ev.task != MAIN_TASK and not isinstance(ev, Schedule):
        role = task_role(ev.task)
        if ev.op not in TASK_ROLES[role]:
            st.fail(i, ev, "task", f"a {role} task ({ev.task}) cannot issue {ev.op}; it issues "
                    f"{', '.join(TASK_ROLES[role])}")


def _rule_pairs_in_one_task(st: WalkState, i: int, ev: Event) -> None:
    """invalidate_range_end comes from the task that started that invalidation, and a fault is
    committed by the vCPU that began it (a start/end pair is one call chain of one task)."""
    if isinstance(ev, InvalidateRangeEnd) and not any(
            t == ev.task and (s, e) == (ev.start, ev.end) for t, s, e in st.range_tasks):
        owner = next((t for t, s, e in st.range_tasks if (s, e) == (ev.start, ev.end)), None)
        if owner is not None:
            st.fail(i, ev, "task", f"{ev.task} ends the invalidation of [{ev.start:#x}, {ev.end:#x}) "
                    f"that {owner} started")
    if isinstance(ev, FaultCommit) and st.fault_tasks.get(ev.fault, ev.task) != ev.task:
        st.fail(i, ev, "task", f"{ev.task} commits fault {ev.fault}, which {st.fault_tasks[ev.fault]} began")


def _rule_schedule_first(st: WalkState, i: int, ev: Event) -> None:
    """A schedule directive is not an event: at most one, before every event."""
    if isinstance(ev, Schedule) and i != 0:
        st.fail(i, ev, "op", "a schedule directive must be the first entry of the trace (and only one)")


RULES: list[Rule] = [
    _rule_schedule_first,
    _rule_task_role,
    _rule_pairs_in_one_task,
    _rule_nothing_after_release,
    _rule_release_without_fault_in_flight,
    _rule_range_order,
    _rule_end_pairs_start,
    _rule_fault_pairs,
    _rule_host_page_size,
    _rule_host_map_bounds,
    _rule_host_change_inside_invalidation,
    _rule_change_pte_present,
]

ALLOWANCES: dict[str, Rule] = {
    "unaligned": _allow_unaligned,
    "empty-range": _allow_empty_range,
    "bare-change_pte": _allow_bare_change_pte,
    "change_pte-in-huge-page": _allow_change_pte_in_huge_page,
    "unmapped-aging": _allow_unmapped_aging,
    "wide-aging-range": _allow_wide_aging_range,
}

# ---------------------------------------------------------------------------- trackers


def _track_invalidations(st: WalkState, ev: Event) -> None:
    if isinstance(ev, InvalidateRangeStart):
        st.open_ranges.append((ev.start, ev.end, ev.blockable))
        st.range_tasks.append((ev.task, ev.start, ev.end))
    elif isinstance(ev, InvalidateRangeEnd):
        st.open_ranges.remove((ev.start, ev.end, ev.blockable))
        for k in range(len(st.range_tasks) - 1, -1, -1):
            if st.range_tasks[k] == (ev.task, ev.start, ev.end):
                del st.range_tasks[k]
                break


def _track_faults(st: WalkState, ev: Event) -> None:
    if isinstance(ev, FaultBegin):
        st.faults.add(ev.fault)
        st.fault_tasks[ev.fault] = ev.task
    elif isinstance(ev, FaultCommit):
        st.faults.discard(ev.fault)
        st.fault_tasks.pop(ev.fault, None)


def _track_host_pages(st: WalkState, ev: Event) -> None:
    if isinstance(ev, HostMap):
        lo, hi = ev.hva // P, (ev.hva + ev.size) // P
        if ev.pfn is None:
            st.host_pages.remove(lo, hi)
        else:
            st.host_pages.add(lo, hi)
        if ev.pfn is not None and ev.page_size > P:
            st.huge_pages.add(lo, hi)
        elif st.huge_pages:
            st.huge_pages.remove(lo, hi)


def _track_release(st: WalkState, ev: Event) -> None:
    if isinstance(ev, Release) and st.released is None:
        st.released = st.index


TRACKERS: list[Callable[[WalkState, Event], None]] = [
    _track_release,
    _track_invalidations,
    _track_faults,
    _track_host_pages,
]

# ---------------------------------------------------------------------------- entry points


def check_well_formed(events: list[Event], source: str = "<trace>", strict: bool = False) -> None:
    """Raise TraceError (one line: source, event index, op, field, problem) for the first
    event the kernel's mm and KVM could not have sent after the ones before it.  strict:
    also enforce the ALLOWANCES (exactly what a running kernel sends)."""
    st = WalkState(source=source)
    rules = RULES + (list(ALLOWANCES.values()) if strict else [])
    for i, ev in enumerate(events):
        st.index = i
        for rule in rules:
            rule(st, i, ev)
        for track in TRACKERS:
            track(st, ev)
    _check_tasks_finish(st, events)


def _check_tasks_finish(st: WalkState, events: list[Event]) -> None:
    """In a trace of several tasks every task must be able to finish: each invalidation it
    opens is ended and each fault it begins is committed by it (otherwise a lock it holds in
    between would be held forever, and a deadlock found there would be the trace's, not the
    kernel's).  One-task traces keep their older freedom: they end wherever they like."""
    if not any(e.task != MAIN_TASK for e in events):
        return
    for i, ev in enumerate(events):
        if isinstance(ev, InvalidateRangeStart) and (ev.task, ev.start, ev.end) in st.range_tasks:
            st.fail(i, ev, "task", f"{ev.task} never ends its invalidation of [{ev.start:#x}, {ev.end:#x}): "
                    "its task cannot finish")
        if isinstance(ev, FaultBegin) and ev.fault in st.fault_tasks:
            st.fail(i, ev, "task", f"{ev.task} never commits fault {ev.fault}: its task cannot finish")


def allowances_needed(events: list[Event]) -> set[str]:
    """The ALLOWANCES a well-formed trace uses: the kernel rules it breaks on purpose (empty:
    a running kernel could send exactly this trace).  The trace must pass check_well_formed."""
    st = WalkState()
    needed: set[str] = set()
    for i, ev in enumerate(events):
        st.index = i
        for name, rule in ALLOWANCES.items():
            if name not in needed:
                try:
                    rule(st, i, ev)
                except TraceError:
                    needed.add(name)
        for track in TRACKERS:
            track(st, ev)
    return needed


def well_formed(events: list[Event], strict: bool = False) -> bool:
    try:
        check_well_formed(events, strict=strict)
    except TraceError:
        return False
    return True

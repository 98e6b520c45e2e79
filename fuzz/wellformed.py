"""Well-formed traces: what the kernel's mm and KVM's vCPUs could actually send.

A trace the kernel cannot produce is an input error (TraceError), never a divergence.  The
check walks the events once, keeping a small `WalkState`; for each event every rule in `RULES`
is asked in order (a rule only reads the state and raises `TraceError` with one line naming
the event index, its op and the field), then every tracker in `TRACKERS` advances the state.
To add a rule: write `def _rule_x(st, i, ev)` raising through `st.fail(...)`, add it to
`RULES`, and if it needs state, a field in `WalkState` and a tracker in `TRACKERS`.
docs/ARCHITECTURE.md ("Well-formed traces") gives the kernel reason for each rule.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NoReturn

from .trace import (ChangePte, ClearFlushYoung, ClearYoung, Event, FaultBegin, FaultCommit,
                    HostMap, InvalidateRangeEnd, InvalidateRangeStart, TraceError)

P = 4096
PAGE_SIZES = (4096, 2 << 20, 1 << 30)


@dataclass
class WalkState:
    """What the rules need to know about the events before the current one."""
    source: str = "<trace>"
    open_ranges: list[tuple[int, int]] = field(default_factory=list)
    faults: set[int] = field(default_factory=set)
    host_pages: set[int] = field(default_factory=set)

    def fail(self, i: int, ev: Event, fld: str, problem: str) -> NoReturn:
        raise TraceError(f"{self.source}: event {i} ({ev.op}): field {fld}: {problem}")

    def covered(self, page: int) -> bool:
        """Is host page number `page` inside an open invalidation?"""
        return any(s <= page * P and (page + 1) * P <= e for s, e in self.open_ranges)


Rule = Callable[[WalkState, int, Event], None]

# ---------------------------------------------------------------------------- rules


def _rule_range_order(st: WalkState, i: int, ev: Event) -> None:
    """A notifier range is [start, end) with start <= end."""
    if isinstance(ev, (InvalidateRangeStart, InvalidateRangeEnd, ClearFlushYoung, ClearYoung)):
        if ev.start > ev.end:
            st.fail(i, ev, "end", f"{ev.end:#x} < start {ev.start:#x}")


def _rule_end_pairs_start(st: WalkState, i: int, ev: Event) -> None:
    """invalidate_range_end closes an open invalidate_range_start of the same range."""
    if isinstance(ev, InvalidateRangeEnd) and (ev.start, ev.end) not in st.open_ranges:
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


def _rule_host_change_inside_invalidation(st: WalkState, i: int, ev: Event) -> None:
    """The mm changes or removes a present host page only inside an invalidation of it."""
    if not isinstance(ev, HostMap):
        return
    for page in range(ev.hva // P, (ev.hva + ev.size) // P):
        if page in st.host_pages and not st.covered(page):
            st.fail(i, ev, "hva", f"changes the mapped host page {page * P:#x} outside any "
                    "invalidation of it (the mm always invalidates first)")


def _rule_change_pte_present(st: WalkState, i: int, ev: Event) -> None:
    """set_pte_at_notify only replaces a present pte.  (Outside an invalidation of its page
    is allowed on purpose: v5.13 WARNs on it, and the oracle tags what follows from it.)"""
    if isinstance(ev, ChangePte) and ev.hva // P not in st.host_pages:
        st.fail(i, ev, "hva", f"{ev.hva:#x} is in no mapped host page "
                "(set_pte_at_notify only replaces a present pte)")


RULES: list[Rule] = [
    _rule_range_order,
    _rule_end_pairs_start,
    _rule_fault_pairs,
    _rule_host_page_size,
    _rule_host_change_inside_invalidation,
    _rule_change_pte_present,
]

# ---------------------------------------------------------------------------- trackers


def _track_invalidations(st: WalkState, ev: Event) -> None:
    if isinstance(ev, InvalidateRangeStart):
        st.open_ranges.append((ev.start, ev.end))
    elif isinstance(ev, InvalidateRangeEnd):
        st.open_ranges.remove((ev.start, ev.end))


def _track_faults(st: WalkState, ev: Event) -> None:
    if isinstance(ev, FaultBegin):
        st.faults.add(ev.fault)
    elif isinstance(ev, FaultCommit):
        st.faults.discard(ev.fault)


def _track_host_pages(st: WalkState, ev: Event) -> None:
    if isinstance(ev, HostMap):
        pages = range(ev.hva // P, (ev.hva + ev.size) // P)
        if ev.pfn is None:
            st.host_pages.difference_update(pages)
        else:
            st.host_pages.update(pages)


TRACKERS: list[Callable[[WalkState, Event], None]] = [
    _track_invalidations,
    _track_faults,
    _track_host_pages,
]

# ---------------------------------------------------------------------------- entry points


def check_well_formed(events: list[Event], source: str = "<trace>") -> None:
    """Raise TraceError (one line: source, event index, op, field, problem) for the first
    event the kernel's mm and KVM could not have sent after the ones before it."""
    st = WalkState(source=source)
    for i, ev in enumerate(events):
        for rule in RULES:
            rule(st, i, ev)
        for track in TRACKERS:
            track(st, ev)


def well_formed(events: list[Event]) -> bool:
    try:
        check_well_formed(events)
    except TraceError:
        return False
    return True

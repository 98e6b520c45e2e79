"""The reference oracle: what a correct kernel must do for a notifier event, from the
definitions alone (no kernel version, no arch walker).

* The gfns of a notifier range are the gfns of every page that intersects the hva range,
  through every memslot of every address space (hva aliasing included).
* invalidate_range_start must leave none of them mapped or cached in a TLB, and no
  translation made from a host page in the range either (even one no memslot reaches).
* change_pte must leave none of them mapping anything but the new pfn.
* A flush is owed iff a present translation was removed or changed (for clear_flush_young:
  an accessed bit was cleared), or a stale TLB entry lies in an invalidated range.
* young is true iff some mapped gfn in the range was young.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from language.trace import (ChangePte, ClearFlushYoung, ClearYoung, Event, FaultBegin, FaultCommit,
                        HostMap, InvalidateRangeEnd, InvalidateRangeStart, TestYoung, notifier_range)
from impls.kvm import State
from impls.machine import Leaf, SlotList

from .gfnset import GfnSet

AGE_OPS = ("clear_flush_young", "clear_young", "test_young")
WALKING_OPS = ("invalidate_range_start", "change_pte") + AGE_OPS
UNPAIRED_OPS = ("change_pte",) + AGE_OPS


class Segment(NamedTuple):
    """The reference gfns of one (address space, slot): [start, end).  (A named tuple: one or
    more are made per notifier event and side, and a frozen dataclass took four times as long
    to build; read by attribute only.)"""
    as_id: int
    slot: int
    start: int
    end: int


@dataclass
class Expectation:
    op: str
    segments: list[Segment]
    gfns: GfnSet
    must_unmap: list[Leaf]          # range_start: every leaf touching the gfns
    young: bool | None              # age / test_age truth
    must_age: list[Leaf]            # clear_(flush_)young: young leaves touching the gfns

    @property
    def slot_hit(self) -> bool:
        return bool(self.segments)


def range_segments(state: State, start: int, end: int) -> list[Segment]:
    """Per slot, the gfns of the pages intersecting [start, end)."""
    if start >= end:
        return []
    # the slots' hva index lives on the snapshot's SlotList, shared by every snapshot of the
    # same memslots (built once per memslot set, not per event); a State made by hand gets one
    slots = state.slots if isinstance(state.slots, SlotList) else SlotList(state.slots)
    page = 1 << state.page_shift
    out = []
    for slot in slots.overlapping_hva(start, end):
        hva_start = slot.userspace_addr
        hva_end = hva_start + (slot.npages << slot.page_shift)
        first = slot.hva_to_gfn(start if start > hva_start else hva_start)
        last = slot.hva_to_gfn((end if end < hva_end else hva_end) - 1)
        out.append(Segment(slot.as_id, slot.id, first, last + 1))
    assert all(s.end - s.start >= 1 and (s.end - s.start) * page >= 1 for s in out)
    if len(out) > 1:
        out.sort(key=lambda s: (s.as_id, s.start))
    return out


def leaves_touching(state: State, gfns: GfnSet) -> list[Leaf]:
    if not gfns or not state.leaves:
        return []
    return sorted((x for x in state.leaves.values() if gfns.intersects(x.as_id, x.gfn, x.gfn_end)),
                  key=lambda x: (x.as_id, x.gfn))


def same_memslots(a: State, b: State) -> bool:
    """Do two states have the same memslots (and page size), so that range_segments agrees?"""
    return a.page_shift == b.page_shift and (a.slots is b.slots or a.slots == b.slots)


def expect(ev: Event, pre: State, like: Expectation | None = None) -> Expectation | None:
    """The expectation for a notifier event, or None for other events.  `like`: the expectation
    of the same event from a state with the same memslots (same_memslots), whose segments and
    gfn set are then used as they are (they depend on the memslots and the event alone)."""
    rng = notifier_range(ev)
    if rng is None:
        return None
    if like is not None:
        segments, gfns = like.segments, like.gfns
    else:
        segments = range_segments(pre, *rng)
        gfns = GfnSet((s.as_id, s.start, s.end) for s in segments)
    touching = leaves_touching(pre, gfns)
    must_unmap: list[Leaf] = []
    young = None
    must_age: list[Leaf] = []
    if isinstance(ev, InvalidateRangeStart):
        # also leaves made from these hvas that no memslot reaches any more (a slot deleted
        # or moved on an arch whose kvm_arch_flush_shadow_memslot does nothing)
        must_unmap = touching + [x for x in pre.leaves.values()
                                 if x.backs(ev.start, ev.end, pre.page_shift) and x not in touching]
    elif isinstance(ev, (ClearFlushYoung, ClearYoung, TestYoung)):
        young = any(x.young for x in touching)
        if not isinstance(ev, TestYoung):
            must_age = [x for x in touching if x.young]
    elif isinstance(ev, (ChangePte, InvalidateRangeEnd)):
        pass
    return Expectation(ev.op, segments, gfns, must_unmap, young, must_age)


def covers_page(ranges, hva: int, page: int = 4096) -> bool:
    """Does one of the (start, end) ranges cover the whole page of `hva`?  set_pte_at_notify
    runs inside an invalidation of its page (language/wellformed.py's bare-change_pte rule)."""
    first = hva - hva % page
    return any(s <= first and first + page <= e for s, e in ranges)


_CONTEXT_BASES = (InvalidateRangeStart, InvalidateRangeEnd, ChangePte, FaultBegin, FaultCommit, HostMap)
_CONTEXT_TYPES = frozenset(_CONTEXT_BASES)
_OTHER_TYPES: set[type] = set()      # event types seen that are none of those (nor subclasses)


def trace_contexts(events: list[Event]) -> list[frozenset[str]]:
    """Per event, what the trace did before it that a shape should name.

    "bare-change_pte-during-fault" on a fault_commit: while the fault was in flight a
    change_pte came that no open invalidation covered, which the kernel's mm never does
    (set_pte_at_notify runs inside an invalidation of that page).

    "host-changed-under-open-invalidation" on a fault_commit: while the fault was in flight the
    host changed a page (change_pte, host_map) inside an invalidation that is still open when
    the fault commits.  The fault must retry (the mm is mid-change there); a leaf it installs
    anyway maps the page's old pfn, a consequence of the retry check's miss, which x86's
    hva-based check (mmu_notifier_retry_hva) has for pages of a huge leaf other than the
    faulting one and for unaligned ranges.  Tagged per fault, not per page."""
    out: list[frozenset[str]] = []
    open_ranges: list[tuple[int, int]] = []
    in_flight: set[int] = set()
    tagged: set[int] = set()
    changed: dict[int, list[tuple[int, int]]] = {}     # fault -> host ranges changed under an open range
    none: frozenset[str] = frozenset()
    for ev in events:
        tags = none
        t = type(ev)
        if t not in _CONTEXT_TYPES:
            if t in _OTHER_TYPES:
                out.append(tags)
                continue              # none of the six types below: nothing to note
            if not issubclass(t, _CONTEXT_BASES):
                _OTHER_TYPES.add(t)
                out.append(tags)
                continue
        if isinstance(ev, InvalidateRangeStart):
            open_ranges.append((ev.start, ev.end))
        elif isinstance(ev, InvalidateRangeEnd) and (ev.start, ev.end) in open_ranges:
            open_ranges.remove((ev.start, ev.end))
        elif isinstance(ev, ChangePte):
            if not covers_page(open_ranges, ev.hva):
                tagged |= in_flight
            elif in_flight:
                page = ev.hva - ev.hva % 4096
                for f in in_flight:
                    changed.setdefault(f, []).append((page, page + 4096))
        elif isinstance(ev, FaultBegin):
            in_flight.add(ev.fault)
        elif isinstance(ev, FaultCommit):
            in_flight.discard(ev.fault)
            names = []
            if ev.fault in tagged:
                tagged.discard(ev.fault)
                names.append("bare-change_pte-during-fault")
            if ev.fault in changed and under_open_range(changed.pop(ev.fault), open_ranges):
                names.append("host-changed-under-open-invalidation")
            if names:
                tags = frozenset(names)
        elif in_flight and isinstance(ev, HostMap) and under_open_range([(ev.hva, ev.hva + ev.size)], open_ranges):
            for f in in_flight:
                changed.setdefault(f, []).append((ev.hva, ev.hva + ev.size))
        out.append(tags)
    return out


def under_open_range(changed: list[tuple[int, int]], open_ranges) -> bool:
    """Does one of the `changed` host ranges intersect one of the open (start, end) ranges?"""
    return any(lo < e and s < hi for lo, hi in changed for s, e in open_ranges)


def leaf_gfns(leaves: list[Leaf]) -> GfnSet:
    return GfnSet((x.as_id, x.gfn, x.gfn_end) for x in leaves)

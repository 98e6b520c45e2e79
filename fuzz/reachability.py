"""Reachability of a divergence: does it also appear when every notifier range of its trace is
page aligned, as the kernel's mm sends them?

The core mm hands the MMU notifiers page-aligned ranges (mmu_notifier_range_init callers pass
vma/page boundaries) and page addresses to change_pte/test_young.  The fuzzer also sends
unaligned ones, because they reach walker corner cases; a divergence that needs them is real
model behaviour but not something a running kernel can hit.

    reachability(events, arch, old_side, new_side, known, signature) -> "aligned" | "unaligned-only"
    reach_and_needs(...) -> (that, the kernel rules the trace still breaks: [] = kernel-reachable)
    aligned_trace(events, page_size=4096) -> list[Event]

Alignment is one of the rules the generator breaks on purpose (language.wellformed.ALLOWANCES); a
bare change_pte, an empty range, aging an unmapped page or a wide aging range are the others.
A divergence is reachable by a running kernel only when its trace needs none of them; the
minimizer never adds one the found trace did not use (fuzz.minimize).
"""
from __future__ import annotations

from dataclasses import replace

from oracles.triage import KnownEntry

from fuzz.runner import Side, run_trace
from language.trace import (ChangePte, ClearFlushYoung, ClearYoung, Event, InvalidateRangeEnd,
                    InvalidateRangeStart, TestYoung)
from language.wellformed import allowances_needed, well_formed

ALIGNED = "aligned"
UNALIGNED_ONLY = "unaligned-only"
VALUES = (ALIGNED, UNALIGNED_ONLY)


def align_event(ev: Event, page_size: int = 4096) -> Event:
    """A notifier range with its start rounded down and end rounded up to a page; the hva of
    change_pte/test_young rounded down.  Other events are returned unchanged.  The same
    rounding on range_start and range_end keeps their pairing."""
    mask = page_size - 1
    if isinstance(ev, (InvalidateRangeStart, InvalidateRangeEnd, ClearFlushYoung, ClearYoung)):
        return replace(ev, start=ev.start & ~mask, end=(ev.end + mask) & ~mask)
    if isinstance(ev, (ChangePte, TestYoung)):
        return replace(ev, hva=ev.hva & ~mask)
    return ev


def aligned_trace(events: list[Event], page_size: int = 4096) -> list[Event]:
    return [align_event(e, page_size) for e in events]


def is_aligned(events: list[Event], page_size: int = 4096) -> bool:
    return all(align_event(e, page_size) == e for e in events)


def reachability(events: list[Event], arch: str, old_side: Side, new_side: Side,
                 known: list[KnownEntry], signature: str) -> str:
    """"aligned" if the trace with every notifier range page aligned still shows `signature`,
    else "unaligned-only".  The page size is the old side's model's (all models use 4 KiB)."""
    return reach_and_needs(events, arch, old_side, new_side, known, signature)[0]


def reach_and_needs(events: list[Event], arch: str, old_side: Side, new_side: Side,
                    known: list[KnownEntry], signature: str) -> tuple[str, list[str]]:
    """`reachability`, and the kernel rules (language.wellformed.ALLOWANCES) that the trace which
    shows the signature still breaks: the aligned trace's when it shows it, else the trace's
    own (then "unaligned" among them).  No rule: a running kernel can send that trace."""
    page = 1 << getattr(old_side.cls, "page_shift", 12)
    aligned = aligned_trace(events, page)
    shown = run_trace(aligned, arch, old_side, new_side, known).divergences
    if any(d.signature == signature for d in shown) and well_formed(aligned):
        return ALIGNED, sorted(allowances_needed(aligned))
    needs = allowances_needed(events) if well_formed(events) else set()
    return UNALIGNED_ONLY, sorted(needs | {"unaligned"})

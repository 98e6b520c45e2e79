"""Exhaustive engine: every small memslot layout against every notifier range over it.

Random and coverage-guided engines find small-scope bugs by chance; this one enumerates a
bounded space completely, so a bug that shows in it is found with certainty.

The layout space  L(max_slots, max_pages, max_as, max_span)
-----------------------------------------------------------
Pages are 4 KiB; hva page p is HVA_BASE + p*4K (HVA_BASE is 2 MiB aligned).

* 1 to `max_slots` memslots; slot i has `npages` in [1, max_pages], an address space
  `as_id` in [0, A) where A = min(max_as, the arch's KVM_ADDRESS_SPACE_NUM) (registry
  .resolve(arch, v).address_space_num), an hva page offset and a gfn.
* hva placement: every placement of the slots, up to translation and up to the length of
  empty stretches.  Canonical form: the union of the slots' hva ranges starts at page 0 and
  every uncovered stretch between covered pages is exactly one page long (a longer hole is
  indistinguishable at page granularity).  This includes hva aliasing (equal offsets: within
  one address space and across address spaces), partial overlap, hva-adjacent slots (hole
  0) and separate slots (hole 1).  The span (last covered page + 1) is at most `max_span`
  pages (None: no limit beyond what the slots imply, 3 slots of 4 pages span <= 14).
* gfn placement: in each address space its slots are laid out in gfn order by any
  permutation, starting at GFN_BASE (0x100), with a gap of 0 (GPA-adjacent) or 1 gfn between
  consecutive slots.  Both address spaces start at GFN_BASE, so a slot of AS 1 aliases gfns
  of AS 0 as SMM does.  (gfn overlaps inside one address space are refused by KVM with
  EEXIST and are not enumerated; a layout a model refuses anyway is skipped, counted in
  `stats.refused`, never reported.)
* Layouts equal up to renumbering slots are checked once (slot ids are given in gfn order
  per address space).  Backing is one 4 KiB host mapping over the whole window, with one
  extra page before it and two after it (through the last edge, so every change_pte is on a
  present pte: language.wellformed), so every leaf is 4K (2 MiB frames are the random engine's job).

Every setup + check trace is well formed (language.wellformed.check_well_formed).

Set-up trace of a layout: host_map, one set_memory_region per slot, then a write fault
(fault_begin + fault_commit) on every gfn of every slot, in slot order.

The check space
---------------
Edges: for every page boundary b in [0, span]: HVA_BASE + b*4K - 1, + 0, + 1 (page edge and
one byte either side), plus one page before the window and one page after it.
Ranges: every [start, end) with start <= end over the edges.  Addresses (single-address
notifiers): every edge.  Operations after the set-up:

    invalidate          invalidate_range_start + invalidate_range_end over the range
    clear_flush_young   over the range
    clear_young         over the range
    test_young          at the address
    change_pte          at the address, bare (new pfn, read-only)
    change_pte_wrapped  invalidate_range_start(page), change_pte, invalidate_range_end

With `reduce_ranges` (default) ranges that intersect every memslot in exactly the same bytes
are checked once (the first in enumeration order).  This is exact for every range walker we
model, v5.12 per-arch and v5.13 common: each sees a notifier range only through
max(start, slot start) and min(end, slot end), and so does the reference; the raw range only
reaches mmu_notifier_range_start/end, which nothing after the single operation reads
(tests/test_exhaustive.py checks that reduced and full ranges find the same signatures).
Pass reduce_ranges=False for a candidate whose walker does not clamp.  Addresses are never
reduced (arm64 v5.12 widens an address to [hva, hva + PAGE_SIZE) itself).

Every check is `fuzz.runner.run_trace` on the operation's events, starting from the state
both models reached after the set-up: the set-up runs once per layout (also through
run_trace, so its own divergences count) and each model is restored from a pickle of it
for each check (copy.deepcopy is slower).  Divergences are marked against the known list
and deduplicated by signature; for each signature the smallest trace (fewest events, then
smallest layout and range) is kept, re-run from scratch with run_trace, and minimized.

Cost (measured on 2 shared cores, jobs=2): a check costs ~0.3-0.5 ms per core, almost all
of it in run_trace's oracle.  Up to 2 slots (max_slots=2) the space is 260 layouts / 100,080
checks with one address space (13-27 s per arch) and 648 / 249,894 with two (x86: 54-82 s).
The full default bound is 25,668 layouts / 18.3 M checks with one address space (~80 min
at ~3,700 checks/s) and 76,872 / 55 M with two (several hours): too big for one sitting, so
layouts are enumerated smallest first (slots, then span, then pages), `deadline` stops the
run cleanly with what was found, and `stats.complete` / `stats.complete_through_slots` say
how much of the space was covered with certainty.  `max_span` cuts every layout to
a window (max_span=4: 3,240 layouts / 813 k checks, est. ~4 min, or 9,654 / 2.4 M with two address
spaces); `space_size` counts a bound without running it.
"""
from __future__ import annotations

import copy
import itertools
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from oracles.compare import Divergence
from oracles.triage import KnownEntry

from fuzz.runner import CapturingSide, Side, run_trace
from language.trace import (ChangePte, ClearFlushYoung, ClearYoung, Event, FaultBegin, FaultCommit,
                    HostMap, InvalidateRangeEnd, InvalidateRangeStart, SetMemoryRegion, TestYoung)

P = 4096
HVA_BASE = 0x7f0000000000          # 1 GiB aligned
GFN_BASE = 0x100
HOST_PFN = 0x10000                 # pfn of hva page -1 (the page before the window)
NEW_PFN = 0x80000                  # what change_pte installs

RANGE_OPS = ("invalidate", "clear_flush_young", "clear_young")
ADDRESS_OPS = ("test_young", "change_pte", "change_pte_wrapped")
OPS = RANGE_OPS + ADDRESS_OPS


class ExhaustiveError(ValueError):
    """A bad bound or layout: the message names the parameter."""


# ----- layouts ---------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class SlotSpec:
    hva_page: int        # offset of the slot's first page in the window
    npages: int
    as_id: int
    gfn: int             # offset of base_gfn from GFN_BASE


@dataclass(frozen=True)
class Layout:
    slots: tuple[SlotSpec, ...]     # sorted

    @property
    def span(self) -> int:
        return max(s.hva_page + s.npages for s in self.slots)

    @property
    def pages(self) -> int:
        return sum(s.npages for s in self.slots)

    def slot_ids(self) -> list[int]:
        """Slot id per slot: 0, 1, ... in gfn order within each address space."""
        ids = [0] * len(self.slots)
        for a in {s.as_id for s in self.slots}:
            mine = sorted((s.gfn, i) for i, s in enumerate(self.slots) if s.as_id == a)
            for n, (_, i) in enumerate(mine):
                ids[i] = n
        return ids

    def setup(self) -> list[Event]:
        """host_map, the memslots, then a write fault on every gfn of every slot."""
        # through the page after the last edge, so every change_pte address is a present pte
        evs: list[Event] = [HostMap(HVA_BASE - P, (self.span + 3) * P, HOST_PFN, P, True)]
        ids = self.slot_ids()
        for s, sid in zip(self.slots, ids):
            evs.append(SetMemoryRegion(s.as_id, sid, 0, (GFN_BASE + s.gfn) * P, s.npages * P,
                                       HVA_BASE + s.hva_page * P))
        n = 0
        for s in self.slots:
            for g in range(GFN_BASE + s.gfn, GFN_BASE + s.gfn + s.npages):
                evs += [FaultBegin(n, s.as_id, g, True), FaultCommit(n)]
                n += 1
        return evs

    def describe(self) -> str:
        ids = self.slot_ids()
        return " ".join(f"as{s.as_id}/slot{i}:hva+{s.hva_page}p,{s.npages}p,gfn{GFN_BASE + s.gfn:#x}"
                        for s, i in zip(self.slots, ids))


def _hva_placements(sizes: tuple[int, ...], max_span: int | None) -> Iterator[tuple[int, ...]]:
    """Offsets of slots taken in order of their start: the first at 0, each next one starting
    at or after the previous start and at most one page past the covered union."""
    k = len(sizes)

    def rec(offs: list[int], end: int):
        if len(offs) == k:
            yield tuple(offs)
            return
        lo = offs[-1] if offs else 0
        hi = end + 1 if offs else 0
        for o in range(lo, hi + 1):
            new_end = max(end, o + sizes[len(offs)])
            if max_span is None or new_end <= max_span:
                yield from rec(offs + [o], new_end)
    yield from rec([], 0)


def _gfn_placements(sizes: tuple[int, ...], ases: tuple[int, ...]) -> Iterator[dict[int, int]]:
    groups: dict[int, list[int]] = {}
    for i, a in enumerate(ases):
        groups.setdefault(a, []).append(i)
    per_as = []
    for idx in groups.values():
        opts = []
        for perm in itertools.permutations(idx):
            for gaps in itertools.product((0, 1), repeat=len(idx) - 1):
                g, pos = {}, 0
                for j, i in enumerate(perm):
                    pos += gaps[j - 1] if j else 0
                    g[i] = pos
                    pos += sizes[i]
                opts.append(g)
        per_as.append(opts)
    for combo in itertools.product(*per_as):
        out: dict[int, int] = {}
        for g in combo:
            out.update(g)
        yield out


def check_bounds(max_slots: int, max_pages: int, max_as: int, max_span: int | None) -> None:
    for name, v, lo, hi in (("max_slots", max_slots, 1, 8), ("max_pages", max_pages, 1, 64),
                            ("max_as", max_as, 1, 2)):
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ExhaustiveError(f"exhaustive: {name}: {v!r} is not an integer in [{lo}, {hi}]")
    if max_span is not None and (not isinstance(max_span, int) or isinstance(max_span, bool) or max_span < 1):
        raise ExhaustiveError(f"exhaustive: max_span: {max_span!r} is not a positive integer")


def layouts(max_slots: int = 3, max_pages: int = 4, address_spaces: int = 2,
            max_span: int | None = None) -> list[Layout]:
    """Every canonical layout of the space L (module docstring), smallest first: by number of
    slots, then span, then total pages.  `address_spaces` is the number actually used
    (min of the bound and the arch's)."""
    check_bounds(max_slots, max_pages, address_spaces, max_span)
    seen: set[tuple[SlotSpec, ...]] = set()
    out: list[Layout] = []
    for k in range(1, max_slots + 1):
        level: list[Layout] = []
        for sizes in itertools.product(range(1, max_pages + 1), repeat=k):
            for offs in _hva_placements(sizes, max_span):
                for ases in itertools.product(range(address_spaces), repeat=k):
                    for gfns in _gfn_placements(sizes, ases):
                        key = tuple(sorted(SlotSpec(offs[i], sizes[i], ases[i], gfns[i]) for i in range(k)))
                        if key not in seen:
                            seen.add(key)
                            level.append(Layout(key))
        level.sort(key=lambda lay: (lay.span, lay.pages, lay.slots))
        out += level
    return out


# ----- ranges ----------------------------------------------------------------------------------
def edges(span: int) -> list[int]:
    """Page edges of the window and one byte either side, plus one page outside each end."""
    out = {HVA_BASE - P, HVA_BASE + (span + 1) * P}
    for b in range(span + 1):
        out.update(HVA_BASE + b * P + d for d in (-1, 0, 1))
    return sorted(out)


def _clamped(layout: Layout, start: int, end: int) -> tuple:
    sig = []
    for s in layout.slots:
        lo = max(start, HVA_BASE + s.hva_page * P)
        hi = min(end, HVA_BASE + (s.hva_page + s.npages) * P)
        sig.append((lo, hi) if lo < hi else None)
    return tuple(sig)


def ranges(layout: Layout, reduce: bool = True) -> list[tuple[int, int]]:
    """Every [start, end) with start <= end over `edges`, one per clamped class if `reduce`."""
    es = edges(layout.span)
    out, seen = [], set()
    for i, a in enumerate(es):
        for b in es[i:]:
            if reduce:
                sig = _clamped(layout, a, b)
                if sig in seen:
                    continue
                seen.add(sig)
            out.append((a, b))
    return out


def addresses(layout: Layout) -> list[int]:
    """Every edge, as the address of a single-address notifier.  Not reduced: some walkers
    widen the address themselves (arm64 v5.12 walks [hva, hva + PAGE_SIZE)), so the clamped
    [x, x+1) does not decide what they see."""
    return edges(layout.span)


def op_events(op: str, a: int, b: int | None = None) -> list[Event]:
    """The events of one check: a range op over [a, b), or an address op at a."""
    if op == "invalidate":
        return [InvalidateRangeStart(a, b, True), InvalidateRangeEnd(a, b, True)]
    if op == "clear_flush_young":
        return [ClearFlushYoung(a, b)]
    if op == "clear_young":
        return [ClearYoung(a, b)]
    if op == "test_young":
        return [TestYoung(a)]
    if op == "change_pte":
        return [ChangePte(a, NEW_PFN, False)]
    if op == "change_pte_wrapped":
        page = a - a % P
        return [InvalidateRangeStart(page, page + P, True), ChangePte(a, NEW_PFN, False),
                InvalidateRangeEnd(page, page + P, True)]
    raise ExhaustiveError(f"exhaustive: op: unknown operation {op!r}; known: {', '.join(OPS)}")


def checks(layout: Layout, ops: tuple[str, ...] = OPS, reduce: bool = True) -> Iterator[tuple[str, list[Event]]]:
    rs = ranges(layout, reduce) if any(o in RANGE_OPS for o in ops) else []
    xs = addresses(layout) if any(o in ADDRESS_OPS for o in ops) else []
    for op in ops:
        if op in RANGE_OPS:
            for a, b in rs:
                yield op, op_events(op, a, b)
        else:
            for x in xs:
                yield op, op_events(op, x)


def space_size(arch_address_spaces: int, max_slots: int = 3, max_pages: int = 4, max_as: int = 2,
               max_span: int | None = None, ops: tuple[str, ...] = OPS,
               reduce_ranges: bool = True) -> tuple[int, int]:
    """(layouts, checks) of a bound, without running anything."""
    lays = layouts(max_slots, max_pages, min(max_as, arch_address_spaces), max_span)
    n = 0
    for lay in lays:
        nr = len(ranges(lay, reduce_ranges)) if any(o in RANGE_OPS for o in ops) else 0
        na = len(addresses(lay)) if any(o in ADDRESS_OPS for o in ops) else 0
        n += sum(nr if o in RANGE_OPS else na for o in ops)
    return len(lays), n


# ----- running ---------------------------------------------------------------------------------
class _RestoringSide(Side):
    """A Side whose models start where a captured model was: restored from a pickle (or a
    deepcopy, for a model that does not pickle)."""

    def __init__(self, side: Side, model):
        super().__init__(side.name, side.cls)
        try:
            self.blob = pickle.dumps(model, pickle.HIGHEST_PROTOCOL)
            self.model = None
        except Exception:
            self.blob, self.model = None, model

    def make(self):
        if self.blob is not None:
            return pickle.loads(self.blob)
        return copy.deepcopy(self.model)


@dataclass
class ExhaustiveStats:
    arch: str = ""
    old: str = ""
    new: str = ""
    bound: dict = field(default_factory=dict)
    layouts_total: int = 0
    layouts_done: int = 0
    refused: int = 0              # layouts a model refused (skipped, not reported)
    checks: int = 0
    events: int = 0
    divergences: int = 0
    seconds: float = 0.0
    complete: bool = False
    interrupted: bool = False
    complete_through_slots: int = 0   # every layout with this many slots or fewer was checked
    per_op: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return dict(self.__dict__)


Progress = Callable[[ExhaustiveStats, str, "Divergence | None"], None]


def _size_key(events: list[Event], layout: Layout, d: Divergence) -> tuple:
    rng = [(getattr(e, "end", 0) - getattr(e, "start", 0)) for e in events if hasattr(e, "start")]
    return (len(events), layout.pages, len(layout.slots), sum(rng), d.event_index)


@dataclass
class LayoutResult:
    skipped: str = ""                 # why the layout was refused ("" if it was checked)
    checks: int = 0
    events: int = 0
    per_op: dict = field(default_factory=dict)
    # signature -> (size key, full trace, divergence as run_trace reported it)
    found: dict = field(default_factory=dict)


def _keep(found: dict, d: Divergence, events: list[Event], layout: Layout) -> bool:
    key = _size_key(events, layout, d)
    have = found.get(d.signature)
    if have is None or key < have[0]:
        found[d.signature] = (key, events, d)
        return have is None
    return False


def run_layout(layout: Layout, arch: str, old_side: Side, new_side: Side, known: list[KnownEntry],
               ops: tuple[str, ...] = OPS, reduce_ranges: bool = True,
               deadline: float | None = None) -> LayoutResult:
    """Set up one layout on both sides (skipped if either model refuses a memslot update),
    then run every check of it.  Divergences carry the full trace (set-up + operation)."""
    res = LayoutResult()
    setup = layout.setup()
    cap_o, cap_n = CapturingSide(old_side), CapturingSide(new_side)
    r = run_trace(setup, arch, cap_o, cap_n, known, keep_observations=True)
    for ev, (oo, on) in zip(setup, r.observations):
        if isinstance(ev, SetMemoryRegion) and (oo.error or on.error):
            why = oo.note if oo.error else on.note
            res.skipped = f"{ev.op} as{ev.as_id}/slot{ev.slot} refused: {oo.error or on.error}: {why}"
            return res
    res.events += r.events
    for d in r.divergences:
        d.trace = setup[:d.event_index + 1]
        _keep(res.found, d, d.trace, layout)
    rs_o, rs_n = _RestoringSide(old_side, cap_o.model), _RestoringSide(new_side, cap_n.model)
    for op, evs in checks(layout, ops, reduce_ranges):
        if deadline is not None and res.checks % 64 == 0 and time.monotonic() >= deadline:
            res.skipped = "deadline"
            break
        r = run_trace(evs, arch, rs_o, rs_n, known)
        res.checks += 1
        res.events += r.events
        res.per_op[op] = res.per_op.get(op, 0) + 1
        for d in r.divergences:
            full = setup + evs[:d.event_index + 1]
            d.event_index += len(setup)
            d.trace = full
            _keep(res.found, d, full, layout)
    return res


def _merge(found: dict, part: dict) -> list[str]:
    new = []
    for sig, (key, events, d) in part.items():
        have = found.get(sig)
        if have is None:
            new.append(sig)
        if have is None or key < have[0]:
            found[sig] = (key, events, d)
    return new


def run_exhaustive(arch: str, old_side: Side, new_side: Side, known: list[KnownEntry],
                   max_slots: int = 3, max_pages: int = 4, max_as: int = 2,
                   deadline: float | None = None, progress: Progress | None = None, *,
                   max_span: int | None = None, ops: tuple[str, ...] = OPS,
                   reduce_ranges: bool = True, jobs: int = 1,
                   minimize_seconds: float = 5.0) -> tuple[list[Divergence], ExhaustiveStats]:
    """Check every layout of the bound against every range and operation (module docstring).

    deadline: an absolute time.monotonic() instant; the run stops there (stats.complete is
    False) with everything found so far.  progress(stats, what, divergence) is called with
    what="found" for each new signature (divergence given) and "tick" about every 2 s.
    jobs > 1 spreads layouts over that many forked workers, through the pool every engine's
    --jobs uses (fuzz/engines/parallel.py run_pool: they die with this process, get its stop
    signal, and a layout whose worker died is reported and not counted as checked).
    SIGINT or SIGTERM stops cleanly (stats.interrupted).  Returns one divergence per signature, with the smallest trace seen,
    re-run from scratch and minimized (minimize_seconds per signature; 0 to skip), sorted
    new first, then by class severity.
    """
    for name in ops:
        if name not in OPS:
            raise ExhaustiveError(f"exhaustive: ops: unknown operation {name!r}; known: {', '.join(OPS)}")
    n_as = min(max_as, old_side.cls.address_space_num, new_side.cls.address_space_num)
    lays = layouts(max_slots, max_pages, n_as, max_span)
    stats = ExhaustiveStats(arch, old_side.name, new_side.name,
                            dict(max_slots=max_slots, max_pages=max_pages, max_as=max_as,
                                 address_spaces=n_as, max_span=max_span, ops=list(ops),
                                 reduce_ranges=reduce_ranges),
                            layouts_total=len(lays))
    found: dict = {}
    done_by_k: dict[int, int] = {}
    total_by_k: dict[int, int] = {}
    for lay in lays:
        total_by_k[len(lay.slots)] = total_by_k.get(len(lay.slots), 0) + 1
    start = time.monotonic()
    last_tick = start

    def absorb(lay: Layout, lr: LayoutResult) -> None:
        nonlocal last_tick
        stats.checks += lr.checks
        stats.events += lr.events
        if lr.skipped != "deadline":          # settled: checked completely, or refused
            done_by_k[len(lay.slots)] = done_by_k.get(len(lay.slots), 0) + 1
            if lr.skipped:
                stats.refused += 1
            else:
                stats.layouts_done += 1
        for op, n in lr.per_op.items():
            stats.per_op[op] = stats.per_op.get(op, 0) + n
        for sig in _merge(found, lr.found):
            stats.divergences = len(found)
            if progress:
                progress(stats, "found", found[sig][2])
        now = time.monotonic()
        if progress and now - last_tick >= 2.0:
            last_tick = now
            stats.seconds = now - start
            progress(stats, "tick", None)

    try:
        if jobs <= 1:
            for lay in lays:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                lr = run_layout(lay, arch, old_side, new_side, known, ops, reduce_ranges, deadline)
                absorb(lay, lr)
                if lr.skipped == "deadline":
                    break
        else:
            from fuzz.engines import parallel

            def work(i: int, report) -> LayoutResult:
                # run_layout watches the deadline itself: a layout the deadline cuts comes back
                # with what it checked (skipped="deadline", so not counted as done), as with jobs=1
                return run_layout(lays[i], arch, old_side, new_side, known, ops, reduce_ranges, deadline)

            run = parallel.run_pool(jobs, len(lays), work, on_result=lambda i, lr: absorb(lays[i], lr),
                                    deadline=deadline)
            stats.interrupted |= run.interrupted
            parallel.say_losses(f"exhaustive {arch}", run, lambda i: f"layout {i} ({lays[i].describe()}), "
                                "not counted as checked")
    except KeyboardInterrupt:          # SIGINT or SIGTERM (fuzz.lifetime.Interrupted)
        stats.interrupted = True
    stats.seconds = time.monotonic() - start
    stats.complete = stats.layouts_done + stats.refused == stats.layouts_total
    k_done = 0
    for k in range(1, max_slots + 1):
        if done_by_k.get(k, 0) == total_by_k.get(k, 0):
            k_done = k
        else:
            break
    stats.complete_through_slots = k_done
    from fuzz import lifetime
    with lifetime.deferred():          # what was found is minimized and returned, signal or not
        out = _finish(found, arch, old_side, new_side, known, minimize_seconds)
    stats.interrupted |= lifetime.stop_signal() is not None
    stats.divergences = len(out)
    return out, stats


def _finish(found: dict, arch: str, old: Side, new: Side, known: list[KnownEntry],
            minimize_seconds: float) -> list[Divergence]:
    """Re-run each kept trace from scratch with the real sides, then minimize it."""
    from fuzz.engines.random_engine import Job, minimized
    from oracles.compare import CLASSES
    job = Job(arch, old, new, 0.0, 0, Path(os.devnull), minimize_seconds=minimize_seconds)
    out = []
    for sig, (_, events, d0) in found.items():
        rerun = next((d for d in run_trace(events, arch, old, new, known).divergences
                      if d.signature == sig), None)
        d = rerun or d0
        d.trace = events[:d.event_index + 1]
        if minimize_seconds > 0 and rerun is not None:
            d = minimized(d.trace, job, known, d, minimize_seconds)
        out.append(d)
    out.sort(key=lambda d: (d.known, CLASSES.index(d.cls), d.signature))
    return out


def console_progress(stats: ExhaustiveStats, what: str, d: Divergence | None) -> None:
    import sys
    head = f"  [{stats.arch} {stats.old}..{stats.new} exhaustive]"
    if what == "found" and d is not None:
        tag = "known" if d.known else "NEW"
        print(f"{head} {tag} {d.cls} ({d.wrong_side} wrong) at {d.op}", file=sys.stderr, flush=True)
        return
    rate = stats.checks / stats.seconds if stats.seconds else 0.0
    print(f"{head} {stats.seconds:5.1f}s layouts {stats.layouts_done + stats.refused}/{stats.layouts_total}, "
          f"{stats.checks} checks ({rate:.0f}/s), divergences {stats.divergences}",
          file=sys.stderr, flush=True)

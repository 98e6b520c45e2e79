"""A trace-level custom mutator for libFuzzer (atheris' custom_mutator hook).

`mutate(data, max_size, seed)` decodes the input to a trace (fuzz.engines.atheris_engine.decode), applies
one structural mutation chosen by `seed`, and re-encodes it as a JSON trace:

    insert     a new event (fault, access, notifier pair, aging, change_pte, slot update) aimed
               at a slot edge
    delete     an event (a start with its end, a fault begin with its commit)
    duplicate  an event (pairs are duplicated as pairs, a fault under a fresh id)
    snap       a notifier range edge or hva onto a slot edge: +-0, one page or one byte
    beside     a notifier range (or change_pte / test_young hva) aimed right beside a gfn the
               trace faults on or accesses: ending at its page, starting one page past it, an
               unaligned hva in the page before or an hva in the page after (through every slot
               holding the gfn, aliases included), so a walker's off-by-one at either end meets
               a mapped page
    alias      point a slot's userspace_addr at another slot's (or add a slot that does)
    split      one slot into two adjacent slots (same gfn and hva ranges in all), or (crossed)
               its last two pages into two one-page slots whose guest order is the reverse of
               their host order: the slot whose hva follows sits just below in gfns, the layout
               where a walk that runs one page past its hva meets the gfn before its start

Half of the calls (REGENERATE) instead return a new trace from the random engine's
generator (fuzz.engines.generate with the target's GenConfig): libFuzzer's coverage then keeps
the ones that reach new code, so the engine sees at least the variety `run` does.

The result is always well formed (language.wellformed.check_well_formed; with the target's
`--kernel-only` it breaks no allowance either) and fits max_size, or the mutator falls back:
to libFuzzer's own byte mutation when one is given and the input is raw bytes, else to the
input unchanged.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Callable

from fuzz.engines.atheris_engine import decoded, encode, remember
from fuzz.engines.generate import GenConfig, RandomSource, generate
from language.wellformed import well_formed
from language.trace import (ChangePte, ClearFlushYoung, ClearYoung, Event, FaultBegin, FaultCommit,
                    GuestAccess, HostMap, InvalidateRangeEnd, InvalidateRangeStart, Release,
                    SetMemoryRegion, TestYoung, partner)

P = 4096
REGENERATE = 0.5       # the share of calls that return a freshly generated trace
MUTATIONS = ("insert", "delete", "duplicate", "snap", "beside", "alias", "split")
RANGE_TYPES = (InvalidateRangeStart, ClearFlushYoung, ClearYoung)


@dataclasses.dataclass
class _Slot:
    as_id: int
    id: int
    gpa: int
    size: int
    hva: int


def slots_of(events: list[Event]) -> list[_Slot]:
    """Every slot layout the trace ever asks for (refused updates included: their edges are
    just as interesting)."""
    seen: dict[tuple, _Slot] = {}
    for ev in events:
        if isinstance(ev, SetMemoryRegion) and ev.memory_size:
            s = _Slot(ev.as_id, ev.slot, ev.guest_phys_addr, ev.memory_size, ev.userspace_addr)
            seen[(s.as_id, s.gpa, s.size, s.hva)] = s
    return list(seen.values())


def _edge(rng: random.Random, slots: list[_Slot]) -> int:
    s = rng.choice(slots)
    base = rng.choice([s.hva, s.hva + s.size, s.hva + s.size - P,
                       s.hva + rng.randrange(max(1, s.size // P)) * P])
    return max(0, base + rng.choice([0, 0, P, -P, 1, -1]))


def _gfn(rng: random.Random, slots: list[_Slot]) -> tuple[int, int]:
    s = rng.choice(slots)
    npages = max(1, s.size // P)
    return s.as_id, s.gpa // P + rng.choice([0, npages - 1, rng.randrange(npages), npages])


def _next_fault(events: list[Event]) -> int:
    return 1 + max((e.fault for e in events if isinstance(e, (FaultBegin, FaultCommit))), default=-1)


def _end(events: list[Event]) -> int:
    """Where new events may go up to: nothing can follow a release (language.wellformed)."""
    return next((k for k, e in enumerate(events) if isinstance(e, Release)), len(events))


def _insert(rng: random.Random, events: list[Event]) -> list[Event]:
    slots = slots_of(events)
    if not slots:
        return events
    out = list(events)
    end = _end(out)
    i = rng.randint(0, end)
    kind = rng.choice(["fault", "access", "invalidate", "age", "cow", "slot"])
    if kind == "fault":
        as_id, gfn = _gfn(rng, slots)
        n = _next_fault(out)
        j = rng.randint(i, end)
        out[j:j] = [FaultCommit(n)]
        out[i:i] = [FaultBegin(n, as_id, gfn, rng.random() < 0.4)]
    elif kind == "access":
        as_id, gfn = _gfn(rng, slots)
        out[i:i] = [GuestAccess(as_id, gfn, rng.random() < 0.3)]
    elif kind == "invalidate":
        a, b = sorted((_edge(rng, slots), _edge(rng, slots)))
        j = rng.randint(i, end)
        blockable = rng.random() < 0.8          # start and end share one mmu_notifier_range
        out[j:j] = [InvalidateRangeEnd(a, b, blockable)]
        out[i:i] = [InvalidateRangeStart(a, b, blockable)]
    elif kind == "age":
        op = rng.choice([ClearFlushYoung, ClearYoung, TestYoung])
        if op is TestYoung:
            out[i:i] = [TestYoung(_edge(rng, slots))]
        else:
            a, b = sorted((_edge(rng, slots), _edge(rng, slots)))
            out[i:i] = [op(a, b)]
    elif kind == "cow":
        out[i:i] = _cow(rng, _edge(rng, slots))
    else:
        s = rng.choice(slots)
        change = rng.choice(["delete", "move", "flags"])
        size = 0 if change == "delete" else s.size
        gpa = s.gpa + (s.size if change == "move" else 0)
        out[i:i] = [SetMemoryRegion(s.as_id, s.id, int(change == "flags"), gpa, size, s.hva)]
    return out


def _delete(rng: random.Random, events: list[Event]) -> list[Event]:
    if not events:
        return events
    i = rng.randrange(len(events))
    j = partner(events, i)
    return [e for k, e in enumerate(events) if k != i and k != j]


def _duplicate(rng: random.Random, events: list[Event]) -> list[Event]:
    if not events:
        return events
    i = rng.randrange(len(events))
    j = partner(events, i)
    if j is not None and j < i:
        i, j = j, i
    ev = events[i]
    out = list(events)
    if isinstance(ev, FaultBegin) and j is not None:
        n = _next_fault(events)
        out.insert(j + 1, FaultCommit(n))
        out.insert(i + 1, dataclasses.replace(ev, fault=n))
    elif isinstance(ev, InvalidateRangeStart) and j is not None:
        out.insert(j + 1, events[j])
        out.insert(i + 1, ev)
    elif isinstance(ev, (FaultBegin, FaultCommit, InvalidateRangeEnd, Release)):
        return events           # an unpaired one, or a release: a copy cannot be well formed
    else:
        out.insert(i + 1, ev)
    return out


def _snap(rng: random.Random, events: list[Event]) -> list[Event]:
    slots = slots_of(events)
    idx = [i for i, e in enumerate(events) if isinstance(e, RANGE_TYPES + (ChangePte, TestYoung))]
    if not slots or not idx:
        return events
    i = rng.choice(idx)
    ev = events[i]
    s = rng.choice(slots)
    edge = max(0, rng.choice([s.hva, s.hva + s.size]) + rng.choice([0, P, -P, 1, -1]))
    out = list(events)
    if isinstance(ev, (ChangePte, TestYoung)):
        out[i] = dataclasses.replace(ev, hva=edge)
        return out
    start, end = (edge, ev.end) if rng.random() < 0.5 else (ev.start, edge)
    start, end = min(start, end), max(start, end)
    if isinstance(ev, InvalidateRangeStart):
        j = partner(events, i)
        if j is not None:
            out[j] = dataclasses.replace(events[j], start=start, end=end)
    out[i] = dataclasses.replace(ev, start=start, end=end)
    return out


def _beside(rng: random.Random, events: list[Event]) -> list[Event]:
    slots = slots_of(events)
    # (hva of the page, the first index after which it can be mapped) for every gfn the trace
    # faults on or touches, through each slot that holds it
    pages = []
    for k, e in enumerate(events):
        if isinstance(e, (FaultBegin, GuestAccess)):
            for s in slots:
                first = s.gpa // P
                if s.as_id == e.as_id and first <= e.gfn < first + s.size // P:
                    pages.append((s.hva + (e.gfn - first) * P, k))
    if not pages:
        return events
    h, after = rng.choice(pages)
    out = list(events)
    end = _end(out)
    width = rng.choice([1, 2, rng.randint(1, 16)]) * P
    if rng.random() < 0.5:      # stops right before the page (exclusive end on its first byte)
        start, stop = max(0, h - width), h + rng.choice([0, 0, 1])
    else:                       # starts right after it
        start, stop = h + P - rng.choice([0, 0, 1]), h + P + width
    ranged = [k for k, e in enumerate(out) if isinstance(e, RANGE_TYPES) and k > after]
    if ranged and rng.random() < 0.5:
        i = rng.choice(ranged)
        if isinstance(out[i], InvalidateRangeStart):
            j = partner(out, i)
            if j is not None:
                out[j] = dataclasses.replace(out[j], start=start, end=stop)
        out[i] = dataclasses.replace(out[i], start=start, end=stop)
        return out
    i = rng.randint(min(after + 1, end), end)
    kind = rng.choice(["invalidate", "age", "test_young", "cow"])
    if kind == "invalidate":
        j = rng.randint(i, end)
        out[j:j] = [InvalidateRangeEnd(start, stop, True)]
        out[i:i] = [InvalidateRangeStart(start, stop, True)]
    elif kind == "age":
        out[i:i] = [rng.choice([ClearFlushYoung, ClearYoung])(start, stop)]
    else:
        # an unaligned hva in the page before (a one-page walk from it reaches this page), or
        # an hva in the page after (past the slot's end when this is its last page)
        hva = (max(0, h - P + rng.choice([1, P // 2, P - 1])) if rng.random() < 0.5
               else h + P + rng.choice([0, 1, P // 2, P - 1]))
        if kind == "test_young" or not _host_mapped(out[:i], hva):
            out[i:i] = [TestYoung(hva)]
        else:
            out[i:i] = _cow(rng, hva)
    return out


def _host_mapped(events: list[Event], hva: int) -> bool:
    """Whether the last host_map covering `hva` in `events` mapped it (set_pte_at_notify
    replaces a present pte only).  A cheap first guess, so fewer mutants are thrown away:
    language.wellformed, which mutate() applies to every mutant, stays the judge."""
    last = next((e for e in reversed(events) if isinstance(e, HostMap) and e.hva <= hva < e.hva + e.size), None)
    return last is not None and last.pfn is not None


def _cow(rng: random.Random, hva: int) -> list[Event]:
    """A change_pte of `hva` as the generator makes one (fuzz.engines.generate "cow"): inside an
    invalidation of its page, as wp_page_copy and KSM send it, or bare (30%), as the generator's
    traces have it too (language.wellformed allows it, `--kernel-only` does not)."""
    page = hva - hva % P
    change = ChangePte(hva, 0x80000 + rng.randrange(0x1000), rng.random() < 0.3)
    if rng.random() < 0.3:
        return [change]
    return [InvalidateRangeStart(page, page + P, True), change, InvalidateRangeEnd(page, page + P, True)]


def _alias(rng: random.Random, events: list[Event]) -> list[Event]:
    creates = [i for i, e in enumerate(events) if isinstance(e, SetMemoryRegion) and e.memory_size]
    if not creates:
        return events
    src = events[rng.choice(creates)]
    others = [i for i in creates if events[i].userspace_addr != src.userspace_addr]
    out = list(events)
    if others and rng.random() < 0.7:
        i = rng.choice(others)
        out[i] = dataclasses.replace(events[i], userspace_addr=src.userspace_addr)
        return out
    # a new slot over the same host range, GPA right after the highest slot of its address space
    used = {(e.as_id, e.slot) for e in events if isinstance(e, SetMemoryRegion)}
    as_id = src.as_id
    sid = max(s for a, s in used if a == as_id) + 1
    top = max(e.guest_phys_addr + e.memory_size for e in events
              if isinstance(e, SetMemoryRegion) and e.as_id == as_id)
    pos = rng.randint(creates[0] + 1, max(creates[0] + 1, _end(events)))
    out.insert(pos, SetMemoryRegion(as_id, sid, 0, top, src.memory_size, src.userspace_addr))
    return out


def _split(rng: random.Random, events: list[Event]) -> list[Event]:
    creates = [i for i, e in enumerate(events)
               if isinstance(e, SetMemoryRegion) and e.memory_size >= 2 * P and e.memory_size % P == 0]
    if not creates:
        return events
    i = rng.choice(creates)
    ev = events[i]
    npages = ev.memory_size // P
    used = {e.slot for e in events if isinstance(e, SetMemoryRegion) and e.as_id == ev.as_id}
    if rng.random() < 0.5:
        # crossed: pages n-2 and n-1 keep their hvas and swap their gfns, each a slot of its own
        g, h, n = ev.guest_phys_addr, ev.userspace_addr, npages
        rest = [dataclasses.replace(ev, memory_size=(n - 2) * P)] if n > 2 else []
        sid = max(used) + 1
        ids = [sid, sid + 1] if rest else [ev.slot, sid]
        pair = [dataclasses.replace(ev, slot=ids[0], guest_phys_addr=g + (n - 1) * P, memory_size=P,
                                    userspace_addr=h + (n - 2) * P),
                dataclasses.replace(ev, slot=ids[1], guest_phys_addr=g + (n - 2) * P, memory_size=P,
                                    userspace_addr=h + (n - 1) * P)]
        return events[:i] + rest + pair + events[i + 1:]
    k = rng.choice([1, npages - 1, rng.randint(1, npages - 1)])
    first = dataclasses.replace(ev, memory_size=k * P)
    second = dataclasses.replace(ev, slot=max(used) + 1, guest_phys_addr=ev.guest_phys_addr + k * P,
                                 memory_size=(npages - k) * P, userspace_addr=ev.userspace_addr + k * P)
    return events[:i] + [first, second] + events[i + 1:]


_APPLY = {"insert": _insert, "delete": _delete, "duplicate": _duplicate, "snap": _snap,
          "beside": _beside, "alias": _alias, "split": _split}


def mutate_events(events: list[Event], rng: random.Random, kind: str | None = None) -> list[Event]:
    """One structural mutation (`kind`, or a random one); the result may equal the input."""
    return _APPLY[kind or rng.choice(MUTATIONS)](rng, list(events))


def mutate(data: bytes, max_size: int, seed: int, cfg: GenConfig | None = None,
           byte_mutate: Callable[[bytes, int], bytes] | None = None) -> bytes:
    """libFuzzer custom mutator: a structurally mutated JSON trace of at most max_size bytes,
    well formed, or a fallback (see the module docstring)."""
    rng = random.Random(seed)
    if cfg is not None and rng.random() < REGENERATE:
        # a fresh trace from the random engine's generator: the diversity of `run` inside
        # libFuzzer, whose coverage then keeps what reaches new code
        fresh = generate(RandomSource(rng), cfg)
        out = encode(fresh)
        if len(out) <= max_size:
            remember(out, cfg, fresh)       # generated traces pass every check decode makes
            return out
    events, is_json = decoded(data, cfg)        # remembered: the mutants of this call before
    if byte_mutate is not None and not is_json and rng.random() < 0.5:
        return byte_mutate(data, max_size)      # keep the raw-bytes path explored too
    # --kernel-only: a mutant must break no allowance either, or the target would read its
    # bytes as generator input rather than as the mutant (atheris_engine.decode)
    strict = cfg is not None and cfg.kernel_only
    for _ in range(4):                          # a mutation that changes nothing: try another
        cand = mutate_events(events, rng)
        if cand != events and well_formed(cand, strict=strict):
            out = encode(cand)
            if len(out) <= max_size:
                if cfg is not None:             # decode(out, cfg) is cand itself
                    remember(out, cfg, cand)
                return out
    if byte_mutate is not None and not is_json:
        return byte_mutate(data, max_size)
    return data[:max_size]

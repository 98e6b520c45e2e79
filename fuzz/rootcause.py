"""Root causes: which divergence of a trace is the cause, and which are its echoes.

A minimized trace often shows several divergences, and only some of them are what a version's
code does differently at that event.  Two relations, both decided by running models, never by
the names of classes:

* **knock-on**.  A divergence D at event j with one side S wrong, when the two sides reach
  event j in different states.  Run the other side's code from S's state at j (a copy of S's
  model whose class is swapped for the other side's; the two classes must keep the same
  attributes).  If the other version's code goes wrong the same way from there, event j's code
  is not what differs: the state is, so D is a knock-on of the divergence at the event after
  which the two sides' states first differed (its root).  A knock-on of a known root is known;
  a knock-on of a NEW root stays NEW but is reported under its root, and counts once.

* **inherited** (a candidate against the version it patches, its base: the other side).  A
  divergence that blames only the candidate at an event where both sides started from the same
  state, where the base is wrong in a known way the candidate is not (the candidate fixes it),
  and whose class, operation and shape the known list gives the base itself.  The evidence must
  be a run: the same trace with a few earlier events deleted (one or two faults, host maps or
  notifier pairs) in which base and candidate both show it at the same event.  Then the
  candidate's code did not cause it: the base's flaw used to mask it (the MIPS fix of the
  inclusive end zaps less, and the flush that v5.13 asks for after every slot hit is no longer
  covered by a zap).  Reported as known, "inherited from <base>", with the fix named.

* **same-event**: a NEW zap, age or flush finding at an event where the same side's walker
  handed its handlers the wrong gfns (a NEW gfn-set-mismatch there): the gfn set is the root.

* **contrast**: a known flaw of the base that shows against a candidate only because the
  candidate's own NEW divergence at that event covers it (an over-zap makes the base's
  unconditional flush look needed).  Never counted as a fix.

Everything else, a divergence at the event where the candidate's own code differs, is a root.

Cost: one pass over the trace per divergence (both models advanced together, their states
compared after each event, then four model copies at the event), so an unminimized trace of
thousands of events costs what running it twice does.  The deletion search for inheritance
runs only on traces of at most MAX_EVIDENCE_EVENTS events (a minimized trace is a handful).
Task-mode traces (several tasks, or versions whose locks block, v5.15 on): a state at an event
means what it does for one task only while the events up to it ran one at a time, in trace
order, on both sides; there each side's run is repeated with its model's class switched at the
event (a model that a scheduler holds mid-run is not copied), and other traces are left as they
are.  Task mode's findings about a whole run (deadlock, lock-order, count-imbalance) are never
echoes.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

from oracles.compare import Divergence, SideResult, compare_event, merge_findings
from oracles.reference import expect, trace_contexts
from oracles.triage import KnownEntry, is_candidate, mark_known

from fuzz import runner
from fuzz.runner_tasks import needs_task_mode
from language.trace import (Event, FaultBegin, FaultCommit, InvalidateRangeEnd, InvalidateRangeStart,
                            Schedule, notifier_range)
from language.wellformed import well_formed

# what a handler did with the gfns it was handed (a wrong gfn set at the same event explains them)
EFFECTS = ("missed-invalidation", "over-invalidation", "wrong-young", "spurious-flush", "missed-flush")
# task mode's findings about a whole run (its locks, its counts at the end), not about what one
# event's code did from a state: no state at one event explains them
TRACE_LEVEL = ("deadlock", "lock-order", "count-imbalance")
MAX_DELETED_UNITS = 2          # how many earlier events (or pairs) the inheritance evidence may drop
MAX_EVIDENCE_EVENTS = 60       # longer traces (unminimized, --profile large-vm) get no deletion search


@dataclass
class CrossRun:
    """What the runner learned at event j of a trace: whether the sides' states were equal, and
    the findings of each version's code when both run from one side's state."""
    states_equal: bool
    from_old_state: list[tuple[str, str, str, str]]    # (cls, op, shape, wrong_side), old code at "old"
    from_new_state: list[tuple[str, str, str, str]]
    first_difference: int | None = None    # the event after which the states first differed


def _same(a, b) -> bool:
    """Equal in what the oracles read of a mapping (the models' bookkeeping may differ)."""
    return (a.slots == b.slots and a.leaves == b.leaves and a.tlb == b.tlb
            and a.mmu_notifier_count == b.mmu_notifier_count and a.tlbs_dirty == b.tlbs_dirty)


def _advance_both(old_cls: type, new_cls: type, events: list[Event], j: int):
    """Both models through events[:j], in one pass, and the first event after which their
    states differ (None: equal all the way); (None, None, None) if a side crashed."""
    m_old, m_new = old_cls(), new_cls()
    first = None
    for i, ev in enumerate(events[:j]):
        if runner.apply_event(m_old, ev).crashed or runner.apply_event(m_new, ev).crashed:
            return None, None, None
        if first is None and not _same(m_old.snapshot(), m_new.snapshot()):
            first = i
    return m_old, m_new, first


def _as(model, cls: type):
    twin = copy.deepcopy(model)
    twin.__class__ = cls
    return twin


def _both_codes_from(model, old_cls: type, new_cls: type, events: list[Event], j: int,
                     context) -> list[tuple[str, str, str, str]]:
    ev = events[j]
    a, b = _as(model, old_cls), _as(model, new_cls)
    pre = a.snapshot() if notifier_range(ev) is not None else None
    obs_a, obs_b = runner.apply_event(a, ev), runner.apply_event(b, ev)
    exp = expect(ev, pre) if pre is not None else None
    divs = compare_event(j, ev, exp, SideResult(pre, a.view(), obs_a, a.host),
                         exp, SideResult(pre, b.view(), obs_b, b.host), context)
    return [(d.cls, d.op, d.shape, d.wrong_side) for d in divs]


def _serial(runs, events: list[Event], j: int) -> bool:
    """Each of events[:j + 1] (directives aside) ran, alone (no other task ran while it was
    under way), in trace order, and none before j crashed: the state before event j is then
    the state after the event before it."""
    order = [i for i in range(j + 1) if not isinstance(events[i], Schedule)]
    for r in runs:
        for n, i in enumerate(order):
            e = r.events[i]
            if not e.ran or e.interleaved or e.started_before != tuple(order[:n]):
                return False
            if i < j and e.obs is not None and e.obs.crashed:
                return False
    return True


def _codes_at(base, other: type, events: list[Event], j: int, own) -> list[tuple[str, str, str, str]]:
    """Task mode: event j's findings of base's own code and of `other`'s code, both from the
    state base's code reached (two runs from the start, the second switching its model's class
    at j), as one comparison: wrong_side old is base's code, new is other's."""
    from fuzz.runner_tasks import run_side
    swapped = run_side(base, events, "", runner.apply_event, swap_at=(j, other))
    if not _serial([swapped], events, j):
        return []
    divs = merge_findings(j, events[j], own.events[j].findings, swapped.events[j].findings)
    return [(d.cls, d.op, d.shape, d.wrong_side) for d in divs]


def cross_run_tasks(events: list[Event], j: int, old_cls: type, new_cls: type) -> CrossRun | None:
    """cross_run for a task-mode trace whose events up to j ran one at a time and in trace
    order on both sides, so that "the state at event j" means what it does for one task (None
    otherwise).  Each side's run is repeated from the start with the model's class switched at
    j, instead of copying a model that a scheduler and its greenlets hold mid-run."""
    from fuzz.runner_tasks import run_side
    r_old = run_side(old_cls, events, "", runner.apply_event, keep_posts=True)
    r_new = run_side(new_cls, events, "", runner.apply_event, keep_posts=True)
    if not _serial([r_old, r_new], events, j):
        return None
    ran = [i for i in range(j) if not isinstance(events[i], Schedule)]
    first = next((i for i in ran if not _same(r_old.events[i].post, r_new.events[i].post)), None)
    equal = not ran or _same(r_old.events[ran[-1]].post, r_new.events[ran[-1]].post)
    # from the old side's state, old's code is "old" and new's "new"; from the new side's
    # state new's code is the base of the second comparison, so its sides are swapped back
    from_old = _codes_at(old_cls, new_cls, events, j, r_old)
    from_new = [(c, o, s, {"old": "new", "new": "old"}.get(w, w))
                for c, o, s, w in _codes_at(new_cls, old_cls, events, j, r_new)]
    return CrossRun(equal, from_old, from_new, first)


def cross_run(events: list[Event], j: int, old_cls: type, new_cls: type) -> CrossRun | None:
    """Run both versions' code at event j from each side's own state (None when that cannot
    be done faithfully: the classes keep different attributes, a side crashed before j, or a
    task-mode trace's events up to j did not run one at a time in trace order)."""
    probe_old, probe_new = old_cls(), new_cls()
    if set(vars(probe_old)) != set(vars(probe_new)):
        return None
    if needs_task_mode(events, old_cls, new_cls):
        return cross_run_tasks(events, j, old_cls, new_cls)
    m_old, m_new, first = _advance_both(old_cls, new_cls, events, j)
    if m_old is None:
        return None
    context = trace_contexts(events)[j]
    equal = _same(m_old.snapshot(), m_new.snapshot())
    return CrossRun(equal, _both_codes_from(m_old, old_cls, new_cls, events, j, context),
                    _both_codes_from(m_new, old_cls, new_cls, events, j, context), first)


def _cross(events: list[Event], j: int, old: runner.Side, new: runner.Side) -> CrossRun | None:
    if old.contained or new.contained:       # a candidate's class exists only in its worker
        from fuzz.contain import cross_run_contained
        return cross_run_contained(events, j, old, new)
    return cross_run(events, j, old.cls, new.cls)


def _units(events: list[Event], j: int) -> list[list[int]]:
    """Earlier events as deletable units: a fault's begin and commit, a notifier pair."""
    units, taken = [], set()
    for i, ev in enumerate(events[:j]):
        if i in taken:
            continue
        unit = [i]
        if isinstance(ev, FaultBegin):
            unit += [k for k in range(i + 1, j) if isinstance(events[k], FaultCommit) and events[k].fault == ev.fault][:1]
        elif isinstance(ev, InvalidateRangeStart):
            unit += [k for k in range(i + 1, j) if isinstance(events[k], InvalidateRangeEnd)
                     and (events[k].start, events[k].end) == (ev.start, ev.end) and k not in taken][:1]
        taken.update(unit)
        units.append(unit)
    return units


def _inheritance_evidence(d: Divergence, old: runner.Side, new: runner.Side,
                          known: list[KnownEntry]) -> list[int] | None:
    """Earlier events whose deletion lets base and candidate both show d at its event."""
    events, j = d.trace, d.event_index
    if len(events) > MAX_EVIDENCE_EVENTS:
        return None
    units = _units(events, j)
    tries = [[u] for u in units] + [[u, v] for a, u in enumerate(units) for v in units[a + 1:]]
    for drop in tries:
        gone = sorted(i for u in drop for i in u)
        if len(drop) > MAX_DELETED_UNITS:
            break
        variant = [ev for i, ev in enumerate(events) if i not in gone]
        if not well_formed(variant):
            continue
        at = j - len(gone)
        for x in runner.run_trace(variant, d.arch, old, new, known).divergences:
            if (x.cls, x.op, x.shape, x.wrong_side, x.event_index) == (d.cls, d.op, d.shape, "both", at):
                return gone
    return None


def _base_has(d: Divergence, base: str, known: list[KnownEntry]) -> str | None:
    probe = Divergence(d.cls, "both", d.op, d.shape, d.event_index, "", d.arch, base, base)
    mark_known([probe], known)
    return probe.explanation if probe.known else None


def _label(d: Divergence) -> str:
    return f"{d.cls} at {d.op} ({d.shape})"


def attribute(d: Divergence, arch: str, old: runner.Side, new: runner.Side,
              known: list[KnownEntry]) -> Divergence:
    """Set d.cause/root/root_event (and known, for echoes of known behaviour): see the module
    doc.  d.trace is the trace that shows d (minimized or not); d is returned."""
    if d.wrong_side == "both" or not d.trace or d.event_index >= len(d.trace):
        return d
    events = d.trace
    if d.cls in TRACE_LEVEL:
        return d
    try:
        res = runner.run_trace(events, arch, old, new, known)
        here = _cross(events, d.event_index, old, new)
    except Exception:                          # a model that cannot be copied: leave d as it is
        return d
    if here is None:
        # no cross run (an interleaved task-mode trace): the same-event relation needs none
        # when the trace's own run reports the walker's wrong gfns at this event
        if not d.known and d.cls in EFFECTS:
            for x in res.divergences:
                if (x.event_index == d.event_index and x.cls == "gfn-set-mismatch" and not x.known
                        and x.wrong_side in (d.wrong_side, "both")):
                    d.cause, d.root, d.root_event = "same-event", x.signature, d.event_index
                    return d
        return d
    wrong = d.wrong_side
    shown = here.from_new_state if wrong == "new" else here.from_old_state
    other_pos = "old" if wrong == "new" else "new"
    if not here.states_equal:
        if any((c, o, s) == (d.cls, d.op, d.shape) and w in (other_pos, "both") for c, o, s, w in shown):
            i = here.first_difference
            roots = [x for x in res.divergences if i is not None and x.event_index == i]
            root = next((x for x in roots if x.wrong_side in (wrong, "both")), roots[0] if roots else None)
            d.cause = "knock-on"
            d.root_event = i if i is not None else -1
            if root is not None:
                d.root = root.signature
                if root.known and not d.known:
                    d.known = True
                    d.explanation = (f"knock-on of a known divergence at event {i}, {_label(root)}: the "
                                     f"other version's code does the same from this side's state here. "
                                     f"{root.explanation}")
            return d
    if not d.known and d.cls in EFFECTS:
        # the walker handed the wrong gfns at this very event: what was zapped, aged or flushed
        # follows from that.  Read from the cross run, which lists every finding at this event
        # (the trace's own run reports a signature only where it first shows)
        for c, o, s, w in shown:
            if c == "gfn-set-mismatch" and w in (wrong, "both"):
                walker = Divergence(c, w, o, s, d.event_index, "", arch, old.name, new.name)
                mark_known([walker], known)
                if not walker.known:
                    d.cause, d.root, d.root_event = "same-event", walker.signature, d.event_index
                    return d
    if not here.states_equal:
        return d
    # same state, one side wrong: this event's code differs
    side_name = new.name if wrong == "new" else old.name
    base = old.name if wrong == "new" else new.name
    here_divs = [x for x in res.divergences if x.event_index == d.event_index and x.signature != d.signature]
    if d.known and is_candidate(base) and not is_candidate(side_name):
        # a known flaw of the base that the candidate does not show here only because its own
        # new divergence at this event covers it (an over-zap makes a flush look needed)
        own = None
        for x in here_divs:
            if not x.known and x.wrong_side in (other_pos, "both"):
                x.trace = events            # what the candidate shows here, itself attributed:
                if not attribute(x, arch, old, new, known).known:      # an inherited one is not its own
                    own = x
                    break
        if own is not None:
            d.cause, d.root, d.root_event = "contrast", own.signature, d.event_index
        return d
    # a candidate's divergence is its own unless it only uncovered what its base does too
    if d.known or not is_candidate(side_name) or is_candidate(base):
        return d
    fixed = [x for x in res.divergences
             if x.event_index == d.event_index and x.wrong_side == other_pos and x.known]
    why = _base_has(d, base, known)
    if not fixed or why is None:
        return d
    gone = _inheritance_evidence(d, old, new, known)
    if gone is None:
        return d
    d.cause = "inherited"
    d.root_event = d.event_index
    d.root = fixed[0].signature
    d.known = True
    d.explanation = (f"inherited from {base}: {base} does this too (without events "
                     f"{', '.join(map(str, gone))} both sides show it at this event); it shows on the "
                     f"candidate alone because the candidate fixes {base}'s "
                     f"{'; '.join(_label(x) for x in fixed)} here. {why}")
    return d


def fixes(divergences: list[Divergence]) -> list[Divergence]:
    """The known flaws a candidate fixes: known divergences that blame only the other side of
    a pair where one side is a candidate."""
    out = []
    for d in divergences:
        cand = {"old": d.new, "new": d.old}.get(d.wrong_side)
        if cand is not None and d.known and is_candidate(cand):
            out.append(d)
    return out


def explain_untriaged(divergences: list[Divergence], events: list[Event], arch: str, old: runner.Side,
                      new: runner.Side, known: list[KnownEntry]) -> list[Divergence]:
    """Attribute the divergences of `events` that the known list leaves NEW (a knock-on of a
    known root, an inherited one, is then known), as run, show and replay all do; returns them."""
    for d in divergences:
        if not d.known:
            d.trace = events
            attribute(d, arch, old, new, known)
    return divergences


"""The runner: feeds every event of a trace to two models, computes the reference for each,
and compares (design card section 2).  This is the only place where models and oracles meet.
"""
from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from impls.kvm import Kvm, ModelError
from impls.tasks import SchedulerStop

from fuzz.runner_tasks import needs_task_mode, run_trace_tasks
from impls.machine import HostPte
from impls.observation import Observation
from oracles.compare import EXPECTATION_OPS, Divergence, SideResult, compare_event, nothing_to_check
from oracles.reference import expect, same_memslots, trace_contexts
from oracles.triage import KnownEntry, mark_known

from language.trace import (ChangePte, ClearFlushYoung, ClearYoung, Event, FaultBegin, FaultCommit,
                    GuestAccess, HostMap, InvalidateRangeEnd, InvalidateRangeStart, Release,
                    SetMemoryRegion, SyncPage, TestYoung, Schedule)
from language.trace import notifier_range
from language.wellformed import check_well_formed, well_formed  # noqa: F401  (re-exported)


class CandidateError(Exception):
    """A model could not even be constructed."""


# What apply_event captures as the model's crash.  In process (only our own models run there)
# a KeyboardInterrupt is the user's Ctrl-C and must stop the run; a candidate's worker
# (fuzz/contain.py) ignores SIGINT and sets this to BaseException, so there even SystemExit,
# os._exit (made to raise there) and KeyboardInterrupt raised by a model are its crash.
CAUGHT: type[BaseException] = Exception
TOOL_DIR = str(Path(__file__).resolve().parent) + os.sep


def crash_text(e: BaseException) -> str:
    """`Type: message at file:line (function)`, at the deepest frame that is not this tool's
    own fuzz/ code (so a candidate's call of a function that raises for it names its line)."""
    frames = traceback.extract_tb(e.__traceback__)
    frame = next((f for f in reversed(frames) if not f.filename.startswith(TOOL_DIR)),
                 frames[-1] if frames else None)
    where = f" at {frame.filename}:{frame.lineno} ({frame.name})" if frame else ""
    return f"{type(e).__name__}: {e}{where}"


def _change_pte(model: Kvm, ev: ChangePte) -> None:
    pte = HostPte(ev.pfn, ev.writable)
    model.host.set_pte(ev.hva, ev.pfn, ev.writable)   # set_pte_at_notify
    model.kvm_mmu_notifier_change_pte(ev.hva, pte)


def _young(result: int, model: Kvm) -> None:
    model.obs.young = int(result)


def _schedule(model: Kvm, ev: Schedule) -> None:
    model.obs.note = "schedule directive (task mode only)"


# what apply_event does per event type: one dict lookup instead of a chain of isinstance tests
# (a subclass of an event type falls back to the chain, in the same order as before)
_APPLY = {
    SetMemoryRegion: lambda m, ev: m.set_user_memory_region(ev.as_id, ev.slot, ev.flags, ev.guest_phys_addr,
                                                            ev.memory_size, ev.userspace_addr),
    HostMap: lambda m, ev: m.host_map(ev.hva, ev.size, ev.pfn, ev.page_size, ev.writable),
    FaultBegin: lambda m, ev: m.fault_begin(ev.fault, ev.as_id, ev.gfn, ev.write),
    FaultCommit: lambda m, ev: m.fault_commit(ev.fault),
    GuestAccess: lambda m, ev: m.guest_access(ev.as_id, ev.gfn, ev.write),
    SyncPage: lambda m, ev: m.sync_page(ev.as_id, ev.gfn),
    InvalidateRangeStart: lambda m, ev: m.kvm_mmu_notifier_invalidate_range_start(ev.start, ev.end, ev.blockable),
    InvalidateRangeEnd: lambda m, ev: m.kvm_mmu_notifier_invalidate_range_end(ev.start, ev.end, ev.blockable),
    ChangePte: _change_pte,
    ClearFlushYoung: lambda m, ev: _young(m.kvm_mmu_notifier_clear_flush_young(ev.start, ev.end), m),
    ClearYoung: lambda m, ev: _young(m.kvm_mmu_notifier_clear_young(ev.start, ev.end), m),
    TestYoung: lambda m, ev: _young(m.kvm_mmu_notifier_test_young(ev.hva), m),
    Release: lambda m, ev: m.kvm_mmu_notifier_release(),
    Schedule: _schedule,
}


def _apply_by_isinstance(model: Kvm, ev: Event) -> None:
    for cls, run in _APPLY.items():
        if isinstance(ev, cls):
            return run(model, ev)
    raise ModelError(f"unknown event {ev!r}")


def apply_event(model: Kvm, ev: Event) -> Observation:
    """Run one event on one model and return what it observed.  An exception raised by the
    model's own code is captured in the observation (`crashed`), not raised."""
    model.begin(ev.op)
    try:
        _APPLY.get(type(ev), _apply_by_isinstance)(model, ev)
    except (ModelError, SchedulerStop):
        raise
    except CAUGHT as e:
        model.obs.crashed = crash_text(e)
        model.mmu_lock_held = False
    return model.obs


@dataclass
class Side:
    """One side of a comparison: a name for reports and the class to instantiate."""
    name: str
    cls: type[Kvm]
    contained = False     # fuzz.contain.CandidateSide: the class exists only in a worker process

    def make(self) -> Kvm:
        try:
            return self.cls()
        except Exception as e:
            raise CandidateError(f"model {self.name}: constructor raised {type(e).__name__}: {e}") from None


class CapturingSide(Side):
    """A Side that keeps the last model it made, so a caller can snapshot or inspect it."""

    def __init__(self, side: Side):
        super().__init__(side.name, side.cls)
        self.model = None

    def make(self) -> Kvm:
        self.model = super().make()
        return self.model


@dataclass
class TraceResult:
    divergences: list[Divergence] = field(default_factory=list)
    events: int = 0
    observations: list[tuple[Observation, Observation]] = field(default_factory=list)
    schedules: dict = field(default_factory=dict)   # task mode: side -> [runner_tasks.Segment]


def run_trace(events: list[Event], arch: str, old: Side, new: Side, known: list[KnownEntry],
              keep_observations: bool = False, stop_at_first: bool = False) -> TraceResult:
    """Run `events` on both sides; divergences are deduplicated by signature within a trace
    (the first event that shows a signature is the one reported).  A user's candidate runs
    only in its worker process, under a deadline (fuzz/contain.py)."""
    if old.contained or new.contained:
        from fuzz.contain import run_trace_contained
        return run_trace_contained(events, arch, old, new, known, keep_observations, stop_at_first)
    if needs_task_mode(events, old.cls, new.cls):
        return _run_trace_tasks(events, arch, old, new, known, keep_observations)
    m_old, m_new = old.make(), new.make()
    res = TraceResult()
    seen: set[str] = set()
    dead_old = dead_new = False
    contexts = trace_contexts(events)
    names = (arch, old.name, new.name)
    # a model with its own snapshot() may report other counts than its attributes: always compared
    plain = type(m_old).snapshot is Kvm.snapshot and type(m_new).snapshot is Kvm.snapshot
    for i, ev in enumerate(events):
        # The oracles read the state before an event only for a notifier event whose checks
        # use an expectation (EXPECTATION_OPS; check_side reads `pre` only through them).  The
        # expectation is computed before the event runs, from the models' own state (Kvm.view:
        # nothing runs meanwhile); what it keeps of leaves, and what the checks read of the
        # pre-event state (Kvm.shallow_snapshot), are fields no event changes in place.  The
        # state after an event is read by compare_event before the next event starts, so it is
        # the models' own state, uncopied.  All are what snapshots taken then would hold.
        notifier = ev.op in EXPECTATION_OPS and notifier_range(ev) is not None
        if notifier:
            view_o, view_n = m_old.view(), m_new.view()
            exp_o = expect(ev, view_o)
            # the reference's gfns depend only on the memslots: shared when both sides have the
            # same ones (always, unless one side crashed earlier and stopped)
            exp_n = expect(ev, view_n, exp_o if same_memslots(view_o, view_n) else None)
            pre_o, pre_n = m_old.shallow_snapshot(), m_new.shallow_snapshot()
        obs_o = apply_event(m_old, ev) if not dead_old else Observation(ev.op)
        obs_n = apply_event(m_new, ev) if not dead_new else Observation(ev.op)
        res.events += 1
        if keep_observations:
            res.observations.append((obs_o, obs_n))
        if not notifier:
            if (plain and nothing_to_check(obs_o, m_old.mmu_notifier_count)
                    and nothing_to_check(obs_n, m_new.mmu_notifier_count)):
                continue          # compare_event would find nothing on either side
            pre_o = pre_n = exp_o = exp_n = None
        divs = compare_event(i, ev, exp_o, SideResult(pre_o, m_old.view(), obs_o, m_old.host),
                             exp_n, SideResult(pre_n, m_new.view(), obs_n, m_new.host), contexts[i])
        if obs_o.crashed:
            dead_old = True
        if obs_n.crashed:
            dead_new = True
        for d in divs:
            d.arch, d.old, d.new = names
            if d.signature not in seen:
                seen.add(d.signature)
                res.divergences.append(d)
        if stop_at_first and res.divergences:
            break
    mark_known(res.divergences, known)
    return res


def _run_trace_tasks(events: list[Event], arch: str, old: Side, new: Side, known: list[KnownEntry],
                     keep_observations: bool) -> TraceResult:
    """Several tasks: fuzz/runner_tasks.py runs each side under its scheduler."""
    divs, observations, schedules = run_trace_tasks(events, arch, old, new, apply_event)
    res = TraceResult(events=len(events))
    if keep_observations:
        res.observations = observations
        res.schedules = schedules
    seen: set[str] = set()
    for d in divs:
        d.arch, d.old, d.new = arch, old.name, new.name
        if d.signature not in seen:
            seen.add(d.signature)
            res.divergences.append(d)
    mark_known(res.divergences, known)
    return res

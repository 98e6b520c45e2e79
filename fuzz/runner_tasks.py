"""Task mode of the runner: a trace whose events belong to several tasks (or a model whose
locks need real blocking) runs every side as kernel tasks under a scheduler (impls/tasks.py,
fuzz/schedule.py), then the two sides are compared event by event as in one-task mode.

The sides run one after the other, each with its own scheduler, since their interleavings may
differ (one side blocks where the other does not).  Per event and side we keep the state when
the event started and when it ended; an event that ran alone from start to end is checked
against the reference like any one-task event.  An event that other tasks interleaved with (on
either side: one level for both, so blame does not follow scheduling) keeps the checks that
read only the memslots when no task changed them meanwhile, else only what holds at any
instant (warnings, crashes, counts, the machine's own invariants, what it left mapped).  When
the sides reached an event in different orders, a one-sided finding that both versions are
known for is that known behaviour (oracles.triage.mark_known).

Each task's program runs in trace order; the tasks' steps need not.  A step that the host's
own rules make impossible where a schedule puts it is not run (`lost_race`): a host fault on a
page another thread already populated, a set_pte_at_notify on an absent pte; and `release`
(exit_mmap) waits for every other task to exit.

Then the properties of paired notifiers, over the whole run:

* deadlock: every live task waits; the wait-for cycle names tasks and locks;
* lock-order: a cycle in lock acquisition order (lockdep), the mm's pseudo-lock included;
* count-imbalance: mmu_notifier_count (or v5.15's active-invalidation count) still raised when
  every invalidation has ended: every later fault on that range would retry forever.

The mm side of each notifier event is modelled here, since it is the host's and not KVM's: the
lockdep map `mmu_notifier_invalidate_range_start` is taken around every start and every end
callback (never across them); an mm task holds `mmap_lock` for read from its outermost
range_start to the matching range_end (a COW fault, wp_page_copy), and the page-table lock
of the page around change_pte (set_pte_at_notify runs under it: two change_ptes of one page
table wait for each other).  Which invalidations are open is host state the oracle reads.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from impls.kvm import Kvm, ModelError
from impls.machine import HostPageTable
from impls.observation import Observation
from impls.tasks import LockdepMap, RwSem, Scheduler
from oracles.compare import INSTANT, MEMSLOTS, STATE, Divergence, Finding, SideResult, check_side, merge_findings
from oracles.reference import covers_page, expect, under_open_range

from fuzz.schedule import policy_for
from language.trace import (MAIN_TASK, TASK_ROLES, ChangePte, Event, FaultCommit, HostMap, InvalidateRangeEnd, InvalidateRangeStart,
                    Release, Schedule, task_role)

NEVER = 1 << 60
PTE_TABLE_SHIFT = 21      # one page-table page maps 512 4K pages: 2 MiB of hva per split pte lock


def needs_task_mode(events: list[Event], *classes: type) -> bool:
    """Several tasks, a schedule directive, or a model whose generic layer needs blocking."""
    return (any(getattr(c, "needs_tasks", False) for c in classes)
            or any(e.task != MAIN_TASK or isinstance(e, Schedule) for e in events))


def task_of(ev: Event) -> str:
    """The task that runs `ev`: its own, or for the one task "main" of an old trace, the kernel
    task of its kind (the mm, a vCPU, the memslot ioctl)."""
    if ev.task != MAIN_TASK:
        return ev.task
    for role, ops in TASK_ROLES.items():
        if ev.op in ops:
            return role
    return MAIN_TASK


@dataclass
class EventRun:
    """One event on one side: its findings, or nothing if it never ran (a deadlock stopped it)."""
    index: int
    ran: bool = False
    findings: list[Finding] = field(default_factory=list)
    obs: Observation | None = None
    interleaved: bool = False        # another task ran between its start and its end
    slots_same: bool = True          # the memslots at its end were those at its start
    started_before: tuple = ()       # the events this side started before it, in order
    # the events started and the events finished, each in order, when it ended: two sides with
    # the same start order may still differ in what ran inside a preempted event
    run_order: tuple = ()
    post: object = None              # the model's snapshot when it ended (fuzz/rootcause.py reads it)


@dataclass
class Segment:
    """A stretch of one side's run in which one task ran: the events it was in (`resumed`: the
    first was already under way) and why it stopped (blocked on a lock, preempted, exited)."""
    task: str
    events: list[int]
    resumed: bool
    stop: str = ""

    def describe(self) -> str:
        evs = ",".join(str(i) for i in self.events) or "-"
        return f"{self.task} {'…' if self.resumed else ''}{evs}" + (f" ({self.stop})" if self.stop else "")


@dataclass
class SideRun:
    events: list[EventRun]
    trace_findings: list[tuple[int, Finding]] = field(default_factory=list)
    model: Kvm | None = None
    segments: list[Segment] = field(default_factory=list)


class MmSide:
    """The host mm's locks around notifier callbacks, per model."""

    def __init__(self) -> None:
        self.start_map = LockdepMap("mmu_notifier_invalidate_range_start")
        self.mmap_lock = RwSem("mmap_lock")
        # the page-table lock around change_pte: v5.12 mm/memory.c wp_page_copy (and mm/ksm.c
        # replace_page, write_protect_page) take it with pte_offset_map_lock, call
        # set_pte_at_notify and only then pte_unmap_unlock, so two change_ptes of one page never
        # interleave.  No KVM path takes it: lockdep orders it against KVM's locks (`ptl`), and
        # `ptl_held` says which task holds which table's lock, keyed by 2 MiB of hva (split pte
        # locks, one per page-table page of 512 ptes; without them mm->page_table_lock is one per
        # mm, which serializes more).  Taken without a scheduling point of its own: a task waits
        # only where another holds it, so nothing else about a schedule changes
        self.ptl = LockdepMap("ptl")
        self.ptl_held: dict[int, str] = {}
        self.depth: dict[str, int] = {}
        # invalidations whose range_end has begun and not returned: the mm is done with the
        # range, but KVM's count is still raised until the callback ends, so a fault that
        # commits meanwhile still sees it open
        self.ending: list[tuple[str, int, int]] = []


def lost_race(host: HostPageTable, ev: Event) -> str | None:
    """Why `ev`, legal where the trace puts it, cannot happen where this schedule runs it (each
    task's program is in trace order, the tasks' steps are not), or None.  The host's own rules
    decide, as they would for two threads of the process: a host fault that finds the pte
    already present (another thread populated it first) changes nothing and notifies nobody,
    and set_pte_at_notify replaces only a present pte."""
    if isinstance(ev, HostMap):
        shift = host.page_shift
        first, count = ev.hva >> shift, ev.size >> shift
        # the pages an open invalidation covers whole, as page-number intervals
        covered = [(-(-s >> shift), e >> shift) for _, s, e in host.open_invalidations]
        for ext in host.extents(first << shift, (first + count) << shift):
            page, end = ext.hva >> shift, ext.hva_end >> shift
            moved = True
            while moved and page < end:      # the first present page no invalidation covers
                moved = False
                for lo, hi in covered:
                    if lo <= page < hi:
                        page, moved = hi, True
            if page < end:
                return f"host page {page << shift:#x} is already present and no invalidation of it is open: " \
                       "another thread populated it first"
    if isinstance(ev, ChangePte) and host.lookup(ev.hva) is None:
        return f"host page {ev.hva:#x} is not present: there is no pte for set_pte_at_notify to replace"
    return None


def apply_in_task(model: Kvm, mm: MmSide, sched: Scheduler, ev: Event, apply_event) -> Observation | None:
    """Run one event inside its task, with the mm side around notifier callbacks; None when
    the event cannot happen at this point of the schedule (`lost_race`)."""
    task = sched.current.name
    host: HostPageTable = model.host
    why = lost_race(host, ev)
    if why is not None:
        model.obs.note = f"not run: {why}"
        return None
    if isinstance(ev, InvalidateRangeStart):
        if mm.depth.get(task, 0) == 0:
            mm.mmap_lock.down_read(sched, "do_user_addr_fault")
        mm.depth[task] = mm.depth.get(task, 0) + 1
        host.invalidating.append(task)
        mm.start_map.acquire(sched, "__mmu_notifier_invalidate_range_start")
        obs = apply_event(model, ev)
        mm.start_map.release(sched)
        host.open_invalidations.append((task, ev.start, ev.end))
        return obs
    if isinstance(ev, InvalidateRangeEnd):
        for i in range(len(host.open_invalidations) - 1, -1, -1):
            if host.open_invalidations[i] == (task, ev.start, ev.end):
                del host.open_invalidations[i]
                mm.ending.append((task, ev.start, ev.end))
                break
        mm.start_map.acquire(sched, "__mmu_notifier_invalidate_range_end")
        obs = apply_event(model, ev)
        mm.start_map.release(sched)
        if (task, ev.start, ev.end) in mm.ending:
            mm.ending.remove((task, ev.start, ev.end))
        if task in host.invalidating:
            host.invalidating.remove(task)
        mm.depth[task] = mm.depth.get(task, 1) - 1
        if mm.depth[task] == 0:
            mm.mmap_lock.up_read(sched)
        return obs
    if isinstance(ev, Release):
        # exit_mmap runs once mm_users drops to zero: every other thread of the process (the
        # vCPUs, the ioctl caller, the other mm contexts) has exited by then
        me = sched.current
        others = lambda: sorted(t.name for t in sched.tasks.values() if t is not me and not t.done)
        sched.wait_until(lambda: not others(), "mm_users to drop to zero (exit_mmap)", others)
        return apply_event(model, ev)
    if isinstance(ev, ChangePte):
        table = ev.hva >> PTE_TABLE_SHIFT
        holder = lambda: [mm.ptl_held[table]] if table in mm.ptl_held else []
        sched.wait_until(lambda: table not in mm.ptl_held, "ptl", holder)
        mm.ptl_held[table] = task
        mm.ptl.acquire(sched, "wp_page_copy")
        obs = apply_event(model, ev)
        mm.ptl.release(sched)
        del mm.ptl_held[table]
        return obs
    return apply_event(model, ev)


def why_stopped(t, mid_event: bool) -> str:
    """Why task `t` gave up the CPU at a switch: blocked, preempted inside an event, or it
    finished an event (or all of them) and another task was chosen."""
    if t.done:
        return "exits"
    if t.wait is not None:
        holders = t.wait.holders()
        return f"waits for {t.wait.what}" + (f" held by {', '.join(holders)}" if holders else "")
    return "preempted" if mid_event else ""


def run_side(cls_make, events: list[Event], arch: str, apply_event,
             swap_at: tuple[int, type] | None = None, keep_posts: bool = False) -> SideRun:
    """Run every task of `events` on a fresh model of one side.  For fuzz/rootcause.py:
    swap_at (i, cls): from event i on, the model runs cls's code (another version's code from
    this side's state; the classes keep the same attributes); keep_posts: each event's
    EventRun keeps the model's snapshot at its end."""
    model: Kvm = cls_make()
    directive = next((e for e in events if isinstance(e, Schedule)), None)
    programs: dict[str, list[int]] = {}
    for i, ev in enumerate(events):
        if not isinstance(ev, Schedule):
            programs.setdefault(task_of(ev), []).append(i)
    runs = [EventRun(i) for i in range(len(events))]
    pos = {t: 0 for t in programs}
    current_event: dict[str, int | None] = {t: None for t in programs}
    task_obs: dict[str, Observation] = {}
    interleaved: set[int] = set()
    last_task: list[str | None] = [None]

    def next_index(t: str) -> int:
        p = programs[t]
        return p[pos[t]] if pos[t] < len(p) else NEVER

    segments: list[Segment] = []
    started: list[int] = []          # event indices in the order this side started them
    finished: list[int] = []         # ... and in the order they ended
    bare_during: set[int] = set()    # faults in flight when a bare change_pte ran
    changed_during: dict[int, list[tuple[int, int]]] = {}   # fault -> host ranges changed under open ones
    # fault_commit event -> (leaves it had installed, the host then) when another task first
    # changed the host while it was preempted after an install (oracles.compare.SideResult)
    installed_host: dict[int, tuple[int, HostPageTable]] = {}

    def on_switch(task) -> None:
        if last_task[0] is not None and last_task[0] != task.name:
            for t, i in current_event.items():
                if i is not None and t != task.name:
                    interleaved.add(i)
        if last_task[0] != task.name:
            if segments:
                segments[-1].stop = why_stopped(sched.tasks[last_task[0]], current_event.get(last_task[0]) is not None)
            i = current_event.get(task.name)
            segments.append(Segment(task.name, [i] if i is not None else [], i is not None))
        last_task[0] = task.name
        if task.name in task_obs:
            model.obs = task_obs[task.name]
        model.mmu_lock_held = model.mmu_lock_obj.holder is task
        i = current_event.get(task.name)
        sched.lockdep_event = i if i is not None else next_index(task.name)

    sched = Scheduler(None, step_limit=200 * len(events) + 1000, on_switch=on_switch)
    sched.policy = policy_for(directive, events, next_index, lambda t: current_event.get(t))
    sched.lockdep_event = 0
    model.sched = sched
    mm = MmSide()
    out = SideRun(runs, model=model)
    dead = [False]

    def body_for(task: str):
        def body() -> None:
            for i in programs[task]:
                ev = events[i]
                current_event[task] = i
                sched.lockdep_event = i
                segments[-1].events.append(i)
                started.append(i)
                pre = model.snapshot()
                model.begin(ev.op)
                task_obs[task] = model.obs
                skipped = False
                # oracles.reference.trace_contexts as this side ran it: a change_pte that no
                # invalidation whose start has returned covers, while these faults are in flight
                open_now = [(s, e) for _, s, e in model.host.open_invalidations]
                bare = isinstance(ev, ChangePte) and not covers_page(open_now, ev.hva)
                # ... and one under an open invalidation ("host-changed-under-open-invalidation")
                change = ((ev.hva - ev.hva % 4096, ev.hva - ev.hva % 4096 + 4096) if isinstance(ev, ChangePte)
                          else (ev.hva, ev.hva + ev.size) if isinstance(ev, HostMap) else None)
                covered = change is not None and not bare and under_open_range([change], open_now)
                # begun and not committed, or inside fault_commit (it has popped its fault, and
                # may be preempted before it takes mmu_lock)
                in_flight = (set(model.faults) | {events[j].fault for j in current_event.values()
                                                  if j is not None and isinstance(events[j], FaultCommit)}
                             if bare or covered else set())
                if swap_at is not None and i == swap_at[0]:
                    model.__class__ = swap_at[1]
                if isinstance(ev, (ChangePte, HostMap)):
                    for t, j in current_event.items():
                        if (t != task and j is not None and j not in installed_host
                                and isinstance(events[j], FaultCommit) and task_obs[t].installed):
                            installed_host[j] = (len(task_obs[t].installed), model.host.copy())
                if dead[0]:
                    obs = model.obs
                else:
                    # noted before the event runs: a fault may commit while it is preempted
                    # after changing the host, and its context must already say so
                    noted_bare = in_flight - bare_during if bare else set()
                    bare_during.update(noted_bare)
                    if covered:
                        for f in in_flight:
                            changed_during.setdefault(f, []).append(change)
                    obs = apply_in_task(model, mm, sched, ev, apply_event)
                    if obs is None:
                        # it did not happen on this schedule: take back what was noted
                        obs, skipped = model.obs, True
                        bare_during.difference_update(noted_bare)
                        if covered:
                            for f in in_flight:
                                if change in changed_during.get(f, []):
                                    changed_during[f].remove(change)
                pos[task] += 1
                current_event[task] = None
                post = model.snapshot()
                r = runs[i]
                r.ran, r.obs = True, obs
                if keep_posts:
                    r.post = post
                if obs.crashed:
                    dead[0] = True
                if skipped:
                    sched.point(boundary=True)
                    continue
                r.interleaved, r.slots_same = i in interleaved, pre.slots == post.slots
                r.started_before = tuple(started[:-1])
                finished.append(i)
                r.run_order = (tuple(started), tuple(finished))
                side = SideResult(pre, post, obs, model.host, installed_host.pop(i, None))
                context = frozenset()
                if isinstance(ev, FaultCommit):
                    names = []
                    if ev.fault in bare_during:
                        bare_during.discard(ev.fault)
                        names.append("bare-change_pte-during-fault")
                    if under_open_range(changed_during.pop(ev.fault, []),
                                        [(s, e) for _, s, e in model.host.open_invalidations + mm.ending]):
                        names.append("host-changed-under-open-invalidation")
                    context = frozenset(names)
                r.findings = check_side(ev, expect(ev, pre), side, context)
                sched.point(boundary=True)
            # the task leaves the kernel (a vCPU returns to userspace): its srcu sections end
            for idx in [k for k, t in model.srcu.readers.items() if t.name == task]:
                model.srcu.read_unlock(sched, idx)
        return body

    for task in sorted(programs, key=lambda t: programs[t][0]):
        sched.add(task, body_for(task))
    sched.run()
    model.sched = None
    if segments and sched.deadlock is not None:
        segments[-1].stop = why_stopped(sched.tasks[segments[-1].task], True)
    out.segments = segments
    if sched.deadlock is not None:
        d = sched.deadlock
        # the shape names the locks of the wait-for cycle (other tasks may wait behind it)
        in_cycle = [w for t, w, _ in d.waits if t in d.cycle] or [w for _, w, _ in d.waits]
        locks = sorted({w.split(" (")[0] for w in in_cycle})
        # reported at the event whose wait closed the cycle (the newest of the waiting events)
        cycle_tasks = set(d.cycle) or {t for t, _, _ in d.waits}
        blocked = max((current_event[t] for t, _, _ in d.waits
                       if t in cycle_tasks and current_event.get(t) is not None), default=len(events) - 1)
        out.trace_findings.append((blocked, Finding("deadlock", "wait-for-cycle:" + "+".join(locks), d.describe())))
    elif sched.hit_step_limit:
        out.trace_findings.append((len(events) - 1, Finding("deadlock", "no-progress",
                                                           f"no task finished within {sched.step_limit} scheduling points")))
    cyc = sched.lockdep.cycle
    if cyc is not None:
        names = cyc.locks()
        k = names.index(min(names))
        shape = "cycle:" + "->".join(names[k:] + names[:k])
        at = sched.lockdep.cycle_event if sched.lockdep.cycle_event is not None else 0
        out.trace_findings.append((at, Finding("lock-order", shape, "possible circular locking dependency: "
                                               + cyc.describe())))
    if sched.deadlock is None and not sched.hit_step_limit and not dead[0]:
        last = max((i for i, r in enumerate(runs) if r.ran), default=0)
        if model.mmu_notifier_count != 0:
            out.trace_findings.append((last, Finding(
                "count-imbalance", "count-left-raised",
                f"mmu_notifier_count is {model.mmu_notifier_count} after every invalidation ended: "
                "every later fault in its range retries forever")))
        active = getattr(model, "mn_active_invalidate_count", 0)
        if active != 0:
            out.trace_findings.append((last, Finding(
                "count-imbalance", "active-count-left-raised",
                f"mn_active_invalidate_count is {active} after every invalidation ended: memslot updates wait forever")))
    return out


def trusted_level(*runs: EventRun) -> int:
    """Which of an event's checks hold on both sides (oracles.compare.Finding.needs): all of
    them when neither side's run of it was interleaved; those that read only the memslots when
    it was, but no task changed the memslots meanwhile; else only the instant ones.  One level
    for both sides, so which side is wrong does not depend on how each side was scheduled."""
    if not any(r.interleaved for r in runs):
        return STATE
    return MEMSLOTS if all(r.slots_same for r in runs) else INSTANT


def run_trace_tasks(events: list[Event], arch: str, old, new, apply_event
                    ) -> tuple[list[Divergence], list[tuple[Observation, Observation]], dict[str, list[Segment]]]:
    """Both sides in task mode: divergences in trace order (deduplicated by signature later),
    each event's observations per side, and the order each side's tasks ran in."""
    for ev in events:
        role = task_role(ev.task)
        if ev.task != MAIN_TASK and not isinstance(ev, Schedule) and ev.op not in TASK_ROLES.get(role, ()):
            raise ModelError(f"event {ev.op} cannot run in task {ev.task} (a {role} task runs "
                             f"{', '.join(TASK_ROLES.get(role, ()))})")
    r_old = run_side(old.make, events, arch, apply_event)
    r_new = run_side(new.make, events, arch, apply_event)
    per: dict[int, tuple[list[Finding], list[Finding]]] = {}
    for i in range(len(events)):
        e_old, e_new = r_old.events[i], r_new.events[i]
        level = trusted_level(e_old, e_new)
        per[i] = ([f for f in e_old.findings if f.needs <= level],
                  [f for f in e_new.findings if f.needs <= level])
    for at, f in r_old.trace_findings:
        per[at][0].append(f)
    for at, f in r_new.trace_findings:
        per[at][1].append(f)
    out: list[Divergence] = []
    for i, ev in enumerate(events):
        f_old, f_new = per[i]
        if f_old or f_new:
            divs = merge_findings(i, ev, f_old, f_new)
            if r_old.events[i].run_order != r_new.events[i].run_order:
                for d in divs:
                    d.sides_differ = True
            out += divs
    observations = [(r_old.events[i].obs or Observation(ev.op), r_new.events[i].obs or Observation(ev.op))
                    for i, ev in enumerate(events)]
    return out, observations, {"old": r_old.segments, "new": r_new.segments}

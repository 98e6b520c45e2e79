"""Comparison: each side against the reference, and the two sides against each other.

Per event and per side, `check_side` finds what that side did wrong against the reference
(computed from that side's own state before the event, so a divergence earlier in a trace
does not smear later checks).  `compare_event` merges the two sides into divergences that
say which side is wrong: old, new or both.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from language.trace import Event, FaultCommit
from impls.kvm import State
from impls.machine import KVM_MEMSLOT_INVALID, HostPageTable, Leaf, Memslot
from impls.observation import Observation

from .gfnset import GfnSet
from .reference import AGE_OPS, UNPAIRED_OPS, WALKING_OPS, Expectation, Segment, leaf_gfns

# Severity order of the design card; the report's vocabulary.
CLASSES = ["deadlock", "missed-invalidation", "missed-flush", "count-imbalance", "stale-mapping",
           "lock-order", "wrong-young", "gfn-set-mismatch", "warning", "over-invalidation",
           "spurious-flush", "lock-without-hit", "model-crash", "model-hang"]
# deadlock: every live task waits (task mode), the detail is the wait-for cycle;
# lock-order: a cycle in the order locks were taken over a run, as lockdep reports it.
# model-crash: a model raised or exited (any BaseException), or a candidate's worker died;
# model-hang: a candidate did not finish a trace within its deadline (fuzz/contain.py).


@dataclass
class Finding:
    """One thing one side did wrong at one event.  `needs` says what the check read besides the
    event's own observation: INSTANT (nothing: warnings, crashes, counts, what the event left
    mapped), MEMSLOTS (the reference's gfn set and slot hit, which only the memslots decide) or
    STATE (the reference's view of mappings, TLB and accessed bits when the event started).  In
    task mode an event that other tasks interleaved with keeps only the checks whose inputs they
    left alone (fuzz/runner_tasks.py)."""
    cls: str
    shape: str
    detail: str
    needs: int = 0


INSTANT, MEMSLOTS, STATE = 0, 1, 2
# reference checks that read only the memslots (and the event's own observation)
MEMSLOT_CHECKS = {"gfn-set-mismatch", "over-invalidation", "lock-without-hit"}


@dataclass
class Divergence:
    cls: str
    wrong_side: str          # "old" | "new" | "both"
    op: str
    shape: str
    event_index: int
    detail: str
    arch: str = ""
    old: str = ""
    new: str = ""
    known: bool = False
    explanation: str = ""
    trace: list = field(default_factory=list)
    # task mode: the sides reached this event by different schedules (one version blocks where
    # the other does not), so one side alone showing what both versions are known to do is that
    # known behaviour, not a change (oracles.triage.mark_known)
    sides_differ: bool = False
    # how it relates to another divergence `root` of its trace, at event `root_event`
    # (fuzz/rootcause.py): "knock-on", "same-event", "inherited", "contrast" (docs/REPORT.md);
    # "" for a root cause or not analysed
    cause: str = ""
    root: str = ""
    root_event: int = -1

    @property
    def signature(self) -> str:
        return "|".join([self.cls, self.arch, self.old, self.new, self.op, self.wrong_side, self.shape])


@dataclass
class SideResult:
    """What the runner captured of one side for one event.  `installed_host` (task mode): when
    another task changed the host while this event was preempted after installing leaves, the
    number of leaves it had installed then and the host as it was at their install."""
    pre: State
    post: State
    obs: Observation
    host: HostPageTable
    installed_host: tuple[int, HostPageTable] | None = None


# ----- shapes: how a gfn set differs from the reference, in words a KVM developer uses -----
def gfn_shape(got: GfnSet, want: GfnSet, segments: list[Segment]) -> str:
    extra, missing = got - want, want - got
    if not extra and not missing:
        return "same"
    if extra and not missing:
        ends = {(s.as_id, s.end) for s in segments}
        if all(e - s == 1 and (a, s) in ends for a, s, e in extra.spans()):
            return "one-gfn-past-end"
        starts = {(s.as_id, s.start - 1) for s in segments}
        if all(e - s == 1 and (a, s) in starts for a, s, e in extra.spans()):
            return "one-gfn-before-start"
        return "extra-gfns"
    if missing and not extra:
        if not got:
            return "no-gfns"
        firsts = GfnSet((s.as_id, s.start, s.start + 1) for s in segments)
        if got == firsts and any(s.end - s.start > 1 for s in segments):
            return "only-first-gfn"
        lasts = GfnSet((s.as_id, s.end - 1, s.end) for s in segments)
        if missing == lasts:
            return "last-gfn-missing"
        firsts_missing = GfnSet((s.as_id, s.start, s.start + 1) for s in segments)
        if missing == firsts_missing:
            return "first-gfn-missing"
        if all(a > 0 for a, _, _ in missing.spans()) and any(a == 0 for a, _, _ in got.spans()):
            return "alias-in-other-address-space-missed"
        hit_slots = {(s.as_id, s.slot) for s in segments}
        if len(hit_slots) > 1 and all(not got.intersects(s.as_id, s.start, s.end)
                                      for s in segments if missing.intersects(s.as_id, s.start, s.end)):
            return "whole-slot-missed"
        return "missing-gfns"
    return "shifted-gfns"


def only_invalid_slots_missed(got: GfnSet, exp: Expectation, slots: list[Memslot]) -> bool:
    """The handlers got some of the reference and nothing else, and what they missed is exactly
    the whole segments of slots flagged KVM_MEMSLOT_INVALID (a DELETE or MOVE of them in
    progress, which only a memslot ioctl preempted in task mode leaves visible).  For change_pte that is what
    v6.4's kvm_change_spte_gfn skips (2230f9e1171a); no other handler skips such a slot, so the
    caller names this shape for change_pte only (an aging handler that misses a slot for its
    own reason keeps that reason's shape)."""
    invalid = {(x.as_id, x.id) for x in slots if x.flags & KVM_MEMSLOT_INVALID}
    if not invalid or not got or got - exp.gfns:
        return False      # no gfns at all is no-gfns: a version without the callback does that too
    skipped = GfnSet((s.as_id, s.start, s.end) for s in exp.segments
                     if (s.as_id, s.slot) in invalid and not got.intersects(s.as_id, s.start, s.end))
    return bool(skipped) and exp.gfns - got == skipped


def calls_gfns(obs: Observation) -> GfnSet:
    return GfnSet((c.as_id, c.start, c.end) for c in obs.calls)


def stale_leaf(leaf: Leaf, slots: list[Memslot], host: HostPageTable) -> tuple[str, str] | None:
    """(kind, why) if `leaf` maps something the host does not: kind "outside-memslot" (the leaf
    reaches gfns its slot does not have) or "pfn" (a gfn maps another pfn than the host)."""
    # the leaf's own slot: it holds the leaf's first gfn at the hva the leaf was made from
    slot = next((s for s in slots if s.as_id == leaf.as_id and s.has_gfn(leaf.gfn)
                 and (leaf.hva < 0 or s.gfn_to_hva(leaf.gfn) == leaf.hva)), None)
    if slot is None:
        return "outside-memslot", (f"as{leaf.as_id} gfn {leaf.gfn:#x} (from hva {leaf.hva:#x}) is mapped "
                                   f"but no memslot has that gfn at that hva")
    # gfn by gfn from the first, the first that leaves the slot or maps another pfn than the
    # host; read through the host's extents, so a 1G leaf costs a few extents, not 262144 pages
    inside = min(leaf.pages, slot.gfn_end - leaf.gfn)
    shift = slot.page_shift
    start = slot.gfn_to_hva(leaf.gfn)
    bad = None                     # index of the first gfn inside the slot the host disagrees on
    at = start
    for ext in host.extents(start, start + (inside << shift)):
        if ext.hva > at:
            break                  # a hole: the host maps nothing at `at`
        if ext.pfn != leaf.pfn + ((ext.hva - start) >> shift):
            break                  # consecutive pfns on both sides: the whole extent differs
        at = ext.hva_end
    if at < start + (inside << shift):
        bad = (at - start) >> shift
    if bad is not None:
        gfn = leaf.gfn + bad
        pte = host.lookup(slot.gfn_to_hva(gfn))
        have = "nothing" if pte is None else f"pfn {pte.pfn:#x}"
        return "pfn", (f"as{leaf.as_id} gfn {gfn:#x} maps pfn {leaf.pfn + bad:#x} but the host maps "
                       f"{have} at hva {slot.gfn_to_hva(gfn):#x}")
    if inside < leaf.pages:
        gfn = leaf.gfn + inside
        return "outside-memslot", f"as{leaf.as_id} gfn {gfn:#x} is mapped by a leaf that leaves {slot.describe()}"
    return None


def check_side(ev: Event, exp: Expectation | None, side: SideResult,
               context: frozenset[str] = frozenset()) -> list[Finding]:
    """What one side did wrong at `ev`.  `context` tags what the trace did before (the runner
    computes them), so shapes can say why: "bare-change_pte-during-fault" = while this fault
    was in flight a change_pte came that no open invalidation covered; "host-changed-under-open-
    invalidation" = the host changed a page under an invalidation still open as it commits."""
    obs, pre, post = side.obs, side.pre, side.post
    out: list[Finding] = []
    if obs.crashed:
        return [Finding("model-crash", "exception", obs.crashed)]
    for w in obs.warnings:
        out.append(Finding("warning", w, f"{w} fired during {ev.op}"))
    for cls, shape, detail in obs.violations:
        out.append(Finding(cls, shape, detail))
    if post.mmu_notifier_count < 0:
        out.append(Finding("count-imbalance", "negative-count",
                           f"mmu_notifier_count is {post.mmu_notifier_count}"))
    elif ev.op == "invalidate_range_start" and exp is not None and exp.slot_hit and not post.mmu_notifier_count:
        # an invalidation that hits a memslot must keep faults retrying until its end (a version
        # that elides the count for a miss, v5.15 on, is still right: no fault can use a miss)
        out.append(Finding("count-imbalance", "count-not-raised",
                           f"mmu_notifier_count is 0 after invalidate_range_start hit {exp.gfns.describe()}",
                           needs=MEMSLOTS))      # whether it hit a memslot is the reference's call

    # stale-mapping: a leaf this event installed or changed maps what the host does not.  Only
    # leaves still there when the event ends: in task mode another task may have zapped one
    # (and changed the host) while this event was preempted, which is the kernel working.  A
    # leaf is read against the host as of its install: a host change after it is the notifier's
    # to handle, and that notifier's own event is checked for it
    early, early_host = side.installed_host or (0, side.host)
    for k, leaf in enumerate(obs.installed + [after for _, after in obs.changed]):
        now = post.leaves.get(leaf.key)
        if now is None or (now.pfn, now.hva) != (leaf.pfn, leaf.hva):
            continue
        stale = stale_leaf(leaf, post.slots, early_host if k < early else side.host)
        if stale:
            kind, why = stale
            if kind == "outside-memslot":
                shape = f"{'fault-installed' if isinstance(ev, FaultCommit) else ev.op}-leaf-outside-memslot"
            elif isinstance(ev, FaultCommit):
                shape = "fault-installed-stale-pfn" + (
                    "-after-bare-change_pte" if "bare-change_pte-during-fault" in context
                    else "-under-open-invalidation" if "host-changed-under-open-invalidation" in context
                    else "")
            else:
                shape = f"{ev.op}-left-wrong-pfn" + ("-huge-leaf" if leaf.pages > 1 else "")
            out.append(Finding("stale-mapping", shape, why))
            break

    if exp is None:
        return out
    instant = len(out)
    out += reference_checks(ev, exp, side)
    for f in out[instant:]:
        f.needs = MEMSLOTS if f.cls in MEMSLOT_CHECKS else STATE
    return out


# the ops whose checks read the expectation (and through it the state before the event):
# for the one other op with a notifier range, invalidate_range_end, reference_checks has no
# check, so check_side finds the same without one (the runner then computes none)
EXPECTATION_OPS = frozenset(WALKING_OPS)


def nothing_to_check(obs: Observation, mmu_notifier_count: int) -> bool:
    """check_side finds nothing, whatever the states, for an event without an expectation
    (not a notifier event) whose observation has no crash, warning, violation, installed or
    changed leaf, on a model whose mmu_notifier_count is not negative: the runner then skips
    the call (and the states it would read)."""
    return not (obs.crashed or obs.warnings or obs.violations or obs.installed or obs.changed
                or mmu_notifier_count < 0)


def reference_checks(ev: Event, exp: Expectation, side: SideResult) -> list[Finding]:
    """What one side did wrong at `ev` against the reference's expectation `exp`."""
    obs, pre, post = side.obs, side.pre, side.post
    out: list[Finding] = []
    changed_before = [b for b, _ in obs.changed]

    if ev.op == "invalidate_range_start":
        # (an empty side of an intersection is the empty set: not built)
        still = (GfnSet((x.as_id, x.gfn, x.gfn_end) for x in post.leaves.values()) & exp.gfns
                 if exp.gfns and post.leaves else GfnSet())
        cached = (GfnSet((e.as_id, e.gfn, e.gfn + e.pages) for e in post.tlb) & exp.gfns
                  if exp.gfns and post.tlb else GfnSet())
        orphans = [x for x in list(post.leaves.values()) + list(post.tlb)
                   if x.backs(ev.start, ev.end, post.page_shift)
                   and not exp.gfns.intersects(x.as_id, x.gfn, x.gfn + x.pages)]
        if orphans:
            g = GfnSet((x.as_id, x.gfn, x.gfn + x.pages) for x in orphans)
            out.append(Finding("missed-invalidation", "mapping-outside-memslots",
                               f"after invalidate_range_start {g.describe()}, made from hvas in the range "
                               f"but in no memslot that covers them now, still mapped or in the TLB"))

        def partly_covered_huge(x: Leaf) -> bool:
            # a huge leaf the range covers only in part, its first gfn outside the range
            whole = GfnSet([(x.as_id, x.gfn, x.gfn_end)])
            return x.pages > 1 and (exp.gfns & whole) != whole and (x.as_id, x.gfn) not in exp.gfns

        if still and not (cached - still) and all(
                partly_covered_huge(x) for x in post.leaves.values()
                if exp.gfns.intersects(x.as_id, x.gfn, x.gfn_end)):       # the leaves kept
            out.append(Finding("missed-invalidation", "partial-huge-leaf-kept-first-gfn-outside",
                               f"after invalidate_range_start {still.describe()} still mapped by huge "
                               f"leaves whose first gfn is outside the range"))
        elif still or cached:
            left = still | cached
            where = "mapped" if still else "in the TLB"
            if still and cached:
                where = "mapped and in the TLB"
            out.append(Finding("missed-invalidation", gfn_shape(exp.gfns - left, exp.gfns, exp.segments)
                               if (exp.gfns - left) else "nothing-invalidated",
                               f"after invalidate_range_start {left.describe()} still {where}"))
    if ev.op == "change_pte":
        for x in post.leaves.values():
            if exp.gfns.intersects(x.as_id, x.gfn, x.gfn_end):
                pte = side.host.lookup(ev.hva)
                for seg in exp.segments:
                    if seg.as_id == x.as_id and x.gfn <= seg.start < x.gfn_end:
                        if pte is None or x.pfn + (seg.start - x.gfn) != pte.pfn:
                            out.append(Finding("missed-invalidation",
                                               "old-pfn-still-mapped" + ("-huge-leaf" if x.pages > 1 else ""),
                                               f"after change_pte as{x.as_id} gfn {seg.start:#x} still maps "
                                               f"pfn {x.pfn + seg.start - x.gfn:#x}"))
                            break

    # over-invalidation: zaps of leaves that touch no gfn of the range
    if ev.op in WALKING_OPS:
        outside = [x for x in obs.zapped if not exp.gfns.intersects(x.as_id, x.gfn, x.gfn_end)]
        if outside:
            out.append(Finding("over-invalidation",
                               gfn_shape(exp.gfns | leaf_gfns(outside), exp.gfns, exp.segments),
                               f"zapped {leaf_gfns(outside).describe()} outside {exp.gfns.describe()}"))

    # missed-flush: a translation this event removed or changed is still cached after it
    if ev.op in WALKING_OPS:
        touched = list(obs.zapped) + changed_before
        if ev.op == "clear_flush_young":
            touched += list(obs.aged)
        stale = [e for e in post.tlb if any(e.as_id == x.as_id and e.gfn == x.gfn and e.pfn == x.pfn
                                            for x in touched)] if touched else []
        if ev.op == "invalidate_range_start":
            stale = [e for e in stale if not exp.gfns.intersects(e.as_id, e.gfn, e.gfn + e.pages)]
        if stale:
            g = GfnSet((e.as_id, e.gfn, e.gfn + e.pages) for e in stale)
            out.append(Finding("missed-flush", "no-flush-after-" + ("age" if ev.op in AGE_OPS else "zap"),
                               f"{g.describe()} removed or changed but still in the TLB after {ev.op}"))

    # spurious-flush: a flush with nothing owed
    flushes = obs.flushes
    if flushes and ev.op in WALKING_OPS:
        owed = bool(obs.zapped or obs.changed)
        if ev.op == "clear_flush_young" and obs.aged:
            owed = True
        if ev.op == "invalidate_range_start":
            if not owed and pre.tlb:
                mapped = {(x.as_id, x.gfn) for x in pre.leaves.values()}
                owed = any(exp.gfns.intersects(e.as_id, e.gfn, e.gfn + e.pages) for e in pre.tlb
                           if (e.as_id, e.gfn) not in mapped)
        if not owed:
            unlocked = any(not f.locked for f in flushes)
            shape = ("no-slot-hit" if not exp.slot_hit else "nothing-changed") + ("-unlocked" if unlocked else "")
            out.append(Finding("spurious-flush", shape,
                               f"{len(flushes)} flush(es) ({', '.join(f.origin for f in flushes)}) "
                               f"though {ev.op} removed or changed no translation"
                               + (" and mmu_lock was not held" if unlocked else "")))

    # wrong-young: the answer and the accessed bits against the truth
    if ev.op in AGE_OPS:
        if bool(obs.young) != bool(exp.young):
            out.append(Finding("wrong-young", "false-positive" if obs.young else "false-negative",
                               f"{ev.op} returned {obs.young}, truth is {int(bool(exp.young))}"))
        if ev.op != "test_young":
            not_aged = [x for x in exp.must_age if any(x.key == k and y.young for k, y in post.leaves.items())]
            if not_aged:
                out.append(Finding("wrong-young", "young-bit-not-cleared",
                                   f"{leaf_gfns(not_aged).describe()} still young after {ev.op}"))
            aged_out = [x for x in obs.aged if not exp.gfns.intersects(x.as_id, x.gfn, x.gfn_end)]
            if aged_out:
                out.append(Finding("wrong-young",
                                   "aged-" + gfn_shape(exp.gfns | leaf_gfns(aged_out), exp.gfns, exp.segments),
                                   f"aged {leaf_gfns(aged_out).describe()} outside {exp.gfns.describe()}"))

    # gfn-set-mismatch: what the walker handed to arch handlers against the reference
    if ev.op in WALKING_OPS:
        got = calls_gfns(obs)
        if got != exp.gfns:
            shape = ("invalid-slot-skipped" if ev.op == "change_pte" and only_invalid_slots_missed(got, exp, pre.slots)
                     else gfn_shape(got, exp.gfns, exp.segments))
            out.append(Finding("gfn-set-mismatch", shape,
                               f"handlers got {got.describe()}, reference {exp.gfns.describe()}"))

    # lock-without-hit: decided across sides in compare_event
    if ev.op in UNPAIRED_OPS and obs.lock_taken and not exp.slot_hit:
        out.append(Finding("lock-without-hit", "no-slot-hit", f"mmu_lock taken for {ev.op} that hits no memslot"))
    return out


ONE_SIDED_ONLY = {"lock-without-hit"}   # a shared behaviour of both versions is not a divergence here


def compare_event(index: int, ev: Event, exp_old: Expectation | None, old: SideResult,
                  exp_new: Expectation | None, new: SideResult,
                  context: frozenset[str] = frozenset()) -> list[Divergence]:
    f_old, f_new = check_side(ev, exp_old, old, context), check_side(ev, exp_new, new, context)
    if not f_old and not f_new:
        return []
    return merge_findings(index, ev, f_old, f_new)


def merge_findings(index: int, ev: Event, f_old: list[Finding], f_new: list[Finding]) -> list[Divergence]:
    """One divergence per (class, shape) that either side shows at `ev`, saying which side."""
    out: list[Divergence] = []
    keys_old = {(f.cls, f.shape): f for f in f_old}
    keys_new = {(f.cls, f.shape): f for f in f_new}
    for key in list(dict.fromkeys(list(keys_old) + list(keys_new))):
        cls, shape = key
        in_old, in_new = key in keys_old, key in keys_new
        if in_old and in_new:
            if cls in ONE_SIDED_ONLY:
                continue
            side, f = "both", keys_old[key]
            detail = f.detail if keys_new[key].detail == f.detail else f"old: {f.detail}; new: {keys_new[key].detail}"
        elif in_old:
            side, f = "old", keys_old[key]
            detail = f.detail
        else:
            side, f = "new", keys_new[key]
            detail = f.detail
        out.append(Divergence(cls, side, ev.op, shape, index, detail))
    out.sort(key=lambda d: CLASSES.index(d.cls))
    return out

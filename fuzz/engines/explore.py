"""Bounded exhaustive schedules: every interleaving of a small task program up to a bound on
preemptions (context bounding, as in CHESS: Musuvathi and Qadeer, PLDI 2007).

Exploration is stateless: nothing is snapshotted, every schedule is a fresh run from the
start.  A run records, at each scheduling point (fuzz/schedule.py `recording`), the tasks that
could run, the task that ran last, whether the point ends an event, and the task chosen.  A
schedule is named by the `Schedule` directive `preempt=((step, task), ...)` that the default
policy (TraceOrder) replays exactly: at step N it runs task T, elsewhere it does what it does
by default.  From a recorded run, every other runnable task at every point after the
directive's last entry is a new schedule: the directive plus that one entry.  Each choice
sequence so has exactly one directive, the one whose entries are its departures from the
default, and the directives form a tree rooted at the empty one (the default schedule).

Cost.  Running another task at a point where the running task could go on and is inside an
event is a preemption; choosing at an event boundary, or after the running task blocked or
ended, is free.  Free choices are enumerated too (every order in which the tasks' events can
start), so the bound is on preemptions, not on choices.  One exception, sound by construction:
after its last event a task has one step left, its exit, which commutes with every other step
unless the program has a `release` (`exits_commute`), so it is not run early on purpose.

Order.  Every schedule within the bound is run once; the order only matters under a cap.
Schedules are run breadth first by the number of departures from the default schedule (the
directive's entries: delay bounding, Emmi, Qadeer and Lal, POPL 2011), then by preemptions,
then by the entries: every single departure anywhere before any two.  Free departures (other
event orders) multiply fast, and ordering by preemptions first would spend a cap on them: the
TDP MMU yield bug of tests/test_tasks.py needs one preemption and is the 24th schedule this
way; by preemptions first it would come after all 1056 preemption-free ones.  With a cap the result says where
it stopped ("cut at N") and how many departures it covered completely; only then may a seed
shuffle the order among schedules of the same depth and cost, so that different seeds see
different corners of a tree too big to finish.

Two sides.  The old and the new model may block at different points, so they have different
trees.  Each side's tree is explored on that side's own records, and every directive of either
tree runs through the normal comparison (fuzz.runner.run_trace, which records both sides at
once, so a directive met in both trees runs once).  Every explored schedule is a directive,
so every finding replays from a saved trace.

Skipped yields.  A walk that may block asks need_resched() where it may yield
(impls/tasks.py); the default schedule answers yes every time.  With `skipped_yields` K > 0 a
query answered yes is a choice too: answering no (the walk goes on holding the lock, and flushes
nothing there) is a departure, named in the directive's `no_resched` list and written in a key
as (step, "", query), which sorts after every choice made before that query and before the
choice at that step.  Each costs one against K, not against the preemption bound, so the
schedules of K = 0 are exactly those of an exploration without skips.  A program of one task
(a trace that names none) has only these departures: its events keep their trace order.

A pair with a candidate (file.py:Class) is explored through its worker (fuzz/contain.py): each
schedule is one request that returns the comparison and both sides' records.  A schedule whose
run hangs or dies there has no records: it is reported (model-hang / model-crash) and not
expanded.  `explore_side`, which runs one side with no comparison, takes our own models only.
"""
from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from oracles.compare import Divergence
from oracles.triage import KnownEntry

from fuzz.runner import Side, TraceResult, apply_event, run_trace
from fuzz.runner_tasks import run_side, task_of
from fuzz.schedule import recording
from language.trace import MAIN_TASK, Event, Release, Schedule

# a directive's entries in the order of the run: (step, task) runs task at scheduling point
# step; (step, "", query) answers need_resched() query number `query` with no (a query made
# after `step` choices, before choice number `step`)
Key = tuple[tuple, ...]


def is_skip(entry: tuple) -> bool:
    """Whether a key entry is a skipped yield (step, "", query) rather than a task (step, task)."""
    return len(entry) == 3


class ExploreError(Exception):
    """The program cannot be explored (a candidate side, a nondeterministic model)."""


@dataclass(frozen=True)
class Point:
    """One scheduling point of a recorded run."""
    step: int
    runnable: tuple[str, ...]
    current: str | None
    boundary: bool
    chosen: str

    def cost(self, task: str) -> int:
        """1 if running `task` here preempts the running task, else 0."""
        return int(self.current is not None and not self.boundary and self.current in self.runnable
                   and task != self.current)


@dataclass(frozen=True)
class Resched:
    """One need_resched() query of a recorded run: made after `step` scheduling choices."""
    step: int
    query: int
    answer: bool

    def entry(self) -> tuple:
        return (self.step, "", self.query)


def _position(x) -> tuple:
    """Where a recorded point or a key entry falls in a run: the queries made after `step`
    choices come before choice number `step`."""
    if isinstance(x, Point):
        return (x.step, 1, 0)
    if isinstance(x, Resched):
        return (x.step, 0, x.query)
    return (x[0], 0, x[2]) if is_skip(x) else (x[0], 1, 0)


class ChoiceLog:
    """A recorder for fuzz.schedule.recording: the points of each scheduler run in turn (in
    task mode run_trace runs the old side, then the new one, each with its own scheduler),
    need_resched() queries among them."""

    def __init__(self) -> None:
        self.runs: list[list[Point | Resched]] = []
        self._sched = None

    def _run(self, sched) -> list:
        if sched is not self._sched:
            self._sched = sched
            self.runs.append([])
        return self.runs[-1]

    def __call__(self, sched, runnable, current, at_boundary, chosen) -> None:
        self._run(sched).append(Point(sched.steps, tuple(t.name for t in runnable),
                                      current.name if current is not None else None, at_boundary, chosen.name))

    def resched(self, sched, query: int, answer: bool) -> None:
        self._run(sched).append(Resched(sched.steps, query, answer))

    def done(self) -> list[list[Point | Resched]]:
        self._sched = None
        return self.runs


def directive(key: Key) -> Schedule:
    return Schedule(preempt=tuple(e for e in key if not is_skip(e)),
                    no_resched=tuple(sorted(e[2] for e in key if is_skip(e))))


def chosen(points: list) -> tuple[str, ...]:
    """The task chosen at each scheduling point of a recorded run, in order."""
    return tuple(p.chosen for p in points if isinstance(p, Point))


def skipped(points: list) -> set[tuple[int, int]]:
    """(step, query) of every need_resched() query a recorded run answered no."""
    return {(p.step, p.query) for p in points if isinstance(p, Resched) and not p.answer}


def strip_schedule(events: list[Event]) -> list[Event]:
    """The program without its schedule directive."""
    return [e for e in events if not isinstance(e, Schedule)]


def program_tasks(events: list[Event]) -> list[str]:
    """The tasks a program runs as in task mode; a trace that names no task is one task."""
    prog = strip_schedule(events)
    if all(e.task == MAIN_TASK for e in prog):
        return [MAIN_TASK] if prog else []
    return sorted({task_of(e) for e in prog})


def preemptions(points: list) -> int:
    return sum(p.cost(p.chosen) for p in points if isinstance(p, Point))


@dataclass
class Explored:
    """One schedule: its directive, the choices each side made, its comparison (None when
    one side was explored alone)."""
    key: Key
    choices: dict[str, tuple[str, ...]]
    preemptions: dict[str, int]
    result: TraceResult | None = None

    @property
    def directive(self) -> Schedule:
        return directive(self.key)


@dataclass
class Exploration:
    bound: int
    cap: int | None
    schedules: list[Explored] = field(default_factory=list)
    complete: bool = True
    covered: int = -1                 # every schedule with at most this many directive entries ran
    stopped_by: str = ""              # "", "cap", "deadline"
    seconds: float = 0.0

    @property
    def status(self) -> str:
        if self.complete:
            return "complete"
        why = f"cut at {len(self.schedules)}" + (" (time)" if self.stopped_by == "deadline" else "")
        return why + (f", complete through {self.covered} departure{'s' if self.covered != 1 else ''} "
                      "from the default schedule" if self.covered >= 0 else "")

    def findings(self) -> list[tuple[Divergence, Schedule]]:
        """Every distinct divergence (by signature) with the simplest directive that shows it
        (fewest entries, then earliest), so a complete exploration reports the same whatever
        the order it ran in."""
        best: dict[str, tuple[tuple, Divergence, Key]] = {}
        for s in self.schedules:
            for d in (s.result.divergences if s.result else ()):
                rank = (len(s.key), s.key)
                if d.signature not in best or rank < best[d.signature][0]:
                    best[d.signature] = (rank, d, s.key)
        return [(d, directive(k)) for _, d, k in (best[sig] for sig in sorted(best))]


class _Cut(Exception):
    pass


def _children(points: list, key: Key, exits: dict[str, int] | None,
              skips: bool = False, orders: bool = True) -> list[tuple[int, int, Key]]:
    """Every schedule one departure away from the run of `key`, after its last entry:
    (preemptions it costs, yields it skips, directive), in the order of the run, tasks by
    name.  With `skips`, a need_resched() query answered yes may be answered no; without
    `orders` (a one-task program), no other task is chosen.  With `exits`
    (task -> number of events), a task that has ended its last event and has only its exit
    left is not chosen early: see `exits_commute`."""
    last = _position(key[-1]) if key else (-1, 1, 0)
    finished = dict.fromkeys(exits or (), 0)     # events each task has ended so far
    out = []
    for p in points:
        if isinstance(p, Resched):
            if skips and p.answer and _position(p) > last:
                out.append((0, 1, key + (p.entry(),)))
            continue
        if exits is not None and p.boundary and p.current in p.runnable:
            finished[p.current] = finished.get(p.current, 0) + 1
        if _position(p) <= last or not orders:
            continue
        for t in sorted(p.runnable):
            if t != p.chosen and not (exits is not None and t in exits and finished[t] >= exits[t]):
                out.append((p.cost(t), 0, key + ((p.step, t),)))
    return out


def exits_commute(program: list[Event]) -> dict[str, int] | None:
    """Task -> its number of events, when running a task's exit early or late cannot change
    what a run shows, else None.  After its last event a task still has one step, its exit
    (runner_tasks: its srcu sections end, it is done).  A well-formed program commits every
    fault, so no srcu section is open then, and only a `release` (exit_mmap waits for every
    other task to exit) reads whether a task is done: without one, exits commute with every
    other step, and the default schedule's place for them (last) stands for all."""
    prog = strip_schedule(program)
    if any(isinstance(e, Release) for e in prog):
        return None
    return dict(Counter(task_of(e) for e in prog))


def _check_replay(parent: tuple[str, ...], child: list, entry: tuple, side: str) -> None:
    """The child's run repeats the parent's choices up to the new entry, then takes it."""
    step = entry[0]
    want = list(parent[:step]) + ([] if is_skip(entry) else [entry[1]])
    got = list(chosen(child)[:len(want)])
    if got != want or (is_skip(entry) and (step, entry[2]) not in skipped(child)):
        raise ExploreError(f"side {side}: the schedule with {list(entry)} did not replay its prefix "
                           f"(choices {got} instead of {want}): the model is not deterministic")


# runs a directive: each side's records (None when a contained run left none) and the comparison
Runner = Callable[[Key], tuple["dict[str, list] | None", "TraceResult | None"]]


def _took(key: Key, choices: tuple[str, ...], skips: set[tuple[int, int]]) -> bool:
    """Whether a side's run took every entry of `key`."""
    return all((e[0], e[2]) in skips if is_skip(e) else e[0] < len(choices) and choices[e[0]] == e[1]
               for e in key)


def _explore(names: list[str], exits: dict[str, int] | None, run: Runner, bound: int, cap: int | None,
             seed: int | None, deadline: float | None,
             on_schedule: Callable[[Explored], None] | None, skip_bound: int = 0,
             orders: bool = True) -> Exploration:
    """Breadth first over the number of departures, within the preemption bound and the
    bound on skipped yields, over each named side's tree; `run(key)` runs a directive and
    returns each side's points (and the comparison, if any)."""
    started = time.monotonic()
    out = Exploration(bound, cap)
    rng = random.Random(seed) if seed is not None and cap is not None else None
    records: dict[Key, dict[str, list[Point]]] = {}     # points a side has yet to expand
    choices: dict[Key, dict[str, tuple[str, ...]]] = {}

    def get(key: Key, side: str) -> list[Point]:
        if key not in choices:
            if cap is not None and len(choices) >= cap:
                out.stopped_by = "cap"
                raise _Cut
            if deadline is not None and time.monotonic() >= deadline:
                out.stopped_by = "deadline"
                raise _Cut
            recs, result = run(key)
            if recs is None:                    # no records (a contained run hung or died): a leaf
                recs = {s: None for s in names}
            choices[key] = {s: chosen(recs[s] or ()) for s in names}
            # a side that did not take every entry never meets this directive in its own tree
            # (a leaf is a leaf for both sides, whichever asks)
            records[key] = {s: recs[s] for s in names if s == side or recs[s] is None
                            or _took(key, choices[key][s], skipped(recs[s]))}
            ex = Explored(key, choices[key], {s: preemptions(recs[s] or ()) for s in names}, result)
            out.schedules.append(ex)
            if on_schedule:
                on_schedule(ex)
        points = records[key].pop(side)
        if not records[key]:
            del records[key]
        return points

    # one departure from the default schedule, anywhere, before any two: breadth first by the
    # number of entries of the directive, then by preemptions, then by the entries themselves
    level: list[tuple[int, int, Key, int, tuple[str, ...] | None]] = [(0, 0, (), i, None) for i in range(len(names))]
    depth = 0
    try:
        while level:
            if rng is not None:
                rng.shuffle(level)
                level.sort(key=lambda x: (x[0], x[1]))   # stable: shuffled within a cost
            else:
                level.sort(key=lambda x: (x[0], x[1], x[2], x[3]))
            deeper = []
            for cost, skips, key, i, parent in level:
                side = names[i]
                points = get(key, side)
                if points is None:
                    continue
                if parent is not None:
                    _check_replay(parent, points, key[-1], side)
                mine = choices[key][side]
                for c, k, child in _children(points, key, exits, skips < skip_bound, orders):
                    if cost + c <= bound and skips + k <= skip_bound:
                        deeper.append((cost + c, skips + k, child, i, mine))
            out.covered = depth
            level, depth = deeper, depth + 1
    except _Cut:
        out.complete = False
    out.seconds = time.monotonic() - started
    return out


def explore_side(program: list[Event], arch: str, side: Side, bound: int, max_schedules: int | None = None,
                 seed: int | None = None, deadline: float | None = None, skipped_yields: int = 0) -> Exploration:
    """Every schedule of `program` on one model, up to `bound` preemptions and
    `skipped_yields` yields skipped (no comparison)."""
    if side.contained:
        raise ExploreError(f"{side.name}: a candidate runs only in its worker process, where its "
                           "schedules cannot be recorded")
    prog = strip_schedule(program)

    def run(key: Key):
        log = ChoiceLog()
        with recording(log):
            run_side(side.make, [directive(key)] + prog, arch, apply_event)
        runs = log.done()
        return {"side": runs[0] if runs else []}, None
    return _explore(["side"], exits_commute(prog), run, bound, max_schedules, seed, deadline, None, skipped_yields,
                    program_tasks(prog) != [MAIN_TASK])


def explore(program: list[Event], arch: str, old: Side, new: Side, known: list[KnownEntry], bound: int,
            max_schedules: int | None = None, seed: int | None = None, deadline: float | None = None,
            on_schedule: Callable[[Explored], None] | None = None, skipped_yields: int = 0) -> Exploration:
    """Every schedule of `program` on either side up to `bound` preemptions and
    `skipped_yields` yields skipped, each compared as fuzz.runner.run_trace compares a trace
    (its schedule directive is replaced)."""
    prog = strip_schedule(program)
    contained = old.contained or new.contained

    def run(key: Key):
        if contained:
            from fuzz.contain import recorded_run_contained
            runs, res = recorded_run_contained([directive(key)] + prog, arch, old, new, known)
            if runs is None:
                return None, res
        else:
            log = ChoiceLog()
            with recording(log):
                res = run_trace([directive(key)] + prog, arch, old, new, known)
            runs = log.done()
        if len(runs) != 2:
            raise ExploreError(f"expected a recorded run per side, got {len(runs)}")
        return {"old": runs[0], "new": runs[1]}, res
    return _explore(["old", "new"], exits_commute(prog), run, bound, max_schedules, seed, deadline, on_schedule,
                    skipped_yields, program_tasks(prog) != [MAIN_TASK])


def replay_choices(events: list[Event], arch: str, side: Side) -> tuple[str, ...]:
    """The tasks one side's scheduler chooses, in order, running `events` (with its directive)."""
    log = ChoiceLog()
    with recording(log):
        run_side(side.make, list(events), arch, apply_event)
    runs = log.done()
    return chosen(runs[0]) if runs else ()

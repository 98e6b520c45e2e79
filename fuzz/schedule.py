"""Schedules: which task runs at each scheduling point of a task-mode run (impls/tasks.py).

Two policies, both deterministic, so a saved trace replays its schedule exactly:

* `TraceOrder` (the default, and what a `preempt` directive refines).  At the end of an event,
  a task that is in the middle of an event and can run again (it was blocked, or was preempted)
  resumes first, the one whose event is oldest in the trace; otherwise the task whose next event
  comes first in the trace starts it.  Inside an event the running task keeps running until it
  blocks or ends.  A `preempt` list [[N, T], ...] switches to task T at scheduling point N when T
  can run: that is how a schedule puts a vCPU's access inside a TDP MMU yield.
* `Pct` (probabilistic concurrency testing, Burckhardt et al., ASPLOS 2010): the tasks get
  random distinct priorities, the highest-priority task that can run always runs, and at d-1
  random scheduling points the running task drops below every other.  A bug of depth d shows
  with probability at least 1/(n k^(d-1)) per run (n tasks, k steps).

Either policy answers need_resched() (impls/tasks.py) from the directive's `no_resched` list:
no at the queries it names (counted from 0 over one side's run), yes everywhere else, so a walk
that may block yields wherever it may unless the schedule says it did not need to.

Exploration (fuzz/engines/explore.py) draws PCT schedules for random runs and enumerates preempt lists
up to a bound for exhaustive ones; the minimizer shrinks either form.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Callable, Iterator

from impls.tasks import Policy, Scheduler, Task

from language.trace import Event, Schedule

# Who watches the choices (fuzz/engines/explore.py): called as recorder(sched, runnable, current,
# at_boundary, chosen) at every scheduling point of every run while it is installed, and as
# recorder.resched(sched, query, answer) at every need_resched() query.
Recorder = Callable[[Scheduler, list[Task], "Task | None", bool, Task], None]
_recorders: list[Recorder] = []


@contextmanager
def recording(recorder: Recorder) -> Iterator[Recorder]:
    """Within the block every policy reports each choice it makes to `recorder`."""
    _recorders.append(recorder)
    try:
        yield recorder
    finally:
        _recorders.remove(recorder)


def _chose(sched: Scheduler, runnable: list[Task], current: Task | None, at_boundary: bool, t: Task) -> Task:
    if _recorders:
        _recorders[-1](sched, runnable, current, at_boundary, t)
    return t


class _Answers(Policy):
    """need_resched() from a directive's `no_resched` list: no at those queries, else yes."""
    no_resched: frozenset = frozenset()

    def need_resched(self, sched: Scheduler, query: int) -> bool:
        answer = query not in self.no_resched
        if _recorders:
            _recorders[-1].resched(sched, query, answer)
        return answer


class TraceOrder(_Answers):
    """Events start in trace order; a running event keeps the CPU until it blocks or ends."""

    def __init__(self, next_index, current_index, preempt: tuple = (), no_resched: tuple = ()):
        self.next_index = next_index          # task name -> trace index of its next event (or a big number)
        self.current_index = current_index    # task name -> trace index of the event it is in (or None)
        self.preempt = dict(preempt)
        self.no_resched = frozenset(no_resched)

    def choose(self, sched: Scheduler, runnable: list[Task], current: Task | None, at_boundary: bool) -> Task:
        return _chose(sched, runnable, current, at_boundary, self._choose(sched, runnable, current, at_boundary))

    def _choose(self, sched: Scheduler, runnable: list[Task], current: Task | None, at_boundary: bool) -> Task:
        want = self.preempt.get(sched.steps)
        if want is not None:
            for t in runnable:
                if t.name == want:
                    return t
        if current is not None and not at_boundary and current in runnable:
            return current
        resuming = [t for t in runnable if self.current_index(t.name) is not None]
        if resuming:
            return min(resuming, key=lambda t: self.current_index(t.name))
        return min(runnable, key=lambda t: self.next_index(t.name))


class Pct(_Answers):
    """PCT with `depth` priority change points over an estimated `steps` scheduling points."""

    def __init__(self, seed: int, depth: int, tasks: list[str], steps: int, no_resched: tuple = ()):
        self.no_resched = frozenset(no_resched)
        rng = random.Random(seed)
        order = list(tasks)
        rng.shuffle(order)
        # priorities depth.. depth+n-1 for the tasks; change points lower to 0..depth-2
        self.priority = {t: depth + i for i, t in enumerate(order)}
        points = sorted(rng.sample(range(1, max(steps, depth) + 1), max(0, depth - 1))) if depth > 1 else []
        self.change = {p: depth - 2 - i for i, p in enumerate(points)}

    def choose(self, sched: Scheduler, runnable: list[Task], current: Task | None, at_boundary: bool) -> Task:
        low = self.change.get(sched.steps)
        if low is not None and current is not None:
            self.priority[current.name] = low
        return _chose(sched, runnable, current, at_boundary,
                      max(runnable, key=lambda t: (self.priority.get(t.name, 0), -t.order)))


def policy_for(directive: Schedule | None, events: list[Event], next_index, current_index) -> Policy:
    """The policy a trace asks for (its schedule directive, or the default)."""
    if directive is not None and directive.pct is not None:
        seed, depth = directive.pct
        tasks = sorted({e.task for e in events if not isinstance(e, Schedule)})
        return Pct(seed, depth, tasks, steps=8 * len(events) + 8, no_resched=directive.no_resched)
    if directive is None:
        return TraceOrder(next_index, current_index)
    return TraceOrder(next_index, current_index, directive.preempt, directive.no_resched)

"""Tasks, blocking locks and lockdep: what lets a model run as several kernel tasks at once
(design card section 9).

A trace names a task per event (an mm context, a vCPU, the memslot ioctl).  In task mode every
task is a greenlet running its own events in order; a model stays plain sequential Python and
calls the primitives below, which park the calling task until it can go on.  The scheduler
(`Scheduler.run`) decides at every scheduling point which runnable task goes next; the choice
is the policy's (fuzz/ passes one in), so a saved trace replays its schedule exactly.

Scheduling points: the start of every event, every lock acquisition (before) and release
(after), every voluntary yield (cond_resched), srcu synchronize, and every wait.

need_resched(): whether a walk that may block gives up its lock at a point where the kernel
would if the CPU were wanted (`Scheduler.need_resched`).  The scheduler numbers these queries
in the order they are made and the policy answers each; the base policy always says yes (every
such walk yields wherever it may), and a schedule may say no at chosen queries.

Primitives and the kernel semantics they keep:
* `Mutex`: spinlock_t / struct mutex / the exclusive (write) side of an rwlock_t: one holder.
* `RwSem`: struct rw_semaphore with its fairness: waiters queue in order; a reader is admitted
  only when no writer holds the lock and no writer is queued ahead of it, so a queued writer
  blocks new readers, including a task that already holds the lock for read (the recursive-read
  deadlock of patch 16 as posted).
* `Srcu`: synchronize waits until every read section that was open when it started is closed.
* `Scheduler.wait_until`: rcuwait / a wait_event on a condition (v5.15's memslot installer).
* `LockdepMap`: a lockdep pseudo-lock (the mm's __mmu_notifier_invalidate_range_start_map): it
  never blocks, but its acquisitions enter the lock order like any lock's.

`Lockdep` records, per task, the locks held and, over a whole run, the order in which lock
classes were taken (an edge A -> B when B is taken while A is held, with both sites), and
reports the first cycle, as lockdep's "possible circular locking dependency" does, whether or
not any schedule deadlocks.  Read and write acquisitions of one lock are one class, as for an
rwsem in lockdep (down_read is not a recursive read).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable

from greenlet import greenlet


class SchedulerStop(BaseException):
    """Raised inside a task greenlet to unwind it when the run ends (deadlock, step limit)."""


@dataclass
class Held:
    lock: str
    mode: str            # "write" | "read" | "map"
    site: str


@dataclass
class Wait:
    """What a parked task waits for: a condition, in words, and who it waits on."""
    ready: Callable[[], bool]
    what: str
    holders: Callable[[], list[str]]


@dataclass
class Task:
    name: str
    body: Callable[[], None] | None = None
    glet: greenlet | None = None
    wait: Wait | None = None
    done: bool = False
    started: bool = False
    held: list[Held] = field(default_factory=list)
    order: int = 0                   # creation order

    def runnable(self) -> bool:
        return not self.done and (self.wait is None or self.wait.ready())


@dataclass
class LockOrderCycle:
    """A cycle in the lock order: edges (from_lock, to_lock, from_site, to_site, task)."""
    edges: list[tuple[str, str, str, str, str]]

    def describe(self) -> str:
        return "; ".join(f"{t} took {b} at {sb} while holding {a} (taken at {sa})" for a, b, sa, sb, t in self.edges)

    def locks(self) -> list[str]:
        return [a for a, _, _, _, _ in self.edges]


class Lockdep:
    """Lock-order graph over one run (lockdep's dependency chains, without IRQ states)."""

    def __init__(self) -> None:
        self.edges: dict[tuple[str, str], tuple[str, str, str]] = {}
        self.after: dict[str, set[str]] = {}
        self.cycle: LockOrderCycle | None = None
        self.cycle_event: int | None = None       # what the caller said "now" was when it closed

    def acquire(self, task: Task, lock: str, mode: str, site: str, now: int) -> None:
        for h in task.held:
            if h.lock == lock:
                continue
            key = (h.lock, lock)
            if key not in self.edges:
                self.edges[key] = (h.site, site, task.name)
                self.after.setdefault(h.lock, set()).add(lock)
                if self.cycle is None:
                    path = self._path(lock, h.lock)
                    if path is not None:
                        chain = path + [h.lock, lock]
                        self.cycle = LockOrderCycle([(a, b, *self.edges[(a, b)])
                                                     for a, b in zip(chain, chain[1:])])
                        self.cycle_event = now
        task.held.append(Held(lock, mode, site))

    def release(self, task: Task, lock: str) -> None:
        for i in range(len(task.held) - 1, -1, -1):
            if task.held[i].lock == lock:
                del task.held[i]
                return

    def _path(self, src: str, dst: str) -> list[str] | None:
        """Locks from src to dst along recorded edges (src included, dst excluded), or None."""
        stack, seen = [(src, [src])], {src}
        while stack:
            node, path = stack.pop()
            for nxt in sorted(self.after.get(node, ())):
                if nxt == dst:
                    return path
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None


@dataclass
class DeadlockReport:
    """Every live task waits: the wait-for cycle as (task, what it waits for, holders)."""
    waits: list[tuple[str, str, list[str]]]
    cycle: list[str]

    def describe(self) -> str:
        by = {t: (w, h) for t, w, h in self.waits}
        if self.cycle:
            parts = [f"{t} waits for {by[t][0]}: {', '.join(by[t][1]) or 'nobody'}" for t in self.cycle]
            return "wait-for cycle: " + "; ".join(parts)
        return "every live task waits: " + "; ".join(f"{t} waits for {w}" for t, w, _ in self.waits)


class Policy:
    """Chooses the next task at a scheduling point (fuzz/ provides the real ones)."""

    def choose(self, sched: "Scheduler", runnable: list[Task], current: Task | None, at_boundary: bool) -> Task:
        if current is not None and current in runnable and not at_boundary:
            return current
        return runnable[0]

    def need_resched(self, sched: "Scheduler", query: int) -> bool:
        """The answer to need_resched() query number `query` of this run (see the module doc)."""
        return True


class Scheduler:
    """Runs tasks as greenlets over one model, one at a time, switching only at scheduling
    points.  `run` returns when every task is done, every live task waits (a deadlock), or the
    step limit is hit."""

    def __init__(self, policy: Policy | None = None, step_limit: int = 100_000,
                 on_switch: Callable[[Task], None] | None = None):
        self.policy = policy or Policy()
        self.step_limit = step_limit
        self.on_switch = on_switch
        self.tasks: dict[str, Task] = {}
        self.current: Task | None = None
        self.steps = 0
        self.lockdep = Lockdep()
        self.deadlock: DeadlockReport | None = None
        self.hit_step_limit = False
        self._main: greenlet | None = None
        self.lockdep_event = 0          # set by the runner: the event the running task is in
        self.resched_queries = 0        # need_resched() queries made so far

    # ----- set-up and the loop (called from outside the tasks) ---------------------------
    def add(self, name: str, body: Callable[[], None]) -> Task:
        t = Task(name, body, order=len(self.tasks))
        self.tasks[name] = t
        return t

    def run(self) -> None:
        self._main = greenlet.getcurrent()
        for t in self.tasks.values():
            t.glet = greenlet(self._wrap(t), parent=self._main)
        current: Task | None = None
        boundary = True
        while True:
            live = [t for t in self.tasks.values() if not t.done]
            if not live:
                return
            runnable = [t for t in live if t.runnable()]
            if not runnable:
                self.deadlock = self._deadlock(live)
                self._unwind(live)
                return
            if self.steps >= self.step_limit:
                self.hit_step_limit = True
                self._unwind(live)
                return
            nxt = self.policy.choose(self, runnable, current, boundary)
            self.steps += 1
            nxt.wait = None
            self.current = current = nxt
            if self.on_switch:
                self.on_switch(nxt)
            nxt.started = True
            boundary = nxt.glet.switch()
            if nxt.done:
                boundary = True

    def _wrap(self, t: Task) -> Callable[[], bool]:
        def go() -> bool:
            try:
                t.body()
            except SchedulerStop:
                pass
            finally:
                t.done = True
            return True
        return go

    def _unwind(self, live: list[Task]) -> None:
        for t in live:
            if t.glet is not None and t.started and not t.glet.dead:
                try:
                    t.glet.throw(SchedulerStop())
                except SchedulerStop:
                    pass
            t.done = True

    def _deadlock(self, live: list[Task]) -> DeadlockReport:
        waits = [(t.name, t.wait.what, t.wait.holders()) for t in live if t.wait is not None]
        graph = {t: [h for h in hs if h in self.tasks] for t, _, hs in waits}
        cycle: list[str] = []
        for start in graph:
            path, node, seen = [], start, set()
            while node in graph and node not in seen:
                seen.add(node)
                path.append(node)
                nxt = graph[node]
                if not nxt:
                    break
                node = nxt[0]
            if node in path:
                cycle = path[path.index(node):]
                break
        return DeadlockReport(waits, cycle)

    # ----- called from inside a task ---------------------------------------------------------
    def point(self, boundary: bool = False) -> None:
        """A scheduling point: the policy may run another task here."""
        if self._main is None:
            return
        self._main.switch(boundary)

    def need_resched(self) -> bool:
        """need_resched() || rwlock_needbreak(): the running task's walk asks whether to yield.
        The kernel's answer depends on timer ticks and on who spins on the lock, which no model
        knows, so the policy answers, query by query."""
        query = self.resched_queries
        self.resched_queries += 1
        return self.policy.need_resched(self, query)

    def wait_until(self, ready: Callable[[], bool], what: str, holders: Callable[[], list[str]]) -> None:
        """Park the current task until `ready()`; the scheduler re-checks it at every point."""
        while not ready():
            self.current.wait = Wait(ready, what, holders)
            self._main.switch(False)

    def site(self, depth: int = 2) -> str:
        """The model function that asked for a lock: lockdep's acquisition site."""
        f = sys._getframe(depth)
        while f is not None and f.f_code.co_name in ("mmu_lock", "mmu_unlock", "lock", "unlock", "down_read",
                                                     "down_write", "up_read", "up_write", "acquire",
                                                     "release", "read_lock", "read_unlock"):
            f = f.f_back
        return f.f_code.co_name if f is not None else "?"


class Mutex:
    """spinlock_t, struct mutex, or the write side of an rwlock_t: exactly one holder."""

    def __init__(self, name: str):
        self.name = name
        self.holder: Task | None = None

    def lock(self, s: Scheduler, site: str | None = None) -> None:
        s.point()
        t = s.current
        if self.holder is t:
            # the kernel spins on itself forever: a one-task deadlock
            s.wait_until(lambda: False, f"{self.name} (already held by itself)", lambda: [t.name])
        s.wait_until(lambda: self.holder is None, self.name, lambda: [self.holder.name] if self.holder else [])
        self.holder = t
        s.lockdep.acquire(t, self.name, "write", site or s.site(), s.lockdep_event)

    def unlock(self, s: Scheduler) -> None:
        t = s.current
        if self.holder is t:
            self.holder = None
            s.lockdep.release(t, self.name)
        s.point()


class RwSem:
    """struct rw_semaphore, fair: a queued writer blocks readers that come after it."""

    def __init__(self, name: str):
        self.name = name
        self.readers: list[Task] = []
        self.writer: Task | None = None
        self.queue: list[tuple[Task, str]] = []      # waiters in arrival order

    def _may_enter(self, t: Task, mode: str) -> bool:
        ahead = []
        for w, m in self.queue:
            if w is t:
                break
            ahead.append(m)
        if mode == "read":
            return self.writer is None and "write" not in ahead
        return self.writer is None and not self.readers and not ahead

    def _holders(self) -> list[str]:
        return [self.writer.name] if self.writer else [r.name for r in self.readers]

    def _acquire(self, s: Scheduler, mode: str, site: str | None) -> None:
        s.point()
        t = s.current
        if not self._may_enter(t, mode) or self.queue:
            self.queue.append((t, mode))
            queued_writers = [w.name for w, m in self.queue if m == "write" and w is not t]

            def holders() -> list[str]:
                # a reader behind a queued writer waits for that writer (which waits for the readers)
                return (queued_writers if mode == "read" and queued_writers and not self.writer
                        else self._holders())
            what = (f"{self.name} (read, behind a queued writer)" if mode == "read" and queued_writers
                    and not self.writer else f"{self.name} ({mode})")
            try:
                s.wait_until(lambda: self._may_enter(t, mode), what, holders)
            finally:
                self.queue = [(w, m) for w, m in self.queue if w is not t]
        if mode == "read":
            self.readers.append(t)
        else:
            self.writer = t
        s.lockdep.acquire(t, self.name, mode, site or s.site(), s.lockdep_event)

    def down_read(self, s: Scheduler, site: str | None = None) -> None:
        self._acquire(s, "read", site)

    def down_write(self, s: Scheduler, site: str | None = None) -> None:
        self._acquire(s, "write", site)

    def up_read(self, s: Scheduler) -> None:
        t = s.current
        if t in self.readers:
            self.readers.remove(t)
            s.lockdep.release(t, self.name)
        s.point()

    def up_write(self, s: Scheduler) -> None:
        t = s.current
        if self.writer is t:
            self.writer = None
            s.lockdep.release(t, self.name)
        s.point()


class Srcu:
    """struct srcu_struct: read sections and synchronize_srcu."""

    def __init__(self, name: str):
        self.name = name
        self.readers: dict[int, Task] = {}
        self._next = 0

    def read_lock(self, s: Scheduler) -> int:
        idx = self._next
        self._next += 1
        self.readers[idx] = s.current
        return idx

    def read_unlock(self, s: Scheduler, idx: int) -> None:
        self.readers.pop(idx, None)

    def synchronize(self, s: Scheduler) -> None:
        s.point()
        me = s.current
        pending = {i for i, t in self.readers.items() if t is not me}
        s.wait_until(lambda: not (pending & self.readers.keys()), f"synchronize_srcu({self.name})",
                     lambda: sorted({self.readers[i].name for i in pending & self.readers.keys()}))


class LockdepMap:
    """A lockdep pseudo-lock: acquisitions order against real locks; it never blocks."""

    def __init__(self, name: str):
        self.name = name

    def acquire(self, s: Scheduler, site: str) -> None:
        s.lockdep.acquire(s.current, self.name, "map", site, s.lockdep_event)

    def release(self, s: Scheduler) -> None:
        s.lockdep.release(s.current, self.name)

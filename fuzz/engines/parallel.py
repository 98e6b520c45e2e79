"""Parallel workers, for every engine that runs in more than one process.

`run_pool` is the one worker pool: the random engine's `--jobs N` (`run_parallel` below: N
workers, one seed each) and the exhaustive engine's `--jobs N` (fuzz/engines/exhaustive.py:
layouts spread over N workers) both go through it.  It owns forking, the workers' lifetime,
and collecting their results and progress:

* Tasks are numbers 0..n-1; `work(task, report)` runs in a worker forked from the caller, so
  it reaches everything the caller had (models, known lists, layouts) without pickling any
  of it.  Only what a worker sends back (`report(...)` payloads, `work`'s return value) is
  pickled.  Each worker has its own pipe (never a queue shared by all, which a worker killed
  mid-write would leave locked or torn for the others); the parent hands each worker its own
  tasks (worker k gets task k first, then tasks in order, `prefetch` ahead) and knows at every
  moment which task each worker runs.
* Workers never outlive the parent, however it dies: each asks the kernel for SIGKILL when the
  parent dies (fuzz/lifetime.py, SIGKILL of the parent included) and a worker whose parent
  died before it asked ends at once.  Workers run fuzz/lifetime.py's stop handlers: the first
  SIGINT or SIGTERM is an `Interrupted` (a KeyboardInterrupt) inside `work`, later ones are
  noted and ignored.
* SIGINT or SIGTERM to the parent (to the parent alone, or to the whole process group from a
  terminal) is passed on to every worker; no new task starts; the pool waits up to
  `stop_grace` seconds for what the workers send (a `work` that catches the interrupt and
  returns, as the random engine does, has its result collected) and then kills stragglers.
* At `deadline` (a time.monotonic() instant, the same clock in every process) no task starts,
  in the parent or in a worker that has one queued; a running task gets `grace` seconds to
  end (a `work` that watches the deadline itself, as the exhaustive engine's does, returns
  its partial result) and is then killed, its task counted as cut.
* A worker that dies (a signal, the OOM killer, an exit), raises from `work`, or cannot send
  its result (pickling) loses only its task: the pool reports it in `PoolRun.lost` with what
  happened, starts a replacement while tasks are left (at most `restarts` of them), and goes
  on.  A worker never loses another worker's results.
* Messages are sent and received with SIGINT and SIGTERM blocked, and a message is handled by
  the caller's callbacks in the same block, so a stop signal never tears a message in two nor
  drops one that was read: it is delivered just after.

Random engine (`run_parallel`): workers save every divergence before reporting it, as the
one file named by its signature (fuzz/corpus.py: an exclusive create, never a replacement),
so a killed run loses nothing already reported and two workers that find the same divergence
leave one file; the first worker to meet a signature claims it and minimizes it, the others
fuzz on.  With max_traces, worker k runs a share of the traces fixed by the seed and k alone.
The parent merges the workers' results by signature and prints one progress line for all.
"""
from __future__ import annotations

import collections
import dataclasses
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from multiprocessing.connection import wait as wait_ready
from pathlib import Path
from typing import Any, Callable, Iterable

from oracles.triage import KnownEntry

from fuzz import lifetime
from fuzz.engines.random_engine import Job, JobResult, run_job

SEED_STRIDE = 1_000_003
_STOP_ORDER = ["interrupted", "max-time", "stop-on-new", "max-traces", ""]   # what a merge says


# ----- the pool ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Loss:
    """A task that ended without a result."""
    task: int
    worker: int
    kind: str       # died | raised | unsent | stopped | cut
    why: str        # one line: "killed by SIGKILL", "exit status 3", "ValueError: ...", ...
    detail: str = ""    # the worker's traceback for "raised" / "unsent"


@dataclasses.dataclass
class PoolRun:
    done: int = 0                                  # tasks whose result arrived
    interrupted: bool = False                      # a stop signal reached the parent
    stop_signal: int | None = None                 # ... which one
    deadline: bool = False                         # the deadline stopped the pool
    lost: list[Loss] = dataclasses.field(default_factory=list)
    unrun: list[int] = dataclasses.field(default_factory=list)   # never started (deadline, stop)
    workers: int = 0                               # processes started, replacements included
    pids: list[int] = dataclasses.field(default_factory=list)

    def failures(self) -> list[Loss]:
        """Tasks lost to something other than the deadline or a stop signal."""
        return [x for x in self.lost if x.kind not in ("cut", "stopped")
                or (x.kind == "stopped" and not self.interrupted)]


Work = Callable[[int, Callable[[Any], None]], Any]


@contextmanager
def _signals_held():
    """SIGINT and SIGTERM wait (the kernel keeps them pending) until the block ends."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, lifetime.STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _send(conn, msg) -> None:
    with _signals_held():
        conn.send(msg)


def _worker_main(index: int, conn, others: list, parent: int, work: Work, deadline: float | None) -> None:
    # forked with SIGINT and SIGTERM blocked (run_pool's start): a signal sent meanwhile waits
    lifetime.die_with_parent(parent)               # however the parent dies
    try:
        lifetime.install_stop_handlers()           # first SIGINT/SIGTERM: Interrupted, then noted
    except ValueError:                             # not the main thread: keep what it has
        pass
    lifetime.worker_signals()
    for c in others:                               # the parent's ends of the pipes: not ours
        c.close()
    current = [-1]

    def report(payload) -> None:
        _send(conn, ("progress", current[0], payload))

    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, lifetime.STOP_SIGNALS)
        while lifetime.stop_signal() is None:
            conn.poll(None)                        # waits for a task; a stop signal ends the wait
            with _signals_held():
                task = conn.recv()
            if task is None:
                break
            if deadline is not None and time.monotonic() >= deadline:
                _send(conn, ("unrun", task))
                continue
            current[0] = task
            _send(conn, ("start", task))
            try:
                result = work(task, report)
            except KeyboardInterrupt:
                _send(conn, ("stopped", task, ""))
                break
            except BaseException as e:             # SystemExit too: a bug in work, its task is lost
                _send(conn, ("raised", task, f"{type(e).__name__}: {e}", traceback.format_exc()))
                continue
            try:
                _send(conn, ("done", task, result))
            except Exception as e:                 # pickling fails before anything is written
                _send(conn, ("unsent", task, f"result not sent: {type(e).__name__}: {e}",
                             traceback.format_exc()))
    except KeyboardInterrupt:
        pass
    except (EOFError, OSError):                    # the parent is gone (its death signal follows)
        pass
    finally:
        conn.close()


@dataclasses.dataclass
class _Worker:
    index: int
    proc: Any
    conn: Any
    queued: collections.deque = dataclasses.field(default_factory=collections.deque)  # sent, not ended
    running: int | None = None       # the task it said it started
    closing: bool = False            # sent None: it ends after its queued tasks
    eof: bool = False


def _why_ended(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def run_pool(jobs: int, tasks: int | Iterable[int], work: Work, *,
             on_result: Callable[[int, Any], None],
             on_progress: Callable[[int, Any], None] | None = None,
             on_idle: Callable[[], None] | None = None,
             deadline: float | None = None, grace: float = 2.0, stop_grace: float = 30.0,
             prefetch: int = 2, restarts: int | None = None, poll: float = 0.2) -> PoolRun:
    """Run work(task, report) for every task on `jobs` forked worker processes (the module
    docstring says how they live and end).  In this process, in the calling thread:
    on_result(task, result) for each task that ends, on_progress(task, payload) for each
    report(payload) a worker makes, on_idle() at least every `poll` seconds.  Returns what
    happened: tasks done, lost (and why), never started; whether a signal or the deadline
    stopped it.  Every worker has ended when it returns."""
    if jobs < 1:
        raise ValueError(f"run_pool: jobs: {jobs!r} is not at least 1")
    pending = collections.deque(range(tasks) if isinstance(tasks, int) else tasks)
    restarts = jobs if restarts is None else restarts
    ctx = mp.get_context("fork")
    parent = os.getpid()
    run = PoolRun()
    workers: list[_Worker] = []                  # live ones
    phase = "running"                            # running | closing | deadline | stopping
    finish_by: float | None = None               # kill whatever still runs at this instant

    def start() -> None:
        with _signals_held():                    # a started worker is always one we know of
            here, there = ctx.Pipe(duplex=True)
            others = [w.conn for w in workers] + [here]
            p = ctx.Process(target=_worker_main, args=(run.workers, there, others, parent, work, deadline),
                            daemon=True, name=f"memslot-fuzz-worker-{run.workers}")
            p.start()
            there.close()                        # later workers must not hold the worker's end
            workers.append(_Worker(run.workers, p, here))
            run.workers += 1
            run.pids.append(p.pid)

    def settle(w: _Worker, task: int, kind: str, why: str, detail: str = "") -> None:
        if task in w.queued:
            w.queued.remove(task)
        if w.running == task:
            w.running = None
        if kind == "unrun":
            run.unrun.append(task)
        elif kind != "done":
            run.lost.append(Loss(task, w.index, kind, why, detail))

    def handle(w: _Worker, msg) -> None:
        what, task = msg[0], msg[1]
        if what == "progress":
            if on_progress is not None:
                on_progress(task, msg[2])
        elif what == "start":
            w.running = task
        elif what == "done":
            settle(w, task, "done", "")
            run.done += 1
            on_result(task, msg[2])
        elif what == "unrun":
            settle(w, task, "unrun", "")
        elif what == "stopped":
            settle(w, task, "stopped", "stopped by a signal")
        else:                                    # raised | unsent
            settle(w, task, what, msg[2], msg[3])

    def drain(w: _Worker) -> None:
        """Every message the worker has sent so far, each handled as it is read."""
        while not w.eof:
            try:
                if not w.conn.poll():
                    return
                with _signals_held():
                    msg = w.conn.recv()
                    handle(w, msg)
            except (EOFError, OSError):
                w.eof = True

    def reap(w: _Worker, why: str | None = None) -> None:
        """w has ended (or is killed now): its unfinished tasks are lost or go back."""
        nonlocal phase, finish_by
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join()
        drain(w)
        w.conn.close()
        workers.remove(w)
        if w.running is not None:
            kind = ("cut" if phase == "deadline" else "stopped" if phase == "stopping" else "died")
            settle(w, w.running, kind, why or _why_ended(w.proc.exitcode))
        back = list(w.queued)                    # sent but never started
        w.queued.clear()
        if phase in ("running", "closing"):
            pending.extendleft(reversed(back))
            if back:
                phase, finish_by = "running", None   # a replacement runs them (restarts allowing)
        else:
            run.unrun.extend(back)

    def tell(w: _Worker, msg) -> None:
        try:
            _send(w.conn, msg)
        except OSError:                          # it died: its sentinel says so next
            pass

    def dispatch() -> None:
        nonlocal phase, finish_by
        alive = [w for w in workers if not w.closing]
        for depth in range(1, prefetch + 1):     # one each first: worker k gets task k
            for w in alive:
                if pending and len(w.queued) < depth:
                    task = pending.popleft()
                    w.queued.append(task)    # a worker that died meanwhile gives it back (reap)
                    tell(w, task)
        if not pending:
            for w in alive:
                if not w.queued:
                    w.closing = True
                    tell(w, None)
            if phase == "running" and all(w.closing for w in workers):
                phase = "closing"
                finish_by = time.monotonic() + max(5.0, grace)

    def stop_all(kind: str) -> None:
        """No task starts from now on; with a signal, the workers get it too."""
        nonlocal phase, finish_by
        phase = kind
        run.unrun.extend(pending)
        pending.clear()
        for w in workers:
            if not w.closing:
                w.closing = True
                tell(w, None)
            if kind == "stopping" and w.proc.is_alive() and w.proc.pid is not None:
                try:
                    os.kill(w.proc.pid, run.stop_signal)   # a worker that has one ignores a second
                except ProcessLookupError:
                    pass
        finish_by = time.monotonic() + (stop_grace if kind == "stopping" else grace)

    def step() -> None:
        now = time.monotonic()
        if phase in ("running", "closing") and deadline is not None and now >= deadline:
            run.deadline = True
            stop_all("deadline")
        if phase == "running":
            while (len(workers) < jobs and run.workers < jobs + restarts
                   and len(pending) > sum(1 for w in workers if not w.queued and not w.closing)):
                start()
            dispatch()
        timeout = poll
        if finish_by is not None:
            timeout = max(0.0, min(timeout, finish_by - now))
        if phase == "running" and deadline is not None:
            timeout = max(0.0, min(timeout, deadline - now))
        ready = set(wait_ready([w.conn for w in workers if not w.eof] + [w.proc.sentinel for w in workers],
                               timeout))
        for w in list(workers):
            if w.conn in ready:
                drain(w)
            if w.proc.sentinel in ready:
                reap(w)
        if finish_by is not None and time.monotonic() >= finish_by:
            why = {"deadline": f"still running {grace:g} s after the deadline",
                   "stopping": f"still running {stop_grace:g} s after the stop signal"}.get(
                       phase, "did not end after its last task")
            for w in list(workers):
                reap(w, why)
        if on_idle is not None:
            on_idle()

    try:
        while True:
            try:
                if phase == "running" and not pending and not workers:
                    break
                if phase != "running" and not workers:
                    break
                if phase == "running" and not workers and run.workers >= jobs + restarts:
                    break
                step()
            except KeyboardInterrupt:            # SIGINT or SIGTERM (fuzz.lifetime.Interrupted)
                if phase != "stopping":
                    run.interrupted = True
                    run.stop_signal = lifetime.stop_signal() or signal.SIGINT
                    stop_all("stopping")
    finally:                                     # an exception of the caller's: no worker stays
        for w in list(workers):
            w.proc.kill()
            w.proc.join()
            w.conn.close()
    if pending:                                  # no worker left to run them (restarts spent)
        run.unrun.extend(pending)
    return run


def say_losses(label: str, run: PoolRun, name: Callable[[int], str] = "task {}".format) -> None:
    """One line on stderr per task a worker lost to something other than the deadline or a
    stop signal (with the worker's traceback when it raised); name(task) says what it was."""
    for x in run.failures():
        print(f"memslot-fuzz: {label}: worker {x.worker} lost {name(x.task)}: {x.kind}: {x.why}",
              file=sys.stderr, flush=True)
        if x.detail:
            print(x.detail.rstrip(), file=sys.stderr, flush=True)


# ----- the random engine's --jobs ----------------------------------------------------------------
def share(total: int | None, jobs: int, k: int) -> int | None:
    """Worker k's part of `total` traces (the first total % jobs workers run one more)."""
    if total is None:
        return None
    return total // jobs + (1 if k < total % jobs else 0)


def run_parallel(job: Job, jobs: int, known: list[KnownEntry], quiet: bool = False) -> JobResult:
    """Run `job` on `jobs` processes and merge what they found (first finder of a signature wins)."""
    with tempfile.TemporaryDirectory(prefix="memslot-fuzz-claims-") as claims:
        return _run_parallel(job, jobs, known, quiet, Path(claims))


def _run_parallel(job: Job, jobs: int, known: list[KnownEntry], quiet: bool, claims: Path) -> JobResult:
    # the first worker to meet a signature claims it and minimizes it; the others fuzz on
    subs = [dataclasses.replace(job, seed=job.seed + k * SEED_STRIDE, max_traces=share(job.max_traces, jobs, k),
                                claims=claims) for k in range(jobs)]
    label = f"[{job.arch} {job.old.name}..{job.new.name}]"

    def work(k: int, report) -> JobResult:
        def tell(res: JobResult, what: str) -> None:
            if what == "found":
                d = res.divergences[-1]
                report(("found", d.signature, d.known, d.cls, d.wrong_side, d.op,
                        len(d.trace), str(res.saved[d.signature])))
            else:
                report(("tick", res.events, res.traces))
        try:
            res = run_job(subs[k], known, tell)
        except KeyboardInterrupt:      # interrupted before run_job could catch it
            res = JobResult(subs[k], interrupted=True, stopped_by="interrupted")
        # the parent has the job; its Sides may hold classes the registry composes at run time
        # (RISC-V's later layers), which pickle cannot name, and the result must reach the parent
        res.job = None
        return res

    per_worker: dict[int, tuple[int, int]] = {}
    seen: set[str] = set()
    collected: dict[int, JobResult] = {}
    start = time.monotonic()
    last = [start]

    def on_progress(k: int, msg) -> None:
        if msg[0] == "tick":
            per_worker[k] = (msg[1], msg[2])
        elif msg[0] == "found" and msg[1] not in seen:
            seen.add(msg[1])
            if not quiet:
                _, _, known_, cls, side, op, n, path = msg
                tag = "known" if known_ else "NEW"
                print(f"  {label} {tag} {cls} ({side} wrong) at {op}, {n} events -> {path}",
                      file=sys.stderr, flush=True)

    def on_idle() -> None:
        now = time.monotonic()
        if not quiet and now - last[0] >= 2.0:
            last[0] = now
            events = sum(e for e, _ in per_worker.values())
            print(f"  {label} {now - start:5.1f}s {jobs} jobs, "
                  f"{events} events ({events / (now - start):.0f}/s), divergences {len(seen)}",
                  file=sys.stderr, flush=True)

    run = run_pool(jobs, jobs, work, on_result=collected.__setitem__, on_progress=on_progress,
                   on_idle=on_idle, prefetch=1, restarts=0)
    merged = JobResult(job, stopped_by="", interrupted=run.interrupted)
    say_losses(job.arch, run, lambda k: f"its run (seed {subs[k].seed})")
    if len(collected) < jobs and not run.interrupted:
        print(f"memslot-fuzz: {job.arch}: {jobs - len(collected)} of {jobs} workers ended without a "
              "result (see above); what they saved is on disk, their counts are missing",
              file=sys.stderr, flush=True)
    for k in sorted(collected):
        res = collected[k]
        res.job = job
        merged.events += res.events
        merged.traces += res.traces
        merged.schedules += res.schedules
        merged.explored += res.explored
        merged.explored_complete += res.explored_complete
        merged.seconds = max(merged.seconds, res.seconds)
        merged.fuzz_seconds = max(merged.fuzz_seconds, res.fuzz_seconds)
        merged.minimize_seconds += res.minimize_seconds
        merged.unminimized += res.unminimized
        merged.interrupted |= res.interrupted
        merged.stopped_by = min(merged.stopped_by, res.stopped_by, key=_STOP_ORDER.index)
        for d in res.divergences:
            if d.signature not in merged.saved:
                merged.saved[d.signature] = res.saved[d.signature]
                merged.divergences.append(d)
    if run.interrupted and not merged.stopped_by:
        merged.stopped_by = "interrupted"
    return merged

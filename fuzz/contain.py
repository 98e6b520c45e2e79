"""Contained candidates: a user's model (`file.py:Class` / `module:Class`) runs only in a worker
process, so nothing it does can end or stall the tool.

* `side(arch, spec, timeout)` gives our own models as in-process Sides (run at full speed, as
  always) and a candidate as a CandidateSide: a name with no class.  fuzz.runner.run_trace
  (and fuzz.details.replay_details, for pictures and `show`) send every trace with a
  CandidateSide to the worker of its (arch, old, new) pair; the parent never imports or runs
  the candidate's code.  What the parent needs of the class (address_space_num) is probed in
  the worker (`probe`).
* The worker is forked from the tool (os.fork, so it also works under `--jobs` workers), dies
  with it (PR_SET_PDEATHSIG), ignores SIGINT (the tool handles Ctrl-C and kills it), has its
  address space capped (RLIMIT_AS, so unbounded allocation is a MemoryError) and replaces
  os._exit by a function that raises.  It imports the candidate, constructs both sides once as
  a check, then runs one trace per request.  There every BaseException a model raises in an
  event (SystemExit, os._exit, KeyboardInterrupt, MemoryError, RecursionError...) is the
  model's crash (runner.CAUGHT), and one that escapes a trace is reported as a crash too.
* Each request has a deadline (`--trace-timeout`, default 5 s).  The worker publishes in
  shared memory which side and which event it is applying; past the deadline the parent kills
  it and reports a `model-hang` at that event; a worker that dies (a signal, an exit status)
  is a `model-crash` naming how it died and the event.  The next trace gets a new worker.
  The prefix of a trace that ended so is remembered (a deterministic model fails the same way
  on any trace that starts with it), so minimizing, saving and reporting a hang does not pay
  the deadline again for the same prefix.
* A candidate that raises or exits while it is imported or constructed is a finding (a
  model-crash, or model-hang, at op "import" / "construct"); a missing file, module or class is
  a usage error (registry.ModelLoadError).
"""
from __future__ import annotations

import atexit
import copy
import os
import resource
import signal
from dataclasses import dataclass
from multiprocessing import connection, sharedctypes

from impls import registry
from impls.observation import Observation
from oracles.compare import Divergence
from oracles.reference import expect
from oracles.triage import KnownEntry, is_candidate, mark_known

from fuzz import lifetime, runner
from language.trace import HostMap

DEFAULT_TRACE_TIMEOUT = 5.0        # seconds per trace (and for importing + constructing)
ADDRESS_SPACE_LIMIT = 512 << 20    # RLIMIT_AS of a worker: 512 MiB on top of what it inherits
MEMO_PREFIXES = 64                 # failing trace prefixes remembered per worker key
SIDES = ("old", "new")
IMPORTING, CONSTRUCTING = -2, -1   # published "event index" while loading
# The trace saved for a candidate that fails to load: one harmless event (it failed before any),
# so the finding replays like every other.
LOAD_TRACE = [HostMap(0x7f0000000000, 0x1000, 0x1000, 0x1000, True)]
_REAL_EXIT = os._exit


class ContainmentError(Exception):
    """A candidate's class was asked for outside its worker (a bug in the tool)."""


class CandidateSide(runner.Side):
    """A candidate as the tool's process knows it: its spec, never its class."""
    contained = True

    def __init__(self, name: str, arch: str, timeout: float = DEFAULT_TRACE_TIMEOUT):
        super().__init__(name, None)
        self.arch, self.timeout = arch, timeout

    def make(self):
        raise ContainmentError(f"candidate {self.name} runs only in its worker (fuzz/contain.py)")


def side(arch: str, spec: str, timeout: float = DEFAULT_TRACE_TIMEOUT) -> runner.Side:
    """A version of `arch` (our model, in process) or a candidate (contained).  Names that do
    not exist are a registry.ModelLoadError; a candidate's file is checked without importing."""
    if is_candidate(spec):
        registry.candidate_location(spec)
        return CandidateSide(spec, arch, timeout)
    return runner.Side(spec, registry.resolve(arch, spec))


@dataclass
class Failure:
    """How a request to a worker ended when it did not answer."""
    cls: str          # model-crash | model-hang
    shape: str        # exception | died | timeout
    side: str         # old | new
    index: int        # event index, or IMPORTING / CONSTRUCTING
    detail: str


class LoadFailed(Exception):
    def __init__(self, failure: Failure):
        super().__init__(failure.detail)
        self.failure = failure


# ----- the worker process ----------------------------------------------------------------------
class OsExitCalled(SystemExit):
    """os._exit called by a model: in a candidate's worker it raises this instead of exiting."""


def _os_exit_raises(status=0):
    raise OsExitCalled(f"os._exit({status})")


class _Publisher:
    """In the worker: publishes in shared memory which side and which event of the current trace
    is being applied, so the tool knows it after killing a worker that hung.  It wraps
    runner.apply_event (which run_trace, task mode included, and details.replay_details call),
    so it holds whatever order the events run in."""

    def __init__(self, where):
        self.where = where
        self.sides: dict[int, int] = {}        # id(model) -> side code
        self.index: dict[int, int] = {}        # id(event) -> its index in the current trace
        self.apply_event = runner.apply_event

    def trace(self, events: list) -> list:
        """The trace of a request, as distinct event objects (unpickling shares equal ones)."""
        events = [copy.copy(ev) for ev in events]
        self.index = {id(ev): i for i, ev in enumerate(events)}
        return events

    def published_apply_event(self, model, ev):
        where = self.where
        where[0] = self.sides.get(id(model), where[0])
        where[1] = self.index.get(id(ev), where[1])
        return self.apply_event(model, ev)


class _Published(runner.Side):
    """A Side in the worker whose models say which side they are (index -1: constructing)."""

    def __init__(self, name, cls, code: int, publisher: _Publisher):
        super().__init__(name, cls)
        self.code, self.publisher = code, publisher

    def make(self):
        where = self.publisher.where
        where[0], where[1] = self.code, CONSTRUCTING
        model = super().make()
        self.publisher.sides[id(model)] = self.code
        return model


def _serve(conn, arch: str, names: tuple[str, str], where, parent_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C is the tool's; it kills us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    lifetime.die_with_parent(parent_pid)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _vm_size() + ADDRESS_SPACE_LIMIT
    if hard == resource.RLIM_INFINITY or cap < hard:
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    os._exit = _os_exit_raises
    runner.CAUGHT = BaseException
    from fuzz import details
    publisher = _Publisher(where)
    runner.apply_event = publisher.published_apply_event     # details reads it at call time
    sides = {}
    try:
        for code, (k, name) in enumerate(zip(SIDES, names)):
            where[0], where[1] = code, IMPORTING
            sides[k] = _Published(name, registry.resolve(arch, name), code, publisher)
        for s in sides.values():
            s.make()
        conn.send(("ready", {"address_space_num": sides["old"].cls.address_space_num,
                             "needs_tasks": any(getattr(x.cls, "needs_tasks", False) for x in sides.values())}))
    except registry.CandidateImportError as e:
        conn.send(("crash", where[0], where[1], e.raised))
        return
    except registry.ModelLoadError as e:
        conn.send(("usage", str(e)))
        return
    except BaseException as e:
        conn.send(("crash", where[0], where[1], runner.crash_text(e)))
        return
    while True:
        try:
            what, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            events = publisher.trace(args[0])
            if what == "run_trace":
                msg = ("ok", runner.run_trace(events, arch, sides["old"], sides["new"], [], *args[1:]))
            elif what == "replay_details":
                msg = ("ok", details.replay_details(events, sides["old"], sides["new"], *args[1:]))
            elif what == "recorded_run":
                # one schedule of fuzz.engines.explore: the comparison and each side's choices
                from fuzz.engines.explore import ChoiceLog
                from fuzz.schedule import recording
                log = ChoiceLog()
                with recording(log):
                    res = runner.run_trace(events, arch, sides["old"], sides["new"], [])
                msg = ("ok", (log.done(), res))
            elif what == "cross_run":
                from fuzz import rootcause
                msg = ("ok", rootcause.cross_run(events, args[1], sides["old"].cls, sides["new"].cls))
            else:   # "initial": each side's state before any event
                msg = ("ok", tuple(s.make().snapshot() for s in sides.values()))
        except BaseException as e:
            msg = ("crash", where[0], where[1], runner.crash_text(e))
        try:
            conn.send(msg)
        except BaseException as e:        # a result that does not pickle, or memory ran out
            conn.send(("crash", where[0], where[1], f"its result could not be sent back: {runner.crash_text(e)}"))


def _vm_size() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class _Worker:
    def __init__(self, key: tuple, timeout: float):
        arch, old_name, new_name = key
        self.key = key
        self.names = {"old": old_name, "new": new_name}
        self.where = sharedctypes.RawArray("l", [-1, IMPORTING])
        mine, theirs = connection.Pipe()
        parent_pid = os.getpid()
        pid = os.fork()
        if pid == 0:                                  # the worker
            try:
                mine.close()
                for w in _workers.values():           # other workers' pipes are not ours to hold
                    w.conn.close()
                _serve(theirs, arch, (old_name, new_name), self.where, parent_pid)
            finally:
                _REAL_EXIT(0)
        self.pid, self.conn, self.owner = pid, mine, parent_pid
        try:
            theirs.close()
            reply = self._answer(timeout)
        except BaseException:                         # a stop signal before it was ready
            self.stop()
            raise
        if reply[0] == "usage":
            self.stop()
            raise registry.ModelLoadError(reply[1])
        if reply[0] != "ready":
            self.stop()
            raise LoadFailed(self._failure(reply, timeout))
        self.info = reply[1]

    def call(self, what: str, args: tuple, timeout: float):
        """("ok", result), or a Failure (the worker is then gone).  Interrupted anywhere
        between sending the request and taking its reply (a stop signal is an exception at
        any point), the worker is killed: left alive, its answer to this request would be
        read as the answer to the next one."""
        try:
            self.where[0], self.where[1] = -1, IMPORTING
            try:
                self.conn.send((what, args))
            except OSError:
                pass                                  # it died: _answer says how
            reply = self._answer(timeout)
        except BaseException:
            self.stop()
            raise
        if reply[0] == "ok":
            return reply
        self.stop()
        return self._failure(reply, timeout)

    def _answer(self, timeout: float) -> tuple:
        try:
            if not self.conn.poll(timeout):
                return ("hang",)
            return self.conn.recv()
        except (EOFError, OSError):
            return ("died", self.stop())
        except BaseException:                         # Ctrl-C/SIGTERM while waiting: no worker left behind
            self.stop()
            raise

    def _failure(self, reply: tuple, timeout: float) -> Failure:
        code, index = self.where[0], self.where[1]
        if reply[0] == "crash":
            _, code, index, detail = reply
            cls, shape = "model-crash", "exception"
        elif reply[0] == "hang":
            cls, shape = "model-hang", "timeout"
            detail = f"no answer within {timeout:g}s (--trace-timeout)"
        else:
            cls, shape = "model-crash", "died"
            detail = f"its worker process {_status(reply[1])}"
        sides = [k for k in SIDES if is_candidate(self.names[k])]
        k = SIDES[code] if 0 <= code < 2 else None
        if k not in sides or len(sides) == 1:
            k = sides[0] if sides else (k or "new")
        stage = {IMPORTING: "while it was imported", CONSTRUCTING: "in its constructor"}.get(index)
        at = stage or f"at event {index}"
        return Failure(cls, shape, k, index, f"{self.names[k]} {at}: {detail}")

    def stop(self) -> int | None:
        """Kill and reap the worker; its wait status (None if it was already reaped)."""
        if _workers.get(self.key) is self:
            del _workers[self.key]
        try:
            self.conn.close()
        except OSError:
            pass
        if self.pid is None or self.owner != os.getpid():
            return None
        pid, self.pid = self.pid, None
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return None


def _status(status: int | None) -> str:
    if status is None:
        return "ended"
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        return f"was killed by signal {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
    return f"exited with status {code}"


_workers: dict[tuple, _Worker] = {}


def _worker(arch: str, old: runner.Side, new: runner.Side) -> _Worker:
    key = (arch, old.name, new.name)
    w = _workers.get(key)
    if w is not None and w.owner == os.getpid():
        return w
    if w is not None:                                 # inherited across a fork (--jobs): not ours
        w.conn.close()
    _workers.pop(key, None)
    w = _Worker(key, _timeout(old, new))
    _workers[key] = w
    return w


def _timeout(old, new) -> float:
    return max(getattr(s, "timeout", 0.0) for s in (old, new)) or DEFAULT_TRACE_TIMEOUT


@atexit.register
def shutdown() -> None:
    """Stop every worker this process started."""
    for w in list(_workers.values()):
        if w.owner == os.getpid():
            w.stop()


# ----- what the tool calls ---------------------------------------------------------------------
def failure_divergence(f: Failure, events: list, arch: str, old: runner.Side, new: runner.Side) -> Divergence:
    if 0 <= f.index < len(events):
        op = events[f.index].op
    else:
        op = "import" if f.index == IMPORTING else "construct"
    d = Divergence(f.cls, f.side, op, f.shape, max(f.index, 0), f.detail)
    d.arch, d.old, d.new = arch, old.name, new.name
    return d


@dataclass
class Probe:
    address_space_num: int
    failure: Divergence | None = None     # the candidate crashed or hung while loading
    needs_tasks: bool = False             # a side's generic layer needs real blocking (task mode)


def probe(arch: str, old: runner.Side, new: runner.Side, known: list[KnownEntry]) -> Probe:
    """What a run needs of the old side's class, and whether both sides load and construct.
    Our own models are asked in process (a constructor that raises is a CandidateError)."""
    if not (old.contained or new.contained):
        old.make(), new.make()
        return Probe(old.cls.address_space_num,
                     needs_tasks=any(getattr(x.cls, "needs_tasks", False) for x in (old, new)))
    try:
        info = _worker(arch, old, new).info
        return Probe(info["address_space_num"], needs_tasks=info.get("needs_tasks", False))
    except LoadFailed as e:
        d = failure_divergence(e.failure, LOAD_TRACE, arch, old, new)
        d.trace = list(LOAD_TRACE)
        mark_known([d], known)
        return Probe(1, d)


_memo: dict[tuple, list[tuple[tuple, Failure]]] = {}


def _remembered(key: tuple, events: list) -> Failure | None:
    for prefix, f in _memo.get(key, []):
        if len(prefix) <= len(events) and tuple(events[:len(prefix)]) == prefix:
            return f
    return None


def _remember(key: tuple, events: list, f: Failure) -> None:
    if f.index == IMPORTING:
        return                                        # not a property of the trace
    lst = _memo.setdefault(key, [])
    lst.append((tuple(events[:max(f.index, -1) + 1]), f))
    del lst[:-MEMO_PREFIXES]


def _call(arch, old, new, what: str, events: list, *args):
    """("ok", result) or the Failure of this trace (remembered by its prefix)."""
    key = (arch, old.name, new.name)
    f = _remembered(key, events)
    if f is not None:
        return f
    try:
        reply = _worker(arch, old, new).call(what, (list(events),) + args, _timeout(old, new))
    except LoadFailed as e:
        reply = e.failure
    if isinstance(reply, Failure):
        _remember(key, events, reply)
    return reply


def run_trace_contained(events: list, arch: str, old: runner.Side, new: runner.Side,
                        known: list[KnownEntry], keep_observations: bool = False,
                        stop_at_first: bool = False) -> runner.TraceResult:
    """fuzz.runner.run_trace for a pair with a candidate: in the pair's worker, with a deadline.
    A trace that ends in a hang or a crash outside the models' handlers shows what the events
    before it show (re-run in a new worker), then the model-hang / model-crash."""
    reply = _call(arch, old, new, "run_trace", events, keep_observations, stop_at_first)
    if not isinstance(reply, Failure):
        res = reply[1]
        mark_known(res.divergences, known)
        return res
    f = reply
    k = max(f.index, 0)
    res = runner.TraceResult()
    if f.index > 0:
        before = _call(arch, old, new, "run_trace", events[:f.index], keep_observations, stop_at_first)
        if not isinstance(before, Failure):
            res = before[1]
            if stop_at_first and res.divergences:
                mark_known(res.divergences, known)
                return res
    d = failure_divergence(f, events, arch, old, new)
    if d.signature not in {x.signature for x in res.divergences}:
        res.divergences.append(d)
    res.events = k + 1 if events else 0
    if keep_observations and f.index >= 0 and len(res.observations) == k:
        res.observations.append(_failed_observations(events[k].op, f))
    mark_known(res.divergences, known)
    return res


def recorded_run_contained(events: list, arch: str, old: runner.Side, new: runner.Side,
                           known: list[KnownEntry]) -> tuple[list | None, runner.TraceResult]:
    """One schedule of an exploration (fuzz/engines/explore.py) for a pair with a candidate:
    the scheduling points each side recorded, in its worker, and the comparison.  A run that
    hung, died or crashed outside the models' handlers has no records (None): its result is
    what run_trace_contained reports for it (the failure, from the remembered prefix)."""
    reply = _call(arch, old, new, "recorded_run", events)
    if isinstance(reply, Failure):
        return None, run_trace_contained(events, arch, old, new, known)
    runs, res = reply[1]
    mark_known(res.divergences, known)
    return runs, res


def cross_run_contained(events: list, j: int, old: runner.Side, new: runner.Side):
    """fuzz.rootcause.cross_run for a pair with a candidate, in its worker (None if a model
    hung or died on the way)."""
    arch = next(s.arch for s in (old, new) if s.contained)
    reply = _call(arch, old, new, "cross_run", events, j)
    return None if isinstance(reply, Failure) else reply[1]


def _failed_observations(op: str, f: Failure) -> tuple[Observation, Observation]:
    pair = {k: Observation(op) for k in SIDES}
    pair[f.side].crashed = f"{f.cls}: {f.detail}"
    return pair["old"], pair["new"]


def replay_details_contained(events: list, old: runner.Side, new: runner.Side,
                             upto: int | None = None) -> list:
    """fuzz.details.replay_details for a pair with a candidate.  The event a model hung or died
    on is drawn from the state before it, with that side's observation marked crashed."""
    from fuzz.details import EventDetail, SideView
    arch = next(s.arch for s in (old, new) if s.contained)
    last = len(events) - 1 if upto is None else min(upto, len(events) - 1)
    reply = _call(arch, old, new, "replay_details", events[:last + 1], upto)
    if not isinstance(reply, Failure):
        return reply[1]
    f = reply
    if f.index < 0 or f.index > last:
        return []
    out = []
    if f.index > 0:
        before = _call(arch, old, new, "replay_details", events[:f.index], f.index - 1)
        if isinstance(before, Failure):
            return []
        out = before[1]
    if out:
        pre = {"old": out[-1].old.post, "new": out[-1].new.post}
    else:
        initial = _call(arch, old, new, "initial", [])
        if isinstance(initial, Failure):
            return []
        pre = dict(zip(SIDES, initial[1]))
    ev = events[f.index]
    obs = dict(zip(SIDES, _failed_observations(ev.op, f)))
    views = {k: SideView(s.name, pre[k], pre[k], obs[k], expect(ev, pre[k]))
             for k, s in zip(SIDES, (old, new))}
    out.append(EventDetail(f.index, ev, views["old"], views["new"]))
    return out

"""A user's candidate model runs contained (fuzz/contain.py): whatever it does (exit, os._exit,
KeyboardInterrupt, loop, recurse, allocate without bound, at import or in a handler), the run
ends with exit 1 and a one-line model-crash / model-hang finding, never exit 0 and never a
stall; the tool's own process never imports it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import contain
from fuzz.engines.generate import GenConfig, RandomSource, generate
from fuzz.runner import Side, run_trace
from language.trace import FaultBegin, FaultCommit, HostMap, InvalidateRangeEnd, InvalidateRangeStart, SetMemoryRegion
from impls import registry
from oracles.triage import load_known

REPO = Path(__file__).resolve().parent.parent
MAX_TIME = 5
HVA = 0x7f0000000000
P = 4096
# a trace whose invalidate_range_start (event 4) reaches kvm_unmap_gfn_range with a mapped gfn
UNMAP = [HostMap(HVA, 4 * P, 0x1000, P, True), SetMemoryRegion(0, 0, 0, 0x100000, 4 * P, HVA),
         FaultBegin(1, 0, 0x100, True), FaultCommit(1), InvalidateRangeStart(HVA, HVA + P),
         InvalidateRangeEnd(HVA, HVA + P)]


def candidate(tmp_path: Path, body: str, at_import: str = "", name: str = "cand",
              base: str = "v5.13") -> tuple[Path, int]:
    """cand.py:P, the x86-shadow model at `base` whose kvm_unmap_gfn_range runs `body`; the line
    number of `body`'s last line (or of `at_import`'s, when given)."""
    lines = ["import os, signal, sys", "from impls import registry", at_import or "pass", "",
             f"class P(registry.model('x86-shadow', {base!r})):",
             "    def kvm_unmap_gfn_range(self, range):"]
    lines += ["        " + line for line in body.splitlines()]
    body_line = len(lines)
    path = tmp_path / f"{name}.py"
    path.write_text("\n".join(lines) + "\n")
    return path, (3 if at_import else body_line)


def memslot_fuzz(*args, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("memslot-fuzz")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "fuzz.cli"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(cmd + [str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


HOSTILE = {
    # name: (handler body, code at import, class, what the detail names)
    "sys.exit(0) in a handler": ("sys.exit(0)", "", "model-crash", "SystemExit"),
    "os._exit(0) in a handler": ("os._exit(0)", "", "model-crash", "os._exit(0)"),
    "SystemExit at import": ("pass", "raise SystemExit(0)", "model-crash", "SystemExit"),
    "os._exit at import": ("pass", "os._exit(0)", "model-crash", "os._exit(0)"),
    "KeyboardInterrupt in a handler": ("raise KeyboardInterrupt", "", "model-crash", "KeyboardInterrupt"),
    "an infinite loop": ("while True:\n    pass", "", "model-hang", "no answer within 1s"),
    "unbounded recursion": ("return self.kvm_unmap_gfn_range(range)", "", "model-crash", "RecursionError"),
    # bytes(n) takes untouched zero pages: the address-space cap is met at once, whatever the
    # machine's page-fault speed (memory that is written to gets there too, only slower)
    "unbounded allocation": ("hog = []\nwhile True:\n    hog.append(bytes(64 << 20))", "",
                             "model-crash", "MemoryError"),
}


@pytest.mark.parametrize("what", list(HOSTILE))
def test_a_hostile_candidate_ends_the_run_with_a_one_line_finding(tmp_path, what):
    body, at_import, cls, named = HOSTILE[what]
    cand, line = candidate(tmp_path, body, at_import)
    r = memslot_fuzz("run", "--arch", "x86-shadow", "--old", "v5.13", "--new", f"{cand}:P",
                     "--max-time", MAX_TIME, "--seed", 1, "--trace-timeout", 1, "--minimize-seconds", 1,
                     "--out", tmp_path / "out", "--report", tmp_path / "report.json",
                     cwd=tmp_path, timeout=MAX_TIME + 30)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr + r.stdout
    finding = [ln for ln in r.stderr.splitlines() if f"NEW {cls} (new wrong)" in ln]
    assert finding, r.stderr[-2000:]
    doc = json.loads((tmp_path / "report.json").read_text())
    mine = [d for d in doc["divergences"] if d["class"] == cls]
    assert mine and all(d["wrong_side"] == "new" and not d["known"] for d in mine)
    d = mine[0]
    assert named in d["detail"]
    if cls == "model-crash":                    # the candidate's own file and line
        assert f"{cand}:{line}" in d["detail"]
    if at_import:
        assert d["op"] == "import" and d["saved"]
    else:                                       # the event it crashed or hung on
        assert d["op"] == "invalidate_range_start"
        assert d["trace"]["events"][d["event_index"]]["op"] == "invalidate_range_start"


@pytest.mark.parametrize("base", ["v5.13", "v5.15"])     # v5.15 runs in task mode
def test_a_hang_names_the_event_it_hung_on(tmp_path, base):
    cand, _ = candidate(tmp_path, "while True:\n    pass", base=base)
    # the timeout covers the worker's start and the events before the hang as well: 0.5 s was
    # met at an earlier event when the machine was loaded
    old, new = contain.side("x86-shadow", base), contain.side("x86-shadow", f"{cand}:P", timeout=2.0)
    res = run_trace(UNMAP, "x86-shadow", old, new, load_known(), keep_observations=True)
    hang = [d for d in res.divergences if d.cls == "model-hang"]
    assert [(d.event_index, d.op, d.wrong_side, d.shape) for d in hang] == [(4, "invalidate_range_start", "new", "timeout")]
    assert "at event 4" in hang[0].detail
    # the events before it ran: their observations are kept, the hanging one is marked
    assert len(res.observations) == 5 and "model-hang" in res.observations[4][1].crashed


def test_a_worker_killed_by_a_signal_is_a_crash_naming_the_signal(tmp_path):
    cand, _ = candidate(tmp_path, "os.kill(os.getpid(), signal.SIGKILL)")
    old, new = contain.side("x86-shadow", "v5.13"), contain.side("x86-shadow", f"{cand}:P")
    res = run_trace(UNMAP, "x86-shadow", old, new, load_known())
    died = [d for d in res.divergences if d.cls == "model-crash"]
    assert [(d.event_index, d.shape) for d in died] == [(4, "died")]
    assert "SIGKILL" in died[0].detail


def test_the_tools_process_never_imports_a_candidate(tmp_path):
    marker = tmp_path / "imported-by"
    cand, _ = candidate(tmp_path, "pass", at_import=f"open({str(marker)!r}, 'a').write(f'{{os.getpid()}}\\n')")
    old, new = contain.side("x86-shadow", "v5.13"), contain.side("x86-shadow", f"{cand}:P")
    known = load_known()
    probe = contain.probe("x86-shadow", old, new, known)
    assert probe.failure is None and probe.address_space_num == 2
    run_trace(UNMAP, "x86-shadow", old, new, known)
    pids = {int(x) for x in marker.read_text().split()}
    assert pids and os.getpid() not in pids
    # this candidate's module is nowhere in this process (other tests in the same worker may
    # load their own candidates in process on purpose, so only this file is looked for)
    assert not [m for m in list(sys.modules.values())
                if str(getattr(m, "__file__", "") or "") == str(cand)]


def test_a_contained_candidate_shows_what_the_model_it_copies_shows(tmp_path):
    # a candidate that changes nothing, contained, against the same model in process
    cand, _ = candidate(tmp_path, "return super().kvm_unmap_gfn_range(range)")
    known = load_known()
    base = Side("v5.12", registry.resolve("x86-shadow", "v5.12"))
    contained = contain.side("x86-shadow", f"{cand}:P")
    ours = Side(f"{cand}:P", registry.resolve("x86-shadow", "v5.13"))
    rng = __import__("random").Random(3)
    cfg = GenConfig(address_space_num=2, x86_shadow_paging=True)
    shown_any = False
    for _ in range(40):
        tr = generate(RandomSource(rng), cfg)
        a = run_trace(tr, "x86-shadow", base, contained, known).divergences
        b = run_trace(tr, "x86-shadow", base, ours, known).divergences
        assert [(d.signature, d.event_index, d.known) for d in a] == [(d.signature, d.event_index, d.known) for d in b]
        shown_any |= bool(a)
    assert shown_any


def test_a_stop_signal_between_request_and_reply_leaves_no_stale_reply(tmp_path):
    # Ctrl-C lands just after a request went to the worker (SIGINT is an exception wherever
    # the main thread is): the next request, e.g. the report's replay for a picture, must get
    # its own answer, not the interrupted run_trace's TraceResult
    from fuzz.details import EventDetail, replay_details
    cand, _ = candidate(tmp_path, "return super().kvm_unmap_gfn_range(range)")
    known = load_known()
    base = Side("v5.12", registry.resolve("x86-shadow", "v5.12"))
    contained = contain.side("x86-shadow", f"{cand}:P")
    run_trace(UNMAP, "x86-shadow", base, contained, known)        # the worker is up
    worker = contain._worker("x86-shadow", base, contained)

    class SendThenInterrupted:
        def __init__(self, conn):
            self.conn, self.once = conn, True

        def send(self, msg):
            self.conn.send(msg)
            if self.once:
                self.once = False
                raise KeyboardInterrupt

        def __getattr__(self, name):
            return getattr(self.conn, name)
    worker.conn = SendThenInterrupted(worker.conn)
    with pytest.raises(KeyboardInterrupt):
        run_trace(UNMAP, "x86-shadow", base, contained, known)
    details = replay_details(UNMAP, base, contained)
    assert [type(d) for d in details] == [EventDetail] * len(UNMAP)
    assert [d.index for d in details] == list(range(len(UNMAP)))


def test_our_own_models_run_in_process(tmp_path):
    contain.shutdown()
    old, new = contain.side("x86-shadow", "v5.12"), contain.side("x86-shadow", "v5.13")
    assert not old.contained and not new.contained
    run_trace(UNMAP, "x86-shadow", old, new, load_known())
    assert not contain._workers


def test_missing_class_is_a_usage_error_and_a_raise_at_import_a_finding(tmp_path):
    cand, _ = candidate(tmp_path, "pass")
    r = memslot_fuzz("run", "--arch", "x86-shadow", "--new", f"{cand}:Nope", "--max-time", 1,
                     "--out", tmp_path / "out", cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and "has no Nope" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    bad, line = candidate(tmp_path, "pass", at_import="raise ValueError('broken patch')", name="bad")
    r = memslot_fuzz("run", "--arch", "x86-shadow", "--new", f"{bad}:P", "--max-time", 1, "--seed", 1,
                     "--out", tmp_path / "out", cwd=tmp_path, timeout=60)
    assert r.returncode == 1
    assert [ln for ln in r.stderr.splitlines() if "NEW model-crash" in ln and f"ValueError: broken patch at {bad}:{line}" in ln]


@pytest.mark.parametrize("engine", ["hypothesis", "random --jobs 2"])
def test_other_engines_contain_a_hanging_candidate(tmp_path, engine):
    cand, _ = candidate(tmp_path, "while True:\n    pass")
    r = memslot_fuzz("run", "--arch", "x86-shadow", "--old", "v5.13", "--new", f"{cand}:P",
                     "--engine", *engine.split(), "--max-time", MAX_TIME, "--seed", 1, "--trace-timeout", 1,
                     "--minimize-seconds", 1, "--out", tmp_path / "out", cwd=tmp_path, timeout=MAX_TIME + 30)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "model-hang" in r.stdout and "Traceback" not in r.stderr


@pytest.mark.parametrize("engine", ["atheris", "exhaustive"])
def test_engines_that_cannot_contain_a_candidate_refuse_it(tmp_path, engine):
    cand, _ = candidate(tmp_path, "pass")
    r = memslot_fuzz("run", "--arch", "x86-shadow", "--new", f"{cand}:P", "--engine", engine,
                     "--max-time", 1, "--out", tmp_path / "out", cwd=tmp_path, timeout=60)
    assert r.returncode == 2
    assert f"--engine {engine} cannot run a candidate" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_replay_and_show_of_a_saved_hang_finish(tmp_path):
    cand, _ = candidate(tmp_path, "while True:\n    pass")
    r = memslot_fuzz("run", "--arch", "x86-shadow", "--old", "v5.13", "--new", f"{cand}:P", "--max-time", 2,
                     "--seed", 1, "--trace-timeout", 1, "--minimize-seconds", 1, "--out", tmp_path / "out",
                     "--stop-on-new", cwd=tmp_path, timeout=60)
    assert r.returncode == 1
    saved = [p for p in (tmp_path / "out" / "x86-shadow").glob("*.json")
             if any(s.startswith("model-hang|") for s in json.loads(p.read_text())["expect"])]
    assert saved
    r = memslot_fuzz("replay", "--trace-timeout", 1, saved[0], cwd=tmp_path, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr
    r = memslot_fuzz("show", "--trace-timeout", 1, saved[0], cwd=tmp_path, timeout=60)
    assert r.returncode == 1 and "model-hang" in r.stdout and "Traceback" not in r.stderr

"""The fuzzing loop's promises: what is reported is already on disk (even under SIGKILL),
Ctrl-C stops cleanly with a summary, parallel workers leave one file per divergence, and
minimization keeps the signature."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from util import HVA, P, fault, host, slot

from fuzz import corpus
from fuzz.engine import Job, minimized
from fuzz.parallel import run_parallel
from fuzz.runner import Side, run_trace
from fuzz.trace import ClearYoung, InvalidateRangeEnd, InvalidateRangeStart, TestYoung
from impls.x86_shadow import X86ShadowV5_12, X86ShadowV5_13
from oracles.triage import load_known

EXE = str(Path(sys.executable).parent / "memslot-fuzz")
CANDIDATE = '''
from impls.x86_shadow import X86ShadowV5_13

class OffByOne(X86ShadowV5_13):
    def kvm_unmap_gfn_range(self, range):
        range.end += 1
        return super().kvm_unmap_gfn_range(range)
'''


def start_run(tmp_path, *extra):
    cand = tmp_path / "cand.py"
    cand.write_text(CANDIDATE)
    return subprocess.Popen([EXE, "run", "--arch", "x86-shadow", "--old", "v5.13", "--new", f"{cand}:OffByOne",
                             "--seed", "5", "--out", str(tmp_path / "out"), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)


def wait_for_line(proc, word, limit=60):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if word in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no {word!r} line from the run")


def test_sigkill_after_a_report_leaves_the_divergence_on_disk(tmp_path):
    proc = start_run(tmp_path, "--max-time", "120")
    try:
        line = wait_for_line(proc, " NEW ")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    path = Path(line.rsplit("-> ", 1)[1].strip())
    cls = line.split(" NEW ", 1)[1].split()[0]
    entry = corpus.load(path)                      # complete and valid
    assert any(s.startswith(cls + "|") for s in entry.expect)
    assert not list((tmp_path / "out").rglob(".tmp-*"))


def test_ctrl_c_stops_cleanly_with_summary(tmp_path):
    proc = start_run(tmp_path, "--max-time", "120", "--report", str(tmp_path / "r.json"))
    wait_for_line(proc, " NEW ")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1                   # it did find something new
    assert "Traceback" not in err and "interrupted" in err
    assert "distinct divergences" in out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["totals"]["interrupted"] and doc["divergences"]
    assert all(Path(d["saved"]).is_file() for d in doc["divergences"])


def test_two_workers_finding_the_same_divergences_leave_one_file_each(tmp_path):
    known = load_known()
    job = Job("x86-shadow", Side("v5.12", X86ShadowV5_12), Side("v5.13", X86ShadowV5_13), 3.0, 9,
              tmp_path, minimize_seconds=2.0)
    res = run_parallel(job, 2, known, quiet=True)
    files = sorted((tmp_path / "x86-shadow").glob("*.json"))
    shown = [tuple(sorted(corpus.load(f).expect)) for f in files]
    assert len(shown) == len(set(shown)), "two files show the same divergences"
    assert {d.signature for d in res.divergences} <= {s for e in shown for s in e}
    assert res.events > 0 and len(res.divergences) == len({d.signature for d in res.divergences})


def test_minimization_keeps_the_signature_and_drops_noise():
    known = load_known()
    job = Job("x86-shadow", Side("v5.12", X86ShadowV5_12), Side("v5.13", X86ShadowV5_13), 1, 0, Path("."))
    noise = [host(HVA, 16, 0x1000), slot(0, 0, 0x100, 4, HVA)] + fault(0, 0x100) + fault(0, 0x101) + \
        [InvalidateRangeStart(HVA, HVA + P), InvalidateRangeEnd(HVA, HVA + P), TestYoung(HVA + P)]
    events = noise + [ClearYoung(HVA + 100 * P, HVA + 101 * P)]
    d = next(x for x in run_trace(events, job.arch, job.old, job.new, known).divergences
             if x.op == "clear_young")
    small = minimized(events, job, known, d, seconds=5)
    assert small.signature == d.signature
    assert len(small.trace) == 1 and small.trace[0].op == "clear_young"


def test_saving_never_replaces_an_existing_entry(tmp_path):
    sig = ["lock-without-hit|x86-shadow|v5.12|v5.13|test_young|old|no-slot-hit"]
    a = corpus.save(corpus.CorpusEntry("x86-shadow", "v5.12", "v5.13", sig, [TestYoung(0)], "first"), tmp_path)
    b = corpus.save(corpus.CorpusEntry("x86-shadow", "v5.12", "v5.13", sig, [TestYoung(4096)], "second"), tmp_path)
    assert a == b and corpus.load(a).note == "first"
    assert os.listdir(tmp_path / "x86-shadow") == [a.name]

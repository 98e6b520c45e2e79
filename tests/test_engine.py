"""The fuzzing loop's promises: what is reported is already on disk (even under SIGKILL),
Ctrl-C stops cleanly with a summary, one file per divergence signature whoever finds it
(workers, runs), one report per run listing everything it found, the same seed and
--max-traces give the same files, and minimization keeps the signature."""
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from util import HVA, P, fault, host, slot

from fuzz import corpus
from fuzz.engines.random_engine import Job, minimized
from fuzz.engines.parallel import run_parallel
from fuzz.runner import Side, run_trace
from language.trace import ClearYoung, InvalidateRangeEnd, InvalidateRangeStart, TestYoung
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
    assert proc.returncode == 130                 # interrupted, although it found something new
    assert "Traceback" not in err and "interrupted" in err
    assert "distinct divergences" in out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["totals"]["interrupted"] and doc["divergences"]
    assert all(Path(d["saved"]).is_file() for d in doc["divergences"])


def saved_for(path: Path) -> str:
    """The signature a run saved this file for (its note ends with it)."""
    return corpus.noted_signature(corpus.load(path).note)


def test_two_workers_finding_the_same_divergences_leave_one_file_per_signature(tmp_path):
    known = load_known()
    job = Job("x86-shadow", Side("v5.12", X86ShadowV5_12), Side("v5.13", X86ShadowV5_13), 3.0, 9,
              tmp_path, minimize_seconds=2.0)
    res = run_parallel(job, 2, known, quiet=True)
    files = sorted((tmp_path / "x86-shadow").glob("*.json"))
    sigs = [saved_for(f) for f in files]
    assert len(sigs) == len(set(sigs)), "two files for one signature"
    assert sorted(sigs) == sorted(d.signature for d in res.divergences)
    for d in res.divergences:
        assert res.saved[d.signature] == corpus.path_for(tmp_path, "x86-shadow", d.signature)
    assert res.events > 0 and len(res.divergences) == len({d.signature for d in res.divergences})


SIG = "lock-without-hit|x86-shadow|v5.12|v5.13|test_young|old|no-slot-hit"
OTHER = "spurious-flush|x86-shadow|v5.12|v5.13|change_pte|new|no-slot-hit"


def test_one_divergence_with_two_different_minimized_traces_leaves_one_file(tmp_path):
    # what the two traces show differs, so a name derived from what they show would give two files
    a = corpus.CorpusEntry("x86-shadow", "v5.12", "v5.13", [SIG], [TestYoung(0)], "first: " + SIG)
    b = corpus.CorpusEntry("x86-shadow", "v5.12", "v5.13", [SIG, OTHER], [TestYoung(4096)], "second: " + SIG)
    pa, created_a = corpus.save_divergence_entry(a, tmp_path, SIG)
    pb, created_b = corpus.save_divergence_entry(b, tmp_path, SIG)
    assert (created_a, created_b) == (True, False) and pa == pb
    assert os.listdir(tmp_path / "x86-shadow") == [pa.name]
    assert corpus.load(pa).note == "first: " + SIG


def _race(directory: str, k: int, barrier, results) -> None:
    entry = corpus.CorpusEntry("x86-shadow", "v5.12", "v5.13", [SIG], [TestYoung(4096 * k)], f"worker {k}")
    barrier.wait()
    path, created = corpus.save_divergence_entry(entry, Path(directory), SIG)
    results.put((k, str(path), created))


def test_workers_racing_to_save_one_signature_leave_one_complete_file(tmp_path):
    ctx = multiprocessing.get_context("fork")
    n = 8
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), k, barrier, results)) for k in range(n)]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    winners = [k for k, _, created in got if created]
    assert len(winners) == 1 and len({path for _, path, _ in got}) == 1
    assert os.listdir(tmp_path / "x86-shadow") == [corpus.signature_name(SIG)]   # no temp files left
    entry = corpus.load(Path(got[0][1]))
    assert entry.note == f"worker {winners[0]}" and entry.events == [TestYoung(4096 * winners[0])]


def run_cli(tmp_path, *args, cwd=None):
    return subprocess.run([EXE, "run", *args], capture_output=True, text=True, cwd=cwd or tmp_path, timeout=600)


def test_same_seed_and_max_traces_give_byte_identical_findings(tmp_path):
    args = ["--arch", "mips", "--old", "v5.12", "--new", "v5.13", "--seed", "4",
            "--max-traces", "40", "--minimize-attempts", "300", "--quiet"]
    runs = []
    for name in ("a", "b"):
        r = run_cli(tmp_path, *args, "--out", name, "--report", f"{name}.json")
        assert r.returncode == 0, r.stderr
        files = {p.relative_to(tmp_path / name): p.read_bytes()      # traces and their pictures
                 for p in sorted((tmp_path / name).rglob("*")) if p.is_file()}
        sigs = {d["signature"] for d in json.loads((tmp_path / f"{name}.json").read_text())["divergences"]}
        runs.append((files, sigs))
    (files_a, sigs_a), (files_b, sigs_b) = runs
    assert files_a and sigs_a
    assert files_a == files_b and sigs_a == sigs_b
    assert len([f for f in files_a if f.suffix == ".json"]) == len(sigs_a)    # one trace per signature


def test_max_traces_with_jobs_gives_the_same_signatures_every_time(tmp_path):
    args = ["--arch", "mips", "--seed", "6", "--max-traces", "40", "--minimize-attempts", "200",
            "--jobs", "2", "--quiet"]
    sigs = []
    for name in ("a", "b"):
        r = run_cli(tmp_path, *args, "--out", name, "--report", f"{name}.json")
        assert r.returncode == 0, r.stderr
        doc = json.loads((tmp_path / f"{name}.json").read_text())
        assert doc["totals"]["traces"] == 40                # the workers' shares add up to N
        sigs.append({d["signature"] for d in doc["divergences"]})
    assert sigs[0] and sigs[0] == sigs[1]


def test_max_traces_is_refused_where_it_cannot_make_a_run_reproducible(tmp_path):
    r = run_cli(tmp_path, "--arch", "mips", "--engine", "hypothesis", "--max-traces", "5")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "--max-traces" in r.stderr


def test_a_run_never_overwrites_another_runs_report_unless_forced(tmp_path):
    args = ["--arch", "mips", "--seed", "1", "--max-traces", "5", "--quiet", "--out", "out", "--report", "r.json"]
    assert run_cli(tmp_path, *args).returncode == 0
    first = (tmp_path / "r.json").read_bytes()
    r = run_cli(tmp_path, *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "--force-report" in r.stderr
    assert "events" not in r.stdout                     # refused before the run started
    assert (tmp_path / "r.json").read_bytes() == first
    r = run_cli(tmp_path, *args, "--force-report")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["seed"] == 1


def test_a_run_reports_what_an_earlier_run_already_saved_in_its_out(tmp_path):
    args = ["--arch", "mips", "--seed", "2", "--max-traces", "30", "--minimize-attempts", "200", "--quiet",
            "--out", "out"]
    assert run_cli(tmp_path, *args, "--report", "a.json").returncode == 0
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*.json")}
    assert run_cli(tmp_path, *args, "--report", "b.json").returncode == 0
    a = json.loads((tmp_path / "a.json").read_text())["divergences"]
    b = json.loads((tmp_path / "b.json").read_text())["divergences"]
    assert a and {d["signature"] for d in a} == {d["signature"] for d in b}
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*.json")} == before   # nothing new saved


def test_atheris_reports_what_an_earlier_run_already_saved_in_its_out(tmp_path):
    pytest.importorskip("atheris")
    args = ["--engine", "atheris", "--arch", "ppc-hv-hash", "--old", "v5.13-rc1", "--new", "v5.13",
            "--seed", "1", "--max-time", "8", "--quiet", "--out", "out"]
    r = run_cli(tmp_path, *args, "--report", "a.json")
    assert r.returncode in (0, 1), r.stderr
    saved = {p.name for p in (tmp_path / "out" / "ppc-hv-hash").glob("*.json")}
    assert saved
    r = run_cli(tmp_path, *args, "--report", "b.json")
    assert r.returncode in (0, 1), r.stderr
    b = json.loads((tmp_path / "b.json").read_text())["divergences"]
    # the warm start replays corpus/ppc-hv-hash, so the second run meets what the first saved
    again = {Path(d["saved"]).name for d in b} & saved
    assert again, "the second run's report leaves out what the first run saved"
    for d in b:
        assert Path(d["saved"]).name == corpus.signature_name(d["signature"])


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

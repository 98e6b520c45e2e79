"""How a run ends: SIGINT and SIGTERM stop it with the summary and the report written and exit
130 and 143 (whichever engine, with or without --jobs), and no worker outlives the run, even
when the run itself is killed with SIGKILL."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fuzz import lifetime

EXE = str(Path(sys.executable).parent / "memslot-fuzz")


def start(tmp_path, *args):
    return subprocess.Popen([EXE, "run", "--seed", "3", "--out", str(tmp_path / "out"),
                             "--report", str(tmp_path / "r.json"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)


def wait_for(proc, word, limit=90):
    """Read the run's stderr until a line with `word` (the run is past its set-up)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if word in line:
            return line
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"no {word!r} line from the run")


def children(pid: int) -> set[int]:
    """Every live descendant of `pid` (from /proc)."""
    parent_of = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent_of[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for c, pp in parent_of.items():
            if pp == p and c not in out:
                out.add(c)
                todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def gone_within(pids: set[int], limit: float) -> set[int]:
    """The pids still alive after waiting up to `limit` seconds for all of them to end."""
    deadline = time.monotonic() + limit
    left = set(pids)
    while left and time.monotonic() < deadline:
        left = {p for p in left if alive(p)}
        time.sleep(0.2)
    return left


def check_stopped(proc, tmp_path, sig, code):
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err and "interrupted" in err
    assert "distinct divergences" in out                 # the summary
    doc = json.loads((tmp_path / "r.json").read_text())  # the report
    assert doc["totals"]["interrupted"] is True
    assert all(Path(d["saved"]).is_file() for d in doc["divergences"])
    return doc


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_random_engine_stops_on_a_signal_with_summary_report_and_its_exit_code(tmp_path, sig, code):
    proc = start(tmp_path, "--arch", "x86-shadow", "--max-time", "300")
    wait_for(proc, " known ")                             # something found and saved
    doc = check_stopped(proc, tmp_path, sig, code)
    assert doc["divergences"]


def test_sigterm_to_the_parent_alone_stops_jobs_workers_and_they_report(tmp_path):
    proc = start(tmp_path, "--arch", "x86-shadow", "--max-time", "300", "--jobs", "2")
    wait_for(proc, "2 jobs")
    workers = children(proc.pid)
    assert len(workers) >= 2
    doc = check_stopped(proc, tmp_path, signal.SIGTERM, 143)
    assert doc["totals"]["traces"] > 0                    # the workers' results reached the report
    assert not gone_within(workers, 30)


@pytest.mark.parametrize("engine", ["hypothesis", "exhaustive"])
def test_other_engines_stop_on_sigterm_with_143(tmp_path, engine):
    extra = ["--jobs", "2", "--slots", "2"] if engine == "exhaustive" else []
    proc = start(tmp_path, "--arch", "mips", "--max-time", "300", "--engine", engine, *extra)
    wait_for(proc, "events" if engine == "hypothesis" else "checks")
    workers = children(proc.pid)
    check_stopped(proc, tmp_path, signal.SIGTERM, 143)
    assert not gone_within(workers, 30)


@pytest.mark.parametrize("engine,word", [("random", "2 jobs"), ("exhaustive", "checks")])
def test_sigkill_of_the_run_ends_its_workers(tmp_path, engine, word):
    extra = ["--slots", "2"] if engine == "exhaustive" else []
    proc = start(tmp_path, "--arch", "mips", "--max-time", "300", "--engine", engine, "--jobs", "2", *extra)
    try:
        wait_for(proc, word)
        workers = children(proc.pid)
        assert len(workers) >= 2
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    left = gone_within(workers, 30)
    for p in left:                     # do not leave them running if the test fails
        os.kill(p, signal.SIGKILL)
    assert not left, f"workers outlived the killed run: {sorted(left)}"


def test_sigkill_of_an_atheris_run_ends_libfuzzer_and_its_fork_mode_workers(tmp_path):
    pytest.importorskip("atheris")
    proc = start(tmp_path, "--arch", "mips", "--max-time", "300", "--engine", "atheris", "--jobs", "2")
    try:
        deadline = time.monotonic() + 90
        workers: set[int] = set()
        while time.monotonic() < deadline:    # the launched target, its shells and its workers
            workers = children(proc.pid)
            if len(workers) >= 5:
                break
            time.sleep(0.5)
        assert len(workers) >= 5, "libFuzzer's fork mode did not start its workers"
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    left = gone_within(workers, 30)
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes outlived the killed run: {sorted(left)}"


def test_a_worker_whose_parent_died_before_die_with_parent_ends_at_once():
    # the race getppid() closes: the parent is gone before the worker asks for its death signal
    r, w = os.pipe()
    middle = os.fork()
    if middle == 0:                       # the parent-to-be: forks the worker, then exits
        os.close(r)
        mid = os.getpid()
        worker = os.fork()
        if worker == 0:
            while os.getppid() == mid:    # until the parent is gone
                time.sleep(0.05)
            lifetime.die_with_parent(mid)
            os.write(w, b"survived")
            os._exit(0)
        os.write(w, str(worker).encode().ljust(16))
        os._exit(0)
    os.close(w)
    os.waitpid(middle, 0)
    worker = int(os.read(r, 16).decode())
    assert not gone_within({worker}, 30)
    assert os.read(r, 16) == b""          # the worker never wrote "survived"
    os.close(r)


def test_ci_mode_stops_on_sigterm_with_its_summary_and_143(tmp_path):
    pytest.importorskip("atheris")
    proc = subprocess.Popen([EXE, "ci", "--mode", "code-change", "--seconds", "300", "--arch", "mips",
                             "--state", str(tmp_path / "state"), "--out", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    wait_for(proc, "traces")
    workers = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "(interrupted)" in out
    assert not gone_within(workers, 30)


def test_the_hypothesis_engine_ends_on_a_stop_signal_whose_interrupt_was_swallowed(tmp_path, monkeypatch):
    # fuzz/lifetime.py raises Interrupted for the first stop signal only; should hypothesis's
    # own code catch that one exception, the engine must still end (it ran on to --max-time)
    import time
    from fuzz import lifetime
    from fuzz.engines.hypothesis_engine import run_hypothesis
    from fuzz.engines.random_engine import Job
    from fuzz.runner import Side
    from impls import registry
    from oracles.triage import load_known
    monkeypatch.setattr(lifetime, "_received", [signal.SIGTERM])     # received, its raise lost
    job = Job("mips", Side("v5.12", registry.resolve("mips", "v5.12")),
              Side("v5.13", registry.resolve("mips", "v5.13")), 300.0, 1, tmp_path)
    t0 = time.monotonic()
    res = run_hypothesis(job, load_known())
    assert res.interrupted and time.monotonic() - t0 < 30

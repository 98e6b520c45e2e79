"""The one worker pool (fuzz/engines/parallel.py run_pool) that every engine's --jobs goes
through: every result arrives, a worker that dies or raises is reported and costs only its
task, workers die with the parent however it dies, a stop signal is passed on and what the
workers return is still collected, and the deadline stops the pool."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fuzz.engines import exhaustive, parallel
from fuzz.engines.parallel import run_pool
from fuzz.engines.random_engine import Job
from fuzz.runner import Side
from impls import registry
from oracles.triage import load_known

ROOT = Path(__file__).resolve().parent.parent


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def gone_within(pids, limit: float) -> set[int]:
    deadline = time.monotonic() + limit
    left = set(pids)
    while left and time.monotonic() < deadline:
        left = {p for p in left if alive(p)}
        time.sleep(0.1)
    return left


def test_every_result_and_every_report_arrives_from_every_worker():
    results, reports = {}, []

    def work(t, report):
        report(("working", t))
        return t * t, os.getpid()

    run = run_pool(2, 20, work, on_result=results.__setitem__,
                   on_progress=lambda t, p: reports.append((t, p, t in results)))
    assert run.done == 20 and not run.lost and not run.unrun and not run.interrupted
    assert {t: sq for t, (sq, _) in results.items()} == {t: t * t for t in range(20)}
    assert {pid for _, pid in results.values()} == set(run.pids) and len(run.pids) == 2
    # a worker's report reaches the parent before the result of the same task
    assert sorted(t for t, _, _ in reports) == list(range(20))
    assert all(p == ("working", t) and not before for t, p, before in reports)
    assert not gone_within(run.pids, 10)                 # every worker has ended


def test_worker_k_starts_with_task_k():
    first = {}

    def work(t, report):
        return os.getpid()

    run = run_pool(3, 3, work, on_result=first.__setitem__, prefetch=1, restarts=0)
    assert [first[k] for k in range(3)] == run.pids      # the random engine's seeds rely on it


def test_a_worker_that_dies_is_reported_and_costs_only_its_task():
    results = {}

    def work(t, report):
        if t == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return t

    run = run_pool(2, 10, work, on_result=results.__setitem__)
    assert sorted(results) == [t for t in range(10) if t != 3]      # a replacement ran the rest
    assert [(x.task, x.kind, x.why) for x in run.lost] == [(3, "died", "killed by SIGKILL")]
    assert run.failures() == run.lost and not run.unrun


def test_a_worker_that_raises_or_cannot_send_its_result_is_reported():
    results = {}

    def work(t, report):
        if t == 1:
            raise ValueError("no such layout")
        if t == 2:
            return lambda: None          # pickle cannot send it
        if t == 4:
            sys.exit(3)                  # SystemExit is the task's failure, not the worker's end
        return t

    run = run_pool(2, 6, work, on_result=results.__setitem__)
    assert sorted(results) == [0, 3, 5]
    lost = {x.task: x for x in run.lost}
    assert lost[1].kind == "raised" and lost[1].why == "ValueError: no such layout"
    assert "Traceback" in lost[1].detail and "no such layout" in lost[1].detail
    assert lost[2].kind == "unsent" and "result not sent" in lost[2].why
    assert lost[4].kind == "raised" and lost[4].why.startswith("SystemExit")
    assert run.workers == 2                              # nobody died


def test_the_losses_are_said_on_stderr(capsys):
    run = run_pool(1, 2, lambda t, report: 1 / t, on_result=lambda t, r: None)
    parallel.say_losses("mips", run, "layout {}".format)
    err = capsys.readouterr().err
    assert "memslot-fuzz: mips: worker 0 lost layout 0: raised: ZeroDivisionError" in err
    assert "Traceback" in err and "lost layout 1" not in err


def test_the_deadline_stops_the_pool_and_cuts_what_still_runs():
    results = {}

    def work(t, report):
        if t == 0:                       # one that watches the deadline and returns its part
            while time.monotonic() < deadline:
                time.sleep(0.01)
            return "partial"
        time.sleep(600)                  # one that does not: killed after the grace

    deadline = time.monotonic() + 1.0
    t0 = time.monotonic()
    run = run_pool(2, 50, work, on_result=results.__setitem__, deadline=deadline, grace=0.5)
    took = time.monotonic() - t0
    assert took < 10
    assert run.deadline and not run.interrupted
    assert results == {0: "partial"}
    assert [(x.task, x.kind) for x in run.lost] == [(1, "cut")] and not run.failures()
    assert sorted(run.unrun) == list(range(2, 50))       # never started
    assert not gone_within(run.pids, 10)


def test_a_deadline_already_past_starts_nothing():
    run = run_pool(2, 5, lambda t, report: t, on_result=lambda t, r: pytest.fail("ran"),
                   deadline=time.monotonic() - 1)
    assert run.deadline and sorted(run.unrun) == list(range(5)) and not run.lost


SCRIPT = textwrap.dedent("""
    import os, sys, time
    from fuzz import lifetime
    from fuzz.engines.parallel import run_pool

    def work(t, report):
        try:                             # a stop signal during report() is raised as it returns
            report(os.getpid())
            while True:
                time.sleep(0.05)
        except KeyboardInterrupt:        # a stop signal: return what it has
            return f"task {t} stopped cleanly"

    def told(t, pid):
        print("worker", pid, flush=True)

    lifetime.install_stop_handlers()
    results = {}
    run = run_pool(2, 2, work, on_result=results.__setitem__, on_progress=told)
    print("results", sorted(results.values()), flush=True)
    print("interrupted", run.interrupted, run.stop_signal, flush=True)
    print("lost", run.lost, run.unrun, flush=True)
""")


def start_script(tmp_path):
    return subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def read_workers(proc, n=2, limit=60):
    pids, deadline = [], time.monotonic() + limit
    while len(pids) < n and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("worker "):
            pids.append(int(line.split()[1]))
    if len(pids) < n:
        proc.kill()
        raise AssertionError(f"the pool did not start its workers: {proc.stderr.read()[-2000:]}")
    return pids


def test_workers_die_when_the_parent_is_killed_with_sigkill(tmp_path):
    proc = start_script(tmp_path)
    try:
        pids = read_workers(proc)
        assert all(alive(p) for p in pids)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    left = gone_within(pids, 30)
    for p in left:                       # do not leave them running if the test fails
        os.kill(p, signal.SIGKILL)
    assert not left, f"workers outlived the killed parent: {sorted(left)}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_to_the_parent_alone_reaches_the_workers_and_their_results_arrive(tmp_path, sig):
    proc = start_script(tmp_path)
    pids = read_workers(proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "results ['task 0 stopped cleanly', 'task 1 stopped cleanly']" in out
    assert f"interrupted True {int(sig)}" in out
    assert not gone_within(pids, 10)


def test_both_engines_go_through_the_pool(tmp_path, monkeypatch):
    calls = []
    real = parallel.run_pool

    def spy(jobs, tasks, work, **kw):
        run = real(jobs, tasks, work, **kw)
        calls.append((jobs, tasks, run.done))
        return run
    monkeypatch.setattr(parallel, "run_pool", spy)
    known = load_known()
    old, new = (Side(v, registry.resolve("mips", v)) for v in ("v5.12", "v5.13"))
    job = Job("mips", old, new, 60, 1, tmp_path / "out", max_traces=6, minimize_attempts=20)
    merged = parallel.run_parallel(job, 2, known, quiet=True)
    assert calls == [(2, 2, 2)] and merged.traces == 6
    divs, stats = exhaustive.run_exhaustive("mips", old, new, known, max_slots=1, max_pages=2,
                                            minimize_seconds=0, jobs=2)
    assert len(calls) == 2 and calls[1] == (2, stats.layouts_total, stats.layouts_total)
    assert stats.complete and divs
    # the exhaustive engine has no pool of its own any more
    assert "multiprocessing" not in Path(exhaustive.__file__).read_text()


def test_a_random_engine_worker_that_dies_costs_only_its_seed(tmp_path, monkeypatch, capsys):
    real = parallel.run_job

    def second_dies(job, known, progress=None, seen=None):
        if job.seed != 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(job, known, progress, seen)
    monkeypatch.setattr(parallel, "run_job", second_dies)     # the forked workers inherit it
    old, new = (Side(v, registry.resolve("mips", v)) for v in ("v5.12", "v5.13"))
    job = Job("mips", old, new, 60, 1, tmp_path / "out", max_traces=6, minimize_attempts=20)
    merged = parallel.run_parallel(job, 2, load_known(), quiet=True)
    assert merged.traces == 3 and merged.job is job               # worker 0's half arrived
    err = capsys.readouterr().err
    assert f"worker 1 lost its run (seed {1 + parallel.SEED_STRIDE}): died: killed by SIGKILL" in err
    assert "1 of 2 workers ended without a result" in err

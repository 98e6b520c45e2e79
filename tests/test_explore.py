"""Bounded exhaustive schedules (fuzz/engines/explore.py): hand-counted trees, the bugs of
tests/test_tasks.py found from their programs without a schedule, exact replay of every
explored directive, and the `explore` command."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fuzz import cli
from fuzz.engines.explore import (exits_commute, explore, explore_side, is_skip, program_tasks, replay_choices,
                          strip_schedule)
from fuzz.runner import Side, run_trace
from impls import registry
from language.trace import (GuestAccess, HostMap, InvalidateRangeEnd, InvalidateRangeStart, Release, Schedule,
                        SetMemoryRegion, dumps, load, loads)
from language.wellformed import check_well_formed
from test_tasks import KNOWN, YIELD, H, P, no_flush_yield, side

# Two tasks, two events each, on x86-shadow v5.13.  mm0's invalidate_range_start has three
# scheduling points inside it (before mmap_lock for read, before mmu_lock, after its release)
# and so has its range_end (before mmu_lock, after its release, after mmap_lock's release);
# a guest access takes no lock, so vcpu0's events have none.  The points after mm0's last
# event and vcpu0's exits are not branched on (no release in the program: exits commute).
TWO_BY_TWO = [InvalidateRangeStart(H, H + P, task="mm0"), InvalidateRangeEnd(H, H + P, task="mm0"),
              GuestAccess(0, 0x100, task="vcpu0"), GuestAccess(0, 0x101, task="vcpu0")]


def test_two_tasks_two_events_each_counted_by_hand():
    # vcpu0's two atomic accesses go, in order, into one of 9 places in mm0's run: before its
    # first event, at its 3 inner points, between its events, at the 3 inner points of the
    # second, after it.  An inner place costs one preemption (returning to mm0 at vcpu0's event
    # boundary is free), however many accesses it takes.
    #   K=0: both in the 3 outer places: C(3+1, 2) = 6 (the C(4,2) event orders)
    #   K=1: + both in one inner place (6) + one inner and one outer (6 * 3 = 18) = 30
    #   K=2: + two different inner places C(6, 2) = 15 = 45, every placement: C(9+1, 2) = 45
    v513 = side("x86-shadow", "v5.13")
    for bound, count in ((0, 6), (1, 30), (2, 45), (3, 45)):
        ex = explore_side(TWO_BY_TWO, "x86-shadow", v513, bound)
        assert (len(ex.schedules), ex.status) == (count, "complete")
        assert all(s.preemptions["side"] <= bound for s in ex.schedules)
        assert len({s.choices["side"] for s in ex.schedules}) == count       # all different runs
        assert len({s.key for s in ex.schedules}) == count
        # both sides the same model: one tree, every directive compared once
        both = explore(TWO_BY_TWO, "x86-shadow", v513, v513, KNOWN, bound)
        assert [s.key for s in both.schedules] == [s.key for s in ex.schedules]
        assert not any(s.result.divergences for s in both.schedules)
    ex = explore_side(TWO_BY_TWO, "x86-shadow", v513, 2)
    assert ex.schedules[0].key == ()                      # the default schedule first
    depths = [len(s.key) for s in ex.schedules]
    assert depths == sorted(depths)                       # one departure before any two


def test_every_explored_directive_replays_its_choices_exactly():
    v513, v1 = side("x86-shadow", "v5.13"), side("x86-shadow", "series-v1")
    for s in explore_side(TWO_BY_TWO, "x86-shadow", v513, 2).schedules:
        trace = loads(dumps([s.directive] + TWO_BY_TWO))      # through the saved form too
        assert replay_choices(trace, "x86-shadow", v513) == s.choices["side"]
    # two sides that block at different points: each side replays what it did under every
    # directive of either side's tree
    ex = explore(DEADLOCK_LATE, "x86-shadow", v513, v1, KNOWN, 1)
    assert ex.complete and len(ex.schedules) > 20
    for s in ex.schedules:
        trace = [s.directive] + DEADLOCK_LATE
        assert replay_choices(trace, "x86-shadow", v513) == s.choices["old"]
        assert replay_choices(trace, "x86-shadow", v1) == s.choices["new"]


def test_tdp_yield_bug_found_from_the_program_without_a_schedule():
    assert not any(isinstance(e, Schedule) for e in YIELD)
    cand = no_flush_yield()
    shape = "guest_access|new|guest-used-zapped-translation-while-mmu_lock-dropped"
    # K=0 (every order of the events, nothing preempted) cannot show it: the access must run
    # while the zap has dropped mmu_lock inside invalidate_range_start.  Cut at 200 schedules,
    # which covers every single departure from the default schedule.
    none = explore(YIELD, "x86-tdp", side("x86-tdp", "v5.13"), cand, KNOWN, 0, max_schedules=200)
    assert not any(d.signature.endswith(shape) for d, _ in none.findings())
    runs = []
    for _ in range(2):
        ex = explore(YIELD, "x86-tdp", side("x86-tdp", "v5.13"), cand, KNOWN, 1, max_schedules=60)
        assert ex.status.startswith("cut at 60, complete through 1 departure")
        hits = [(d, s) for d, s in ex.findings() if d.signature.endswith(shape)]
        assert len(hits) == 1
        runs.append([s.key for s in ex.schedules])
        d, sched = hits[0]
    assert runs[0] == runs[1]                             # deterministic
    assert d.cls == "missed-flush" and not d.known
    assert len(sched.preempt) == 1 and sched.preempt[0][1] == "vcpu0"
    # the directive replays the bug; the real v5.13 flushes before it yields
    trace = [sched] + YIELD
    assert any(x.signature.endswith(shape) for x in run_trace(trace, "x86-tdp", side("x86-tdp", "v5.13"),
                                                                cand, KNOWN).divergences)
    assert not run_trace(trace, "x86-tdp", side("x86-tdp", "v5.13"), side("x86-tdp", "v5.13"), KNOWN).divergences


# The program of test_tasks.DEADLOCK (the vCPU's fault left out), with the second memslot
# update last: the default schedule runs it after mm0's invalidations and nothing happens.
DEADLOCK_LATE = [HostMap(H, 16 * P, 0x1000, task="mm0"),
                 SetMemoryRegion(0, 0, 0, 0x100000, 16 * P, H, task="ioctl"),
                 InvalidateRangeStart(H, H + 4 * P, task="mm0"),
                 InvalidateRangeStart(H, H + 2 * P, task="mm0"), InvalidateRangeEnd(H, H + 2 * P, task="mm0"),
                 InvalidateRangeEnd(H, H + 4 * P, task="mm0"),
                 SetMemoryRegion(0, 1, 0, 0x200000, 4 * P, H + 0x100000, task="ioctl")]
DEADLOCK_SHAPE = "invalidate_range_start|new|wait-for-cycle:mmu_notifier_slots_lock"


def test_series_v1_deadlock_found_by_exploring_event_orders():
    check_well_formed(DEADLOCK_LATE)
    v513, v1 = side("x86-shadow", "v5.13"), side("x86-shadow", "series-v1")
    sigs = lambda trace: {d.signature.split("|", 4)[4] for d in run_trace(trace, "x86-shadow", v513, v1,
                                                                          KNOWN).divergences}
    assert DEADLOCK_SHAPE not in sigs(DEADLOCK_LATE)
    ex = explore(DEADLOCK_LATE, "x86-shadow", v513, v1, KNOWN, 0)
    assert ex.complete
    got = {d.signature.split("|", 4)[4]: (d, s) for d, s in ex.findings()}
    d, sched = got[DEADLOCK_SHAPE]
    assert d.cls == "deadlock" and d.known
    # one free departure: mm0 opens its invalidation before the ioctl's first update (a choice
    # at an event boundary, no preemption), and then the default order runs an update inside it
    assert len(sched.preempt) == 1
    assert next(s for s in ex.schedules if s.key == sched.preempt).preemptions == {"old": 0, "new": 0}
    assert DEADLOCK_SHAPE in sigs([sched] + DEADLOCK_LATE)
    # the same orders on v5.13 on both sides: no deadlock anywhere
    assert not any(s.result.divergences for s in explore(DEADLOCK_LATE, "x86-shadow", v513, v513, KNOWN, 0).schedules)


def test_cap_seed_and_exits():
    v513 = side("x86-shadow", "v5.13")
    full = explore_side(TWO_BY_TWO, "x86-shadow", v513, 2, max_schedules=1000, seed=5)
    assert full.complete
    assert {s.key for s in full.schedules} == {s.key for s in explore_side(TWO_BY_TWO, "x86-shadow", v513, 2).schedules}
    cut = [explore_side(TWO_BY_TWO, "x86-shadow", v513, 2, max_schedules=10) for _ in range(2)]
    assert cut[0].status == "cut at 10, complete through 1 departure from the default schedule"
    assert [s.key for s in cut[0].schedules] == [s.key for s in cut[1].schedules]
    assert exits_commute(TWO_BY_TWO) == {"mm0": 2, "vcpu0": 2}
    assert exits_commute(TWO_BY_TWO + [Release(task="mm0")]) is None
    assert program_tasks(TWO_BY_TWO) == ["mm0", "vcpu0"]
    assert program_tasks([HostMap(H, P, 1), InvalidateRangeStart(H, H + P), InvalidateRangeEnd(H, H + P)]) == ["main"]
    assert strip_schedule([Schedule(preempt=((1, "mm0"),))] + TWO_BY_TWO) == TWO_BY_TWO


# ----- the command ----------------------------------------------------------------------------
def explore_cli(*args):
    return cli.main(["explore"] + [str(a) for a in args])


def test_explore_command_reports_every_divergence_with_its_schedule(tmp_path, capsys):
    path = tmp_path / "t.json"
    path.write_text(dumps([Schedule(preempt=((3, "mm0"),))] + DEADLOCK_LATE))
    rc = explore_cli(path, "--old", "v5.13", "--new", "series-v1", "--preemptions", 0, "--out", tmp_path / "o")
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "2 tasks (ioctl, mm0), up to 0 preemptions:" in out and "schedules, complete" in out
    assert "known deadlock (new wrong)" in out and "wait-for-cycle:mmu_notifier_slots_lock" in out
    line = next(x for x in out.splitlines() if "schedule {" in x)
    assert json.loads(line.split("schedule ", 1)[1])["op"] == "schedule"
    rc = explore_cli(path, "--old", "v5.13", "--new", "series-v1", "--preemptions", 2, "--max-schedules", 7,
                     "--out", tmp_path / "o")
    assert rc == 0 and "7 schedules, cut at 7" in capsys.readouterr().out


NO_FLUSH_YIELD = """
from impls import registry

class NoFlushYield(registry.resolve("x86-tdp", "v5.13")):
    def iter_cond_resched(self, flush):
        self.resched_lock()
"""


def test_explore_command_saves_a_new_divergence_and_exits_1(tmp_path, capsys):
    # a candidate file, explored through its worker: the yield that does not flush first
    (tmp_path / "patch.py").write_text(NO_FLUSH_YIELD)
    path = tmp_path / "y.json"
    path.write_text(dumps(YIELD))
    rc = explore_cli(path, "--arch", "x86-tdp", "--old", "v5.13", "--new", f"{tmp_path}/patch.py:NoFlushYield",
                     "--preemptions", 1, "--max-schedules", 60, "--minimize-attempts", 50, "--out", tmp_path / "o")
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "NEW missed-flush (new wrong)" in out and "cut at 60" in out
    saved = list((tmp_path / "o" / "x86-tdp").glob("*.json"))
    assert len(saved) == 1 and f"saved {saved[0]}" in out
    # through the worker, the same schedules and findings as the same class in process
    from fuzz.contain import side as contained
    (tmp_path / "patch.py").write_text(NO_FLUSH_YIELD)
    cand = contained("x86-tdp", f"{tmp_path}/patch.py:NoFlushYield")
    tail = lambda ex: ([s.key for s in ex.schedules],
                       [(d.signature.split("|", 4)[4], sched) for d, sched in ex.findings()])
    assert tail(explore(YIELD, "x86-tdp", side("x86-tdp", "v5.13"), cand, KNOWN, 1, 60)) == \
        tail(explore(YIELD, "x86-tdp", side("x86-tdp", "v5.13"), no_flush_yield(), KNOWN, 1, 60))


HANGS_UNLESS_IT_YIELDS = """
from impls import registry

class HangsUnlessItYields(registry.resolve("x86-tdp", "v5.13")):
    def need_resched(self):
        if not super().need_resched():
            while True:
                pass
        return True
"""


def test_explore_a_candidate_that_hangs_in_some_schedules(tmp_path):
    # the default schedule answers need_resched() yes and ends; the schedule that skips the
    # zap's one yield hangs in the worker: it is reported (model-hang, new side) and not
    # expanded, and every other schedule still runs
    from fuzz.contain import side as contained
    (tmp_path / "hang.py").write_text(HANGS_UNLESS_IT_YIELDS)
    cand = contained("x86-tdp", f"{tmp_path}/hang.py:HangsUnlessItYields", timeout=1.0)
    prog = [e for e in YIELD if not isinstance(e, GuestAccess)]
    v513 = side("x86-tdp", "v5.13")
    ex = explore(prog, "x86-tdp", v513, cand, KNOWN, 0, skipped_yields=1)
    assert ex.complete
    hung = [s for s in ex.schedules if any(d.cls == "model-hang" and d.wrong_side == "new"
                                           for d in s.result.divergences)]
    assert hung and all(s.choices["new"] == () and any(is_skip(e) for e in s.key) for s in hung)
    assert not any(d.cls == "model-hang" for s in ex.schedules if s not in hung for d in s.result.divergences)


def exit_code(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as e:          # argparse's own errors
        return e.code


@pytest.mark.parametrize("args, message", [
    (["--preemptions", "-1"], "argument --preemptions: must be an integer at least 0"),
    (["--new", "my_patch.py:P"], "candidate 'my_patch.py:P': no such file my_patch.py"),
    (["--max-schedules", "0"], "argument --max-schedules: must be an integer at least 1"),
])
def test_explore_usage_errors_are_one_line(tmp_path, capsys, args, message):
    path = tmp_path / "t.json"
    path.write_text(dumps(DEADLOCK_LATE))
    assert exit_code(["explore", str(path), *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_explore_input_errors_and_one_task(tmp_path, capsys):
    assert explore_cli(tmp_path / "missing.json", "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "missing.json" in err and err.count("\n") == 1
    one = tmp_path / "one.json"
    one.write_text(dumps([HostMap(H, P, 1), InvalidateRangeStart(H, H + P), InvalidateRangeEnd(H, H + P)]))
    assert explore_cli(one, "--out", tmp_path / "o") == 0
    out = capsys.readouterr().out
    assert out.strip() == (f"explore {one}: one task (main): nothing to explore "
                           "(--skipped-yields K explores where its walks yield)")


def test_run_with_exhaustive_schedules(tmp_path, capsys):
    rc = cli.main(["run", "--arch", "x86-shadow", "--old", "v5.13", "--new", "series-v1", "--schedules", "exhaustive",
                   "--preemptions", "1", "--max-schedules", "15", "--max-traces", "3", "--max-events", "6",
                   "--seed", "4", "--out", str(tmp_path / "o"), "--quiet", "--max-time", "120"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "exhaustive schedules x86-shadow: 3 programs of several tasks" in err
    for bad, message in ((["--preemptions", "1"], "--preemptions: only with --schedules exhaustive"),
                         (["--schedules", "exhaustive", "--engine", "hypothesis"],
                          "--schedules exhaustive: only with --engine random"),
                         (["--skipped-yields", "1"], "--skipped-yields: only with --schedules exhaustive")):
        assert exit_code(["run", "--arch", "x86-shadow", "--out", str(tmp_path / "o"), "--max-time", "1"] + bad) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


# ----- skipped yields: need_resched() answered no ----------------------------------------------
def hyperv_v6_19() -> Side:
    """The v6.19 legacy MMU with Hyper-V's ranged flush (kvm_x86_ops.flush_remote_tlbs_range)."""
    class HyperV(registry.resolve("x86-shadow", "v6.19")):
        hyperv_range_flush = True
    return Side("v6.19+hyperv", HyperV)


LEAD = strip_schedule(load(Path(__file__).resolve().parent.parent / "docs/leads/hyperv-yield-flush/trace.json"))


def test_skipping_one_yield_finds_the_hyperv_flush_on_yield_miss():
    # 548f87f667a3 (v6.12): the notifier's rmap zap asks need_resched() after each head it
    # zaps, level by level: the 4K head of gfn 0x500 (query 0), then the 2M head of 0x200
    # (query 1), flushing [start_gfn, iterator.gfn] before a yield.  Yes at both (the
    # default): each zap is flushed at its own yield.  No at query 0: the 4K zap is still
    # pending at the 2M yield, whose range is [0x100, 0x100 + 512] = [0x100, 0x300], and
    # `flush` is false after it: gfn 0x500 stays in the TLB.
    v619, hv = side("x86-shadow", "v6.19"), hyperv_v6_19()
    none = explore(LEAD, "x86-shadow", v619, hv, KNOWN, 0)
    assert none.complete and not any(s.result.divergences for s in none.schedules)
    one = explore(LEAD, "x86-shadow", v619, hv, KNOWN, 0, skipped_yields=1)
    assert one.complete
    assert {s.key for s in none.schedules} < {s.key for s in one.schedules}
    assert all(sum(is_skip(e) for e in s.key) == 1 for s in one.schedules
               if s.key not in {x.key for x in none.schedules})
    (d, sched), = one.findings()
    assert d.signature.endswith("|invalidate_range_start|new|missing-gfns") and "gfn [0x500,0x501)" in d.detail
    assert sched == Schedule(no_resched=(0,))
    # the directive replays the skip on its own, and without Hyper-V the yield's flush is full
    assert run_trace([sched] + LEAD, "x86-shadow", v619, hv, KNOWN).divergences
    assert not any(s.result.divergences for s in explore(LEAD, "x86-shadow", v619, v619, KNOWN, 0,
                                                         skipped_yields=2).schedules)
    # before 548f87f667a3 the notifier's rmap zap never yields: nothing to skip, nothing missed
    v610 = side("x86-shadow", "v6.10")
    skips = explore(LEAD, "x86-shadow", v610, v610, KNOWN, 0, skipped_yields=1)
    assert [s.key for s in skips.schedules] == [s.key for s in explore(LEAD, "x86-shadow", v610, v610,
                                                                       KNOWN, 0).schedules]
    assert not any(s.result.divergences for s in skips.schedules)


def test_explore_skipped_yields_on_one_task_trace(tmp_path, capsys):
    trace = tmp_path / "lead.json"
    trace.write_text(dumps(LEAD))
    assert explore_cli(trace, "--arch", "x86-shadow", "--old", "v6.10", "--new", "v6.19", "--preemptions", "0",
                       "--skipped-yields", "1", "--out", tmp_path / "o") == 0
    out = capsys.readouterr().out
    assert "1 task (main), events in trace order, up to 1 skipped yield:" in out and "schedules, complete" in out

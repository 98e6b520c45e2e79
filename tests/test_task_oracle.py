"""What task mode may conclude from a schedule: steps the host's rules forbid where a schedule
moves them, checks an interleaved event still supports, blame when the sides ran in different
orders, and the run order `show` prints.  Hand-worked traces; each case was first met as a false
NEW finding of a task-mode run."""
from __future__ import annotations

import io

import pytest

from fuzz.reports import summary as report, timeline
from fuzz.runner import Side, run_trace
from fuzz.runner_tasks import EventRun, lost_race, trusted_level
from language.trace import (ChangePte, FaultBegin, FaultCommit, HostMap, InvalidateRangeEnd, InvalidateRangeStart,
                        Release, Schedule, SetMemoryRegion)
from impls import registry
from impls.kvm import WouldSleep
from impls.machine import HostPageTable
from oracles.compare import INSTANT, MEMSLOTS, STATE, Divergence
from oracles.triage import load_known, loads_known, mark_known

P = 4096
M2 = 0x200000
H = 0x7f0000000000
KNOWN = load_known()


def side(arch: str, version: str) -> Side:
    return Side(version, registry.resolve(arch, version))


def shapes(res) -> dict[str, Divergence]:
    return {f"{d.cls}|{d.op}|{d.wrong_side}|{d.shape}": d for d in res.divergences}


# ----- steps the host forbids where a schedule puts them -------------------------------------
def test_lost_race_rules_of_the_host_page_table():
    host = HostPageTable()
    populate = HostMap(H, P, 0x1000)
    assert lost_race(host, populate) is None                        # absent: a host fault maps it
    host.map(H, P, 0x1000, P, True)
    assert "already present" in lost_race(host, HostMap(H, P, 0x2000))
    host.open_invalidations.append(("mm1", H, H + P))
    assert lost_race(host, HostMap(H, P, 0x2000)) is None           # inside an invalidation of it
    assert lost_race(host, ChangePte(H, 0x3000, False)) is None     # a present pte to replace
    assert "not present" in lost_race(host, ChangePte(H + P, 0x3000, False))


def test_a_populate_that_a_schedule_moves_after_another_threads_mapping_does_nothing():
    # trace order: mm0 populates H with pfn 0x1000; then mm1 replaces it under an invalidation.
    # The schedule runs mm1 first: mm0's host fault then finds the pte present and backs out.
    trace = [Schedule(preempt=tuple((k, "mm1") for k in range(64))),    # mm1 whenever it can run
             HostMap(H, P, 0x1000, task="mm0"),
             InvalidateRangeStart(H, H + P, task="mm1"),
             HostMap(H, P, 0x2000, task="mm1"),
             InvalidateRangeEnd(H, H + P, task="mm1")]
    res = run_trace(trace, "x86-shadow", side("x86-shadow", "v5.12"), side("x86-shadow", "v5.13"),
                    KNOWN, keep_observations=True)
    old_obs, new_obs = res.observations[1]
    assert old_obs.note.startswith("not run: host page 0x7f0000000000 is already present")
    assert new_obs.note == old_obs.note
    order = [seg.task for seg in res.schedules["old"]]
    assert order[:2] == ["mm1", "mm0"]


def test_release_waits_for_every_other_task_to_exit():
    # exit_mmap runs once mm_users is zero: a schedule that starts mm0's release first still
    # sees mm1's invalidation of the slot go through first
    trace = [Schedule(preempt=((0, "mm0"),)),
             HostMap(H, 4 * P, 0x1000, task="mm1"),
             SetMemoryRegion(0, 0, 0, 0x100000, 4 * P, H, task="ioctl"),
             InvalidateRangeStart(H, H + P, task="mm1"),
             InvalidateRangeEnd(H, H + P, task="mm1"),
             Release(task="mm0")]
    res = run_trace(trace, "arm64", side("arm64", "v5.12"), side("arm64", "v5.13"), KNOWN,
                    keep_observations=True)
    first = res.schedules["old"][0]
    assert first.task == "mm0" and first.stop.startswith("waits for mm_users to drop to zero")
    assert not [d for d in res.divergences if not d.known]
    old_start, _ = res.observations[3]
    assert [c.hook for c in old_start.calls] == ["kvm_unmap_hva_handler"]   # the slot was there


# ----- which checks an interleaved event keeps ------------------------------------------------
def test_trusted_level_is_one_level_for_both_sides():
    alone, mixed, moved = EventRun(0), EventRun(0, interleaved=True), EventRun(0, interleaved=True, slots_same=False)
    assert trusted_level(alone, alone) == STATE
    assert trusted_level(alone, mixed) == MEMSLOTS           # one side interleaved: both lose STATE
    assert trusted_level(mixed, moved) == INSTANT            # and the memslots changed meanwhile
    assert INSTANT < MEMSLOTS < STATE


# ----- blame when the sides ran in different orders ----------------------------------------------
KNOWN_BOTH = loads_known('''
[[known]]
class = "gfn-set-mismatch"
wrong_side = "both"
shape = "only-first-gfn"
explanation = "both versions age one IPA per slot"
source = "test"
''', "arm64.toml")


def divergence(side: str, differ: bool) -> Divergence:
    return Divergence("gfn-set-mismatch", side, "clear_young", "only-first-gfn", 3, "",
                      arch="arm64", old="v5.12", new="v5.13", sides_differ=differ)


def test_a_one_sided_finding_known_on_both_sides_is_known_only_when_the_schedules_differed():
    same, differed = divergence("old", False), divergence("old", True)
    mark_known([same, differed], KNOWN_BOTH)
    assert not same.known                   # same order on both sides: new really stopped doing it
    assert differed.known and "other side's schedule" in differed.explanation


def test_known_versions_field_matches_the_blamed_side_whichever_it_is():
    entries = loads_known('''
[[known]]
class = "warning"
versions = ["v5.13-rc1", "v5.13"]
explanation = "v5.13 WARNs on a bare change_pte"
source = "test"
''', "all.toml")
    as_new = Divergence("warning", "new", "change_pte", "W", 1, "", arch="mips", old="v5.12", new="v5.13")
    as_old = Divergence("warning", "old", "change_pte", "W", 1, "", arch="mips", old="v5.13", new="v5.15")
    other = Divergence("warning", "new", "change_pte", "W", 1, "", arch="mips", old="v5.13", new="v5.15")
    both = Divergence("warning", "both", "change_pte", "W", 1, "", arch="mips", old="v5.13", new="v5.15")
    mark_known([as_new, as_old, other, both], entries)
    assert (as_new.known, as_old.known, other.known, both.known) == (True, True, False, False)


# ----- x86: a huge leaf over an open invalidation ------------------------------------------------
HUGE_OVER_OPEN = [
    HostMap(H, M2, 0x10000, page_size=M2, writable=False, task="mm0"),
    SetMemoryRegion(0, 1, 0, 0x1200000, M2 + P, H, task="ioctl"),
    InvalidateRangeStart(H + 0x15d000, H + 0x15e000, task="mm0"),
    FaultBegin(5, 0, 0x1200, task="vcpu1"),
    FaultCommit(5, task="vcpu1"),
    InvalidateRangeEnd(H + 0x15d000, H + 0x15e000, task="mm0"),
]


@pytest.mark.parametrize("arch", ["x86-shadow", "x86-tdp"])
def test_x86_maps_a_huge_leaf_over_an_open_invalidation_of_another_page(arch):
    # mmu_notifier_retry_hva looks at the faulting hva (H) only; the 2M leaf it maps covers
    # H+0x15d000, which mm0 is invalidating: known x86 behaviour, harmless (the mm splits first)
    res = run_trace(HUGE_OVER_OPEN, arch, side(arch, "v5.12"), side(arch, "v5.13"), KNOWN,
                    keep_observations=True)
    d = shapes(res)["stale-mapping|fault_commit|both|fault-installed-huge-leaf-over-open-invalidation"]
    assert d.known and "mmu_notifier_retry_hva" in d.explanation
    installed = res.observations[4][0].installed
    assert [(x.gfn, x.pages) for x in installed] == [(0x1200, 512)]


def test_arm64_retries_the_same_fault_on_the_count():
    res = run_trace(HUGE_OVER_OPEN, "arm64", side("arm64", "v5.12"), side("arm64", "v5.13"), KNOWN,
                    keep_observations=True)
    assert all(o.note == "retry" for o in res.observations[4])
    assert not [d for d in res.divergences if d.cls == "stale-mapping"]


# ----- the run order in show -----------------------------------------------------------------------
def test_show_prints_a_task_column_and_each_sides_run_order():
    res = run_trace(HUGE_OVER_OPEN, "x86-shadow", side("x86-shadow", "v5.12"), side("x86-shadow", "v5.13"),
                    KNOWN, keep_observations=True)
    out = io.StringIO()
    timeline.print_timeline(HUGE_OVER_OPEN, res, "x86-shadow", "v5.12", "v5.13", out, reach=False)
    text = out.getvalue()
    assert ">>  4 vcpu1  fault_commit fault=5" in text          # the first divergent event
    lines = text[text.index("run order (both):"):].splitlines()[1:]
    assert [ln.split()[1:3] for ln in lines[:4]] == [["mm0", "0"], ["ioctl", "1"], ["mm0", "2"], ["vcpu1", "3,4"]]


# ----- atomic mode cannot wait ----------------------------------------------------------------------
def test_a_v5_15_memslot_delete_inside_an_open_invalidation_cannot_run_atomically():
    m = registry.model("x86-shadow", "v5.15")()
    m.host_map(H, 4 * P, 0x1000, P, True)
    m.set_user_memory_region(0, 0, 0, 0x100000, 4 * P, H)
    m.begin("invalidate_range_start")
    m.kvm_mmu_notifier_invalidate_range_start(H, H + P, True)
    m.begin("set_memory_region")
    with pytest.raises(WouldSleep, match="mn_memslots_update_rcuwait"):
        m.set_user_memory_region(0, 0, 0, 0x100000, 0, H)
    assert m.obs.warnings == ["would sleep forever: mn_memslots_update_rcuwait (mn_active_invalidate_count == 0)"]


def test_x86_sync_page_holds_mmu_lock_even_with_nothing_to_drop():
    m = registry.model("x86-shadow", "v5.13")()
    m.begin("sync_page")
    m.sync_page(0, 0x100)
    assert m.obs.lock_taken and m.obs.note == "no 4K SPTE to drop" and not m.mmu_lock_held


def test_a_bare_change_pte_that_a_schedule_moves_into_a_fault_is_named_as_such():
    # trace order: change_pte (bare: no invalidation) before the fault.  Scheduling point 5 is
    # where mm1 would start it; the preempt runs vcpu0's fault_begin there instead, so the
    # change_pte lands inside the fault.  v5.13 no longer bumps the sequence count in change_pte
    # and installs the old pfn: the known shape, tagged from the order this side ran.
    trace = [Schedule(preempt=((5, "vcpu0"),)),
             HostMap(H, 4 * P, 0x1000, task="mm0"),
             SetMemoryRegion(0, 0, 0, 0x100000, 4 * P, H, task="ioctl"),
             ChangePte(H, 0x9000, False, task="mm1"),
             FaultBegin(1, 0, 0x100, task="vcpu0"),
             FaultCommit(1, task="vcpu0")]
    res = run_trace(trace, "x86-shadow", side("x86-shadow", "v5.12"), side("x86-shadow", "v5.13"), KNOWN,
                    keep_observations=True)
    assert [seg.describe() for seg in res.schedules["new"]][:5] == ["mm0 1", "ioctl 2", "vcpu0 4", "mm1 3", "vcpu0 5"]
    d = shapes(res)["stale-mapping|fault_commit|new|fault-installed-stale-pfn-after-bare-change_pte"]
    assert d.known
    assert res.observations[5][0].note == "retry"            # v5.12 bumped the sequence count


def test_a_fault_preempted_after_its_install_is_read_against_the_host_of_its_install():
    # corpus entry: vcpu0's fault_commit (event 11) installs the 2M leaf of gfn 0xe00 (pfn
    # 0x10400..) and is preempted after the install; mm0's bare change_pte (event 13) moves hva
    # 0x7f0001100000 (gfn 0xf00) to pfn 0x10800 and leaves the huge leaf alone, the known miss
    # reported there.  When event 11 ends its leaf disagrees with the host, but it did not when it
    # was installed: the fault did nothing wrong, and the miss is not counted a second time
    from fuzz.corpus import load
    from pathlib import Path
    entry = load(Path(__file__).parent.parent / "corpus" / "x86-tdp" / "7f1bd40659d8dfcd.json")
    res = run_trace(entry.events, "x86-tdp", side("x86-tdp", "v5.12"), side("x86-tdp", "v5.13"), KNOWN,
                    keep_observations=True)
    for old_new in (0, 1):
        (leaf,) = res.observations[11][old_new].installed
        assert (leaf.gfn, leaf.pages, leaf.pfn) == (0xe00, 512, 0x10400)
    assert [seg.describe() for seg in res.schedules["new"]][7:10] == ["vcpu0 10,11 (preempted)", "mm0 13", "vcpu0 …11"]
    assert set(shapes(res)) == {"missed-invalidation|change_pte|both|old-pfn-still-mapped-huge-leaf"}
    assert all(d.event_index == 13 for d in res.divergences)


def test_two_change_ptes_of_one_page_take_its_page_table_lock_in_turn():
    # corpus entry: mm1's change_pte of hva H (event 22, pfn 0x10401; gfns 0x402 and 0x403 alias
    # H) is preempted inside its callback; mm0's change_pte of the same page (event 23, pfn
    # 0x10402) comes next.  set_pte_at_notify runs under the pte's lock, so mm0 waits for mm1 to
    # finish and the page ends on mm0's pfn, as the host's pte does.  When the lock did not
    # block, mm1 finished last and left pfn 0x10401 behind: a stale pfn no kernel shows
    from fuzz.corpus import load
    from pathlib import Path
    entry = load(Path(__file__).parent.parent / "corpus" / "riscv-sv48" / "d987e29237d0579c.json")
    res = run_trace(entry.events, "riscv-sv48", side("riscv-sv48", "v5.17"), side("riscv-sv48", "v6.19"), KNOWN,
                    keep_observations=True)
    order = [seg.describe() for seg in res.schedules["old"]]
    assert order[9:12] == ["mm1 22 (preempted)", "mm0 23 (waits for ptl held by mm1)", "mm1 …22"]
    last = [after for _, after in res.observations[23][0].changed] + res.observations[23][0].installed
    assert {(x.gfn, x.pfn) for x in last} == {(0x402, 0x10402), (0x403, 0x10402)}
    assert not [d for d in res.divergences if d.cls == "stale-mapping"]


def test_a_v513_unmap_that_yields_resumes_in_a_root_a_memslot_delete_and_a_reload_freed():
    # corpus entries: vcpu0 maps gfns 0x100 and 0x101 (slot 0) in root 0; the ioctl deletes
    # slot 1 and is preempted after its first memslot swap; mm0's invalidate_range_start of both
    # pages zaps 0x100 and yields (v5.13 may_block; kvm_tdp_mmu_unmap_gfn_range holds no
    # reference).  The ioctl's kvm_mmu_zap_all_fast runs meanwhile: root 0 invalid with an extra
    # reference, zapped (0x101), that reference put, then the ioctl waits at its second swap
    # (SRCU in v5.13, mn_active_invalidate_count in v5.15).  vcpu0's next fault_begin handles
    # KVM_REQ_MMU_RELOAD and puts the last reference: root 0 is freed, and mm0 resumes in it.
    # v5.12's notifier zap never yields; v5.17 (7533377215b6) holds a reference across the yield
    from fuzz.corpus import load
    from pathlib import Path
    uaf = "use-after-free: tdp_iter_restart reads a TDP MMU root freed while the zap yielded (no reference held across the yield)"
    for name, buggy in (("bf61555289a041f0", "new"), ("2a40199cb75dd916", "old")):
        entry = load(Path(__file__).parent.parent / "corpus" / "x86-tdp" / f"{name}.json")
        res = run_trace(entry.events, "x86-tdp", side("x86-tdp", entry.old), side("x86-tdp", entry.new), KNOWN,
                        keep_observations=True)
        order = [seg.describe() for seg in res.schedules[buggy]]
        assert order[3:5] == ["ioctl 8 (preempted)", "mm0 9 (preempted)"]
        assert order[5].startswith("ioctl …8 (waits for ") and order[6] == "vcpu0 10"
        assert order[7].startswith("mm0 …9")
        fixed = 1 - ("old", "new").index(buggy)
        for i, o in enumerate(res.observations[9]):
            assert [z.gfn for z in o.zapped] == ([0x100] if entry.old != "v5.12" or i else [0x100, 0x101])
            assert o.warnings == ([uaf] if i != fixed else [])
        assert [(d.wrong_side, d.shape, d.known) for d in res.divergences] == [(buggy, uaf, True)]


def test_a_fault_that_commits_inside_another_tasks_change_pte_or_range_end_is_named_by_it():
    # two corpus entries where a vCPU's fault_commit runs while an mm task is preempted inside an
    # event, and the fault's leaf maps a pfn the host has just changed.  The fault's context
    # (what the trace did while it was in flight) must count that event:
    # - 190f4f48f200db56 (v5.17 side): mm1's change_pte of hva 0x7f00001f9000 (event 20), which
    #   no open range covers whole (a bare one), is preempted after changing the host pte, and
    #   vcpu1's fault_commit (event 21) installs gfn 0x1203 on the old pfn;
    # - f4d21f3950ab3025 (v6.8 side): mm1's invalidate_range_end (event 14) is preempted before
    #   KVM's count drops, and vcpu0's fault_commit (event 15) maps a 2M leaf over the page that
    #   mm1's change_pte (event 13) moved under that invalidation: the retry check by the
    #   faulting gfn alone misses it.
    # Both were reported as a plain NEW fault-installed-stale-pfn when the context was noted only
    # after the change_pte returned and dropped the range as soon as range_end began
    from fuzz.corpus import load
    from pathlib import Path
    cases = [("190f4f48f200db56", ["mm1 20 (preempted)", "vcpu1 21"], 21,
              "fault-installed-stale-pfn-after-bare-change_pte"),
             ("f4d21f3950ab3025", ["mm1 12,13,14 (preempted)", "vcpu0 15"], 15,
              "fault-installed-stale-pfn-under-open-invalidation")]
    for name, order, at, shape in cases:
        entry = load(Path(__file__).parent.parent / "corpus" / "x86-tdp" / f"{name}.json")
        res = run_trace(entry.events, "x86-tdp", side("x86-tdp", entry.old), side("x86-tdp", entry.new), KNOWN,
                        keep_observations=True)
        seq = [seg.describe() for seg in res.schedules["old"]]
        assert any(seq[k:k + 2] == order for k in range(len(seq)))
        stale = [d for d in res.divergences if d.cls == "stale-mapping" and d.shape.startswith("fault-installed-stale")]
        assert [(d.event_index, d.wrong_side, d.shape, d.known) for d in stale] == [(at, "old", shape, True)]


def test_sides_whose_start_order_agrees_still_differ_when_a_task_ran_inside_a_preempted_event():
    # corpus entry (x86-tdp v5.12..v5.13, a PCT schedule): both sides start the events in one
    # order, but on v5.12 mm1's invalidate_range_start (event 19) is preempted before its zap and
    # vcpu0's fault (15, 16) maps the 2M leaf inside it, so the zap takes the leaf; on v5.13
    # event 19 runs whole first and zaps nothing.  mm1's change_pte of a 4K page in that huge
    # page (20) then leaves the leaf on the old pfn on v5.13 only.  Both versions skip huge
    # leaves in change_pte (the known 'both' entry), so the one-sided finding is the schedules'
    # doing: it was reported NEW when only the start order was compared
    from fuzz.corpus import load
    from pathlib import Path
    entry = load(Path(__file__).parent.parent / "corpus" / "x86-tdp" / "7c5a735f4acf8761.json")
    res = run_trace(entry.events, "x86-tdp", side("x86-tdp", "v5.12"), side("x86-tdp", "v5.13"), KNOWN,
                    keep_observations=True)
    old, new = ([seg.describe() for seg in res.schedules[s]] for s in ("old", "new"))
    assert old[2:5] == ["mm1 1,17,19 (preempted)", "vcpu0 15,16 (exits)", "mm1 …19,20,21"]
    assert new[2:5] == ["mm1 1,17,19", "vcpu0 15,16 (exits)", "mm1 20,21"]
    (miss,) = [d for d in res.divergences if d.cls == "missed-invalidation"]
    assert (miss.event_index, miss.wrong_side, miss.shape) == (20, "new", "old-pfn-still-mapped-huge-leaf")
    assert miss.sides_differ and miss.known and "other side's schedule" in miss.explanation

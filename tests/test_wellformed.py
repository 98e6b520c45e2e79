"""Only kernel-possible traces: each rule of language/wellformed.py, its one-line message, the
allowances, and every generator (random, bytes, mutator, exhaustive) against the rules."""
import json
import random
import re

import pytest

from fuzz.engines import exhaustive

from language import wellformed
from fuzz.engines.atheris_engine import decode, encode
from fuzz.cli import main
from fuzz.engines.generate import GenConfig, RandomSource, generate
from fuzz.engines.mutator import MUTATIONS, mutate, mutate_events
from language.trace import (ChangePte, ClearFlushYoung, ClearYoung, FaultBegin, FaultCommit, GuestAccess, HostMap,
                        InvalidateRangeEnd, InvalidateRangeStart, Release, SetMemoryRegion,
                        TestYoung, TraceError, trace_to_json)
from language.wellformed import ALLOWANCES, check_well_formed, well_formed

P = 4096
HVA = 0x7f0000000000
HOST = HostMap(HVA, 16 * P, 0x1000, P, True)
SLOT = SetMemoryRegion(0, 0, 0, 0x100 * P, 16 * P, HVA)
BASE = [HOST, SLOT, FaultBegin(0, 0, 0x100, True), FaultCommit(0)]


def rejected(events, strict=False) -> str:
    with pytest.raises(TraceError) as e:
        check_well_formed(events, "t.json", strict=strict)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_the_base_trace_is_well_formed_even_strictly():
    check_well_formed(BASE + [InvalidateRangeStart(HVA, HVA + P), InvalidateRangeEnd(HVA, HVA + P),
                              ClearYoung(HVA, HVA + P), TestYoung(HVA), Release()], strict=True)


@pytest.mark.parametrize("after", [
    InvalidateRangeStart(HVA, HVA + P), InvalidateRangeEnd(HVA, HVA + P), ChangePte(HVA, 0x9000),
    ClearYoung(HVA, HVA + P), TestYoung(HVA), Release(), FaultBegin(7, 0, 0x100),
    GuestAccess(0, 0x100), SLOT, HOST,
])
def test_nothing_follows_release(after):
    msg = rejected(BASE + [Release(), after])
    assert msg.startswith(f"t.json: event 5 ({after.op}): field op: after release at event 4")


def test_release_with_a_fault_in_flight_is_rejected_and_an_open_invalidation_is_not():
    msg = rejected([HOST, SLOT, FaultBegin(3, 0, 0x100), Release()])
    assert msg.startswith("t.json: event 3 (release): field op: fault 3 is still in flight")
    check_well_formed([HOST, SLOT, InvalidateRangeStart(HVA, HVA + P, False), Release()])


def test_an_end_has_its_starts_blockable_flag():
    msg = rejected(BASE + [InvalidateRangeStart(HVA, HVA + P, False), InvalidateRangeEnd(HVA, HVA + P, True)])
    assert msg.startswith("t.json: event 5 (invalidate_range_end): field blockable: true but")
    check_well_formed(BASE + [InvalidateRangeStart(HVA, HVA + P, False), InvalidateRangeEnd(HVA, HVA + P, False)])


@pytest.mark.parametrize("events, where", [
    ([InvalidateRangeEnd(HVA, HVA + P)], "event 0 (invalidate_range_end): field start: no open"),
    ([ClearYoung(HVA + P, HVA)], "event 0 (clear_young): field end:"),
    ([FaultCommit(1)], "event 0 (fault_commit): field fault: fault 1 was not begun"),
    ([FaultBegin(1, 0, 0), FaultBegin(1, 0, 0)], "event 1 (fault_begin): field fault: fault 1 is already"),
    ([HostMap(HVA, P, 1, 3 * P)], "event 0 (host_map): field page_size:"),
    ([HostMap(HVA + P, 2 << 20, 0x200, 2 << 20)], "event 0 (host_map): field hva: mapping not aligned"),
    ([HostMap(1 << 57, P, 1)], "event 0 (host_map): field size: [0x200000000000000, +0x1000) ends above"),
    ([HOST, HostMap(HVA, P, 5)], "event 1 (host_map): field hva: changes the mapped host page"),
    ([ChangePte(HVA, 5)], "event 0 (change_pte): field hva: 0x7f0000000000 is in no mapped host page"),
])
def test_each_rule_names_event_op_and_field(events, where):
    assert rejected(events).startswith(f"t.json: {where}")


def test_a_host_map_of_any_size_in_the_user_address_space_is_well_formed():
    # no model limit on the size: the host page table keeps extents (16 TiB, then unmapped)
    big = 16 << 40
    check_well_formed([HostMap(HVA, big, 1 << 18, 1 << 30), InvalidateRangeStart(HVA, HVA + big),
                       HostMap(HVA, big, None), InvalidateRangeEnd(HVA, HVA + big)])
    msg = rejected([HostMap(HVA, big, 1 << 18, 1 << 30), InvalidateRangeStart(HVA, HVA + big - P),
                    HostMap(HVA, big, None)])
    assert msg.startswith(f"t.json: event 2 (host_map): field hva: changes the mapped host page {HVA + big - P:#x}")


def test_every_rule_and_allowance_has_a_kernel_reason():
    for rule in wellformed.RULES + list(ALLOWANCES.values()):
        assert rule.__doc__ and len(rule.__doc__.split()) > 8, rule.__name__


@pytest.mark.parametrize("name, events, where", [
    ("unaligned", BASE + [ClearYoung(HVA + 1, HVA + P)], "event 4 (clear_young): field start: 0x7f0000000001"),
    ("empty-range", BASE + [InvalidateRangeStart(HVA, HVA)], "event 4 (invalidate_range_start): field end: empty"),
    ("bare-change_pte", BASE + [ChangePte(HVA, 0x9000)], "event 4 (change_pte): field hva: 0x7f0000000000 is in no open"),
    ("unmapped-aging", [SLOT, TestYoung(HVA)], "event 1 (test_young): field hva: 0x7f0000000000 is in no mapped"),
    ("wide-aging-range", BASE + [ClearYoung(HVA, HVA + 2 * P)], "event 4 (clear_young): field end:"),
    ("change_pte-in-huge-page", [HostMap(HVA, 512 * P, 0x10000, 512 * P, True), InvalidateRangeStart(HVA + P, HVA + 2 * P),
                                 ChangePte(HVA + P, 0x9000)], "event 2 (change_pte): field hva: 0x7f0000001000 is inside a huge"),
])
def test_allowances_pass_by_default_and_fail_strictly(name, events, where):
    assert name in ALLOWANCES
    check_well_formed(events)
    assert rejected(events, strict=True).startswith(f"t.json: {where}")


# ----- every generator makes only well-formed traces ----------------------------------------
def test_random_generator_traces_are_well_formed_and_release_is_last():
    releases = 0
    for seed in range(400):
        for cfg in (GenConfig(), GenConfig(aligned_only=True, max_events=60)):
            events = generate(RandomSource(random.Random(seed)), cfg)
            check_well_formed(events, f"seed {seed}")
            releases += any(isinstance(e, Release) for e in events)
    assert releases > 10        # the release paths were exercised


def test_byte_decoded_traces_are_well_formed():
    rng = random.Random(1)
    for _ in range(300):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
        check_well_formed(decode(data))


def test_a_json_input_that_is_not_kernel_possible_is_not_decoded_as_itself():
    bad = BASE + [Release(), TestYoung(HVA)]
    assert decode(json.dumps(trace_to_json(bad)).encode()) != bad


def _ends_in_release() -> list:
    return BASE + [InvalidateRangeStart(HVA, HVA + 2 * P, False), InvalidateRangeEnd(HVA, HVA + 2 * P, False),
                   ClearYoung(HVA, HVA + P), Release()]


@pytest.mark.parametrize("kind", MUTATIONS)
def test_structural_mutations_keep_release_last(kind):
    """What the mutator keeps must pass; for a trace ending in release most mutations used to
    put events after it (the trace that gave six NEW divergences on arm64)."""
    events = _ends_in_release()
    kept = 0
    for seed in range(200):
        out = mutate_events(events, random.Random(seed), kind)
        if kind == "insert":
            assert not any(isinstance(e, Release) for e in out[:-1]) and isinstance(out[-1], Release)
        kept += well_formed(out)
    assert kept > 0


def test_mutator_output_is_always_well_formed():
    data = encode(_ends_in_release())
    for seed in range(300):
        out = mutate(data, 1 << 16, seed)
        check_well_formed(decode(out))
        data = out if seed % 3 else data


def test_every_exhaustive_check_is_well_formed():
    """Set-up plus check, for every layout of up to 2 slots of 2 pages: includes the change_pte
    one page past the window, which used to fall outside the host mapping."""
    n = 0
    for lay in exhaustive.layouts(2, 2, 2):
        setup = lay.setup()
        for _, evs in exhaustive.checks(lay, reduce=False):
            check_well_formed(setup + evs)
            n += 1
    assert n > 1000


# ----- replay ----------------------------------------------------------------------------------
def _entry(tmp_path, name, events, expect=(), old="v5.12", new="v5.13", arch="x86-shadow"):
    doc = {**trace_to_json(events), "arch": arch, "old": old, "new": new, "expect": list(expect)}
    p = tmp_path / name
    p.write_text(json.dumps(doc))
    return p


def test_replay_fails_an_ill_formed_entry_with_its_line_and_goes_on(tmp_path, capsys):
    _entry(tmp_path, "a.json", [HOST, SLOT, Release(), TestYoung(HVA)])
    _entry(tmp_path, "b.json", [HOST, SLOT])
    assert main(["replay", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"FAIL {tmp_path / 'a.json'}: event 3 (test_young): field op: after release at "
                      "event 2 (the mm has exited and unhooked the notifier: nothing can follow)")
    assert out[1].startswith(f"ok   {tmp_path / 'b.json'}")
    assert out[-1] == "replay: 1 passed, 1 failed"


def test_replay_fails_an_untriaged_divergence_even_if_expected(tmp_path, capsys, monkeypatch):
    """With an empty known list every divergence is untriaged: the entry records it, and still
    fails.  The same trace against a candidate (a copy of v5.13) passes: a candidate's entry
    records a bug on purpose."""
    events = [TestYoung(HVA)]
    from fuzz.runner import Side, run_trace
    from impls import registry
    sides = [Side(v, registry.resolve("x86-shadow", v)) for v in ("v5.12", "v5.13")]
    shown = [d.signature for d in run_trace(events, "x86-shadow", *sides, []).divergences]
    assert shown
    monkeypatch.setattr("fuzz.cli.load_known", lambda: [])
    p = _entry(tmp_path, "e.json", events, shown)
    assert main(["replay", str(p)]) == 1
    assert re.match(rf"FAIL {re.escape(str(p))}: shows a divergence the known list does not explain: "
                    rf"{re.escape(shown[0])}", capsys.readouterr().out)

    cand = tmp_path / "copy.py"
    cand.write_text("from impls.x86_shadow import X86ShadowV5_13\n\nclass Copy(X86ShadowV5_13):\n    pass\n")
    spec = f"{cand}:Copy"
    cside = [sides[0], Side(spec, registry.resolve("x86-shadow", spec))]
    cshown = [d.signature for d in run_trace(events, "x86-shadow", *cside, []).divergences]
    (tmp_path / "c").mkdir()
    q = _entry(tmp_path / "c", "e.json", events, cshown, new=spec)
    assert main(["replay", str(q)]) == 0, capsys.readouterr().out


def test_a_whole_1g_hugetlb_page_is_an_aging_range_the_kernel_sends():
    # page_referenced / DAMON age a 1 GiB hugetlb folio in one call: [addr, addr + 1 GiB), aligned
    G = 1 << 30
    base = [HostMap(0x7e0000000000, G, 0x40000, page_size=G), ClearYoung(0x7e0000000000, 0x7e0000000000 + G)]
    wellformed.check_well_formed(base, strict=True)
    assert wellformed.allowances_needed([base[0], ClearYoung(0x7e0000000000 + P, 0x7e0000000000 + P + G)]) \
        == {"wide-aging-range"}


def test_the_large_vm_profile_ages_whole_1g_pages():
    # what reaches RISC-V's Sv48-only PGDIR_SIZE WARN (a 1 GiB aging range) by fuzzing
    from fuzz.engines.generate import profile_config
    G = 1 << 30
    cfg = profile_config("large-vm", max_events=600)
    rng = random.Random(5)
    seen: set[str] = set()
    for _ in range(40):
        tr = generate(RandomSource(rng), cfg)
        wellformed.check_well_formed(tr)
        seen |= {e.op for e in tr if isinstance(e, ClearYoung | ClearFlushYoung | InvalidateRangeStart)
                 and e.end - e.start == G and e.start % G == 0}
    # aging and invalidation draw their ranges alike; both send whole 1 GiB pages
    assert seen & {"clear_young", "clear_flush_young"} and "invalidate_range_start" in seen


def test_a_change_pte_in_a_huge_host_page_needs_its_allowance_until_the_page_is_remapped_4k():
    huge = HostMap(HVA, 512 * P, 0x10000, 512 * P, True)
    inv = [InvalidateRangeStart(HVA, HVA + 512 * P), InvalidateRangeEnd(HVA, HVA + 512 * P)]
    cow = [InvalidateRangeStart(HVA + P, HVA + 2 * P), ChangePte(HVA + P, 0x9000), InvalidateRangeEnd(HVA + P, HVA + 2 * P)]
    assert wellformed.allowances_needed([huge] + cow) == {"change_pte-in-huge-page"}
    # the split: the mm remaps the frame as 4K ptes inside an invalidation of all of it
    split = [inv[0], HostMap(HVA, 512 * P, 0x10000, P, True), inv[1]]
    assert wellformed.allowances_needed([huge] + split + cow) == set()
    # a 4K page never needed it; the kernel-only generator never makes one
    assert wellformed.allowances_needed([HOST] + cow) == set()
    for seed in range(300):
        events = generate(RandomSource(random.Random(seed)), GenConfig(kernel_only=True))
        assert "change_pte-in-huge-page" not in wellformed.allowances_needed(events), seed

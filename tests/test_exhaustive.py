"""The exhaustive engine: its layout space is what the docstring says, it finds the
small-scope bugs of the known list with certainty, and refused layouts are skipped."""
import itertools
import time

import pytest

from fuzz.engines.exhaustive import (GFN_BASE, _clamped, HVA_BASE, OPS, ExhaustiveError, Layout, SlotSpec, layouts,
                             ranges, run_exhaustive, run_layout)
from fuzz.runner import Side, check_well_formed, run_trace
from language.trace import SetMemoryRegion
from impls import registry
from impls.x86_shadow import X86ShadowV5_13
from oracles.triage import load_known

KNOWN = load_known()
P = 4096


def side(arch, v):
    return Side(v, registry.resolve(arch, v))


def _brute_force(k_max, max_pages, n_as, window=8):
    """Canonical layouts by a different route: place slots anywhere in a window and at any
    non-overlapping gfns, then squeeze holes (hva: uncovered stretches to one page, gfn:
    gaps to one gfn) and translate to 0."""
    out = set()
    for k in range(1, k_max + 1):
        for sizes in itertools.product(range(1, max_pages + 1), repeat=k):
            for offs in itertools.product(range(window - 1), repeat=k):
                covered = sorted({o + i for o, n in zip(offs, sizes) for i in range(n)})
                # squeeze: new index of each covered page
                new, pos, prev = {}, 0, None
                for page in covered:
                    if prev is not None:
                        pos += 1 if page == prev + 1 else 2
                    new[page] = pos
                    prev = page
                hva = [new[o] for o in offs]
                for ases in itertools.product(range(n_as), repeat=k):
                    for gfns in itertools.product(range(2 * k * max_pages), repeat=k):
                        ok, g = True, [0] * k
                        for a in set(ases):
                            idx = sorted((gfns[i], i) for i in range(k) if ases[i] == a)
                            end = None
                            p = 0
                            for j, (gv, i) in enumerate(idx):
                                if end is not None:
                                    if gv < end:
                                        ok = False
                                    p += 0 if gv == end else 1
                                g[i] = p
                                p += sizes[i]
                                end = gv + sizes[i]
                        if ok:
                            out.add(tuple(sorted(SlotSpec(hva[i], sizes[i], ases[i], g[i]) for i in range(k))))
    return out


@pytest.mark.parametrize("k, pages, n_as", [(1, 3, 2), (2, 2, 1), (2, 2, 2), (3, 1, 1)])
def test_layouts_are_every_placement_up_to_translation_and_hole_length(k, pages, n_as):
    got = [lay.slots for lay in layouts(k, pages, n_as)]
    assert len(got) == len(set(got))
    assert set(got) == _brute_force(k, pages, n_as)


def test_layouts_include_aliasing_adjacency_and_come_smallest_first():
    lays = layouts(3, 4, 2)
    assert [len(x.slots) for x in lays] == sorted(len(x.slots) for x in lays)
    two = [x.slots for x in lays if len(x.slots) == 2]
    # hva alias in one AS and across AS, hva-adjacent, GPA-adjacent, SMM-style gfn alias
    assert (SlotSpec(0, 2, 0, 0), SlotSpec(0, 2, 0, 2)) in two
    assert (SlotSpec(0, 2, 0, 0), SlotSpec(0, 2, 1, 0)) in two
    assert (SlotSpec(0, 2, 0, 0), SlotSpec(2, 2, 0, 3)) in two
    assert (SlotSpec(0, 2, 0, 2), SlotSpec(3, 2, 0, 0)) in two


def test_ranges_have_aligned_and_unaligned_edges_and_reduce_only_equivalents():
    lay = Layout((SlotSpec(0, 2, 0, 0), SlotSpec(3, 1, 0, 2)))
    full = ranges(lay, reduce=False)
    small = ranges(lay, reduce=True)
    starts = {s - HVA_BASE for s, _ in full}
    assert {-1, 0, 1, P - 1, P, P + 1, 2 * P, 3 * P - 1} <= starts
    assert len(small) < len(full)
    # one range per class of byte-identical intersections with the slots, every class kept
    assert {_clamped(lay, *r) for r in small} == {_clamped(lay, *r) for r in full}
    assert len({_clamped(lay, *r) for r in small}) == len(small)
    # the hole page [2P, 3P) hits no slot: ranges from inside it to slot 1 collapse
    assert _clamped(lay, HVA_BASE + 2 * P + 1, HVA_BASE + 4 * P) == _clamped(lay, HVA_BASE + 3 * P - 1, HVA_BASE + 4 * P)


def test_book3s_hv_rc1_only_range_start_is_found():
    divs, stats = run_exhaustive("ppc-hv-hash", side("ppc-hv-hash", "v5.13-rc1"),
                                 side("ppc-hv-hash", "v5.13"), KNOWN, max_slots=1, max_pages=2,
                                 minimize_seconds=2.0)
    assert stats.complete and stats.refused == 0
    miss = [d for d in divs if d.cls == "missed-invalidation" and d.op == "invalidate_range_start"]
    assert miss, [d.signature for d in divs]
    d = miss[0]
    assert d.wrong_side == "old" and d.known          # rc1 is the old side here
    check_well_formed(d.trace)
    again = run_trace(d.trace, "ppc-hv-hash", side("ppc-hv-hash", "v5.13-rc1"),
                      side("ppc-hv-hash", "v5.13"), KNOWN).divergences
    assert d.signature in {x.signature for x in again}
    # and v5.13 against itself shows no such thing over the same bound
    same, _ = run_exhaustive("ppc-hv-hash", side("ppc-hv-hash", "v5.13"), side("ppc-hv-hash", "v5.13"),
                             KNOWN, max_slots=1, max_pages=2, minimize_seconds=0)
    assert not [x for x in same if x.cls == "missed-invalidation"]


def test_mips_inclusive_end_over_invalidates_on_both_sides():
    divs, stats = run_exhaustive("mips", side("mips", "v5.12"), side("mips", "v5.13"), KNOWN,
                                 max_slots=1, max_pages=2, minimize_seconds=2.0)
    assert stats.complete
    over = [d for d in divs if d.cls == "over-invalidation" and d.op == "invalidate_range_start"]
    assert over and all(d.wrong_side == "both" and d.known for d in over)
    assert "one-gfn-past-end" in {d.shape for d in over}
    # a divergence keeps a small trace: set-up of one slot and the operation
    assert min(len(d.trace) for d in over) <= 8


def test_a_layout_kvm_refuses_is_skipped_not_reported():
    overlap = Layout((SlotSpec(0, 2, 0, 0), SlotSpec(2, 2, 0, 1)))    # gfns overlap in AS 0
    r = run_layout(overlap, "x86-shadow", side("x86-shadow", "v5.12"), side("x86-shadow", "v5.13"), KNOWN)
    assert "EEXIST" in r.skipped and r.checks == 0 and r.found == {}


class OneSlotX86(X86ShadowV5_13):
    user_mem_slots = 1          # KVM_USER_MEM_SLOTS of 1: a second slot id is refused


def test_run_exhaustive_counts_refused_layouts_and_reports_none_of_them():
    s = Side("one-slot", OneSlotX86)
    divs, stats = run_exhaustive("x86-shadow", s, s, KNOWN, max_slots=2, max_pages=1, minimize_seconds=0)
    lays = layouts(2, 1, 2)
    want = sum(1 for lay in lays if any(sid >= 1 for sid in lay.slot_ids()))
    assert stats.refused == want > 0
    assert stats.layouts_done == len(lays) - want and stats.complete
    for d in divs:
        for ev in d.trace:
            assert not (isinstance(ev, SetMemoryRegion) and ev.slot >= 1)


def test_reduced_ranges_find_what_every_range_finds():
    # byte-exact arm64 v5.12 (unrounded size) is the walker most sensitive to edges
    for k, pages in ((2, 1), (1, 3)):
        full, _ = run_exhaustive("arm64", side("arm64", "v5.12"), side("arm64", "v5.13"), KNOWN,
                                 max_slots=k, max_pages=pages, reduce_ranges=False, minimize_seconds=0)
        red, st = run_exhaustive("arm64", side("arm64", "v5.12"), side("arm64", "v5.13"), KNOWN,
                                 max_slots=k, max_pages=pages, minimize_seconds=0)
        assert {d.signature for d in red} == {d.signature for d in full}
        assert sum(st.per_op.values()) == st.checks


def test_parallel_jobs_find_the_same_signatures():
    args = ("mips", side("mips", "v5.12"), side("mips", "v5.13"), KNOWN)
    one, s1 = run_exhaustive(*args, max_slots=2, max_pages=1, minimize_seconds=0)
    two, s2 = run_exhaustive(*args, max_slots=2, max_pages=1, minimize_seconds=0, jobs=2)
    assert {d.signature for d in one} == {d.signature for d in two}
    assert s1.checks == s2.checks and s2.complete


def test_deadline_stops_early_and_says_so():
    divs, stats = run_exhaustive("x86-shadow", side("x86-shadow", "v5.12"), side("x86-shadow", "v5.13"),
                                 KNOWN, deadline=time.monotonic() + 3.0, minimize_seconds=0)
    # the whole default bound takes far longer than 3 s (figures in the module docstring)
    assert not stats.complete and stats.layouts_done < stats.layouts_total
    assert stats.complete_through_slots < 3


def test_bad_bounds_are_one_line_errors():
    with pytest.raises(ExhaustiveError, match="max_slots"):
        layouts(0, 4, 1)
    with pytest.raises(ExhaustiveError, match="ops: unknown operation 'nope'"):
        run_exhaustive("mips", side("mips", "v5.12"), side("mips", "v5.13"), KNOWN, ops=("nope",))
    assert set(OPS) >= {"invalidate", "change_pte", "test_young"}
    assert GFN_BASE > 0

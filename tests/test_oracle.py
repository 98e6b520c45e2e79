"""The reference oracle and the comparison, on hand-made traces and candidates with known
mistakes: the oracle must name the class, the wrong side and the shape."""
from util import HVA, P, diverge, fault, host, slot

from language.trace import ChangePte, ClearFlushYoung, InvalidateRangeEnd, InvalidateRangeStart, TestYoung
from impls.kvm import State
from impls.machine import Memslot
from impls.x86_shadow import X86ShadowV5_12, X86ShadowV5_13
from oracles.compare import gfn_shape
from oracles.gfnset import GfnSet
from oracles.reference import Segment, range_segments


def state(*slots):
    return State(list(slots), {}, frozenset(), 2, 0, 0, 0)


def test_reference_gfns_round_outwards_and_cover_every_alias():
    s0 = Memslot(0, 0, 0x100, 4, HVA)
    s1 = Memslot(1, 0, 0x500, 2, HVA + 2 * P)       # SMM alias of slot 0's last two pages
    st = state(s0, s1)
    assert range_segments(st, HVA + P + 1, HVA + 3 * P - 1) == [
        Segment(0, 0, 0x101, 0x103), Segment(1, 0, 0x500, 0x501)]
    assert range_segments(st, HVA + 4 * P, HVA + 9 * P) == []        # starts at slot end
    assert range_segments(st, HVA, HVA) == []                         # empty


def test_gfn_shapes():
    segs = [Segment(0, 0, 0x100, 0x104)]
    want = GfnSet([(0, 0x100, 0x104)])
    assert gfn_shape(GfnSet([(0, 0x100, 0x105)]), want, segs) == "one-gfn-past-end"
    assert gfn_shape(GfnSet([(0, 0x100, 0x101)]), want, segs) == "only-first-gfn"
    assert gfn_shape(GfnSet([(0, 0x100, 0x103)]), want, segs) == "last-gfn-missing"
    assert gfn_shape(GfnSet(), want, segs) == "no-gfns"
    assert gfn_shape(want, want, segs) == "same"


class OffByOneEnd(X86ShadowV5_13):
    """A patch that treats the walker's exclusive end as inclusive."""
    def kvm_unmap_gfn_range(self, range):
        range.end += 1
        return super().kvm_unmap_gfn_range(range)


class OnlyStart(X86ShadowV5_13):
    """Like Book3S HV in v5.13-rc1: only range.start is handled."""
    def kvm_unmap_gfn_range(self, range):
        range.end = range.start + 1
        return super().kvm_unmap_gfn_range(range)


class NoFlush(X86ShadowV5_13):
    """Zaps but never asks for a flush."""
    def kvm_unmap_gfn_range(self, range):
        super().kvm_unmap_gfn_range(range)
        return False


class YoungAlways(X86ShadowV5_13):
    def kvm_test_age_gfn(self, range):
        super().kvm_test_age_gfn(range)
        return True


LAYOUT = [host(HVA, 16, 0x1000), slot(0, 0, 0x100, 4, HVA), slot(0, 1, 0x104, 4, HVA + 4 * P)]
V512 = ("v5.12", X86ShadowV5_12)


def kinds(ds):
    return {(d.cls, d.wrong_side, d.shape) for d in ds}


def test_off_by_one_past_the_end_is_over_invalidation_on_the_new_side():
    # [0x101, 0x102) becomes [0x101, 0x103): gfn 0x102, mapped, is zapped too
    ev = LAYOUT + fault(0, 0x102) + [InvalidateRangeStart(HVA + P, HVA + 2 * P)]
    ds = diverge("x86-shadow", V512, ("cand", OffByOneEnd), ev)
    assert ("over-invalidation", "new", "one-gfn-past-end") in kinds(ds)
    assert ("gfn-set-mismatch", "new", "one-gfn-past-end") in kinds(ds)
    assert all(d.event_index == len(ev) - 1 and not d.known for d in ds)


def test_only_first_gfn_is_a_missed_invalidation():
    ev = LAYOUT + fault(0, 0x100) + fault(0, 0x102) + [InvalidateRangeStart(HVA, HVA + 4 * P)]
    ds = diverge("x86-shadow", V512, ("cand", OnlyStart), ev)
    assert ("missed-invalidation", "new", "missing-gfns") in kinds(ds)
    assert ("gfn-set-mismatch", "new", "only-first-gfn") in kinds(ds)


def test_zap_without_flush_leaves_the_translation_in_the_tlb():
    ev = LAYOUT + fault(0, 0x101) + [InvalidateRangeStart(HVA, HVA + 4 * P), InvalidateRangeEnd(HVA, HVA + 4 * P)]
    ds = diverge("x86-shadow", V512, ("cand", NoFlush), ev)
    miss = [d for d in ds if d.cls == "missed-invalidation"]
    assert len(miss) == 1 and miss[0].wrong_side == "new" and "in the TLB" in miss[0].detail


def test_wrong_young_is_reported_against_the_truth():
    ev = LAYOUT + fault(0, 0x100) + [ClearFlushYoung(HVA, HVA + P), TestYoung(HVA)]
    ds = diverge("x86-shadow", V512, ("cand", YoungAlways), ev)
    assert kinds(ds) == {("wrong-young", "new", "false-positive")}


def test_a_model_against_itself_shows_nothing_one_sided():
    ev = LAYOUT + fault(0, 0x100) + fault(0, 0x105) + [InvalidateRangeStart(HVA, HVA + 8 * P),
                                                       InvalidateRangeEnd(HVA, HVA + 8 * P)]
    assert diverge("x86-shadow", ("a", X86ShadowV5_13), ("b", X86ShadowV5_13), ev) == []


class Raises(X86ShadowV5_13):
    def kvm_age_gfn(self, range):
        raise RuntimeError("my patch is broken")


def test_a_candidate_that_raises_is_reported_as_model_crash():
    ev = LAYOUT + fault(0, 0x100) + [ClearFlushYoung(HVA, HVA + P), TestYoung(HVA)]
    ds = diverge("x86-shadow", V512, ("cand", Raises), ev)
    crash = [d for d in ds if d.cls == "model-crash"]
    assert len(crash) == 1 and crash[0].wrong_side == "new"
    assert "RuntimeError: my patch is broken" in crash[0].detail and "test_oracle.py" in crash[0].detail


def test_the_known_list_never_excuses_a_divergence_that_blames_only_a_candidate():
    # v5.13's change_pte WARN is known kernel behaviour: excused when v5.13 shows it (alone or
    # on both sides), but a candidate that shows it alone gets it reported as its own
    ev = LAYOUT + [ChangePte(HVA, 0x9000, False)]
    [d] = [x for x in diverge("x86-shadow", V512, ("v5.13", X86ShadowV5_13), ev) if x.cls == "warning"]
    assert d.known and d.wrong_side == "new"
    [d] = [x for x in diverge("x86-shadow", V512, ("p.py:Cand", OnlyStart), ev) if x.cls == "warning"]
    assert not d.known
    [d] = [x for x in diverge("x86-shadow", ("v5.13", X86ShadowV5_13), ("p.py:Cand", OnlyStart), ev)
           if x.cls == "warning"]
    assert d.known and d.wrong_side == "both"


def test_a_known_behaviour_of_one_version_is_written_for_that_version_on_either_side():
    # Every finding judges one side against the reference, so what a version does wrong does not
    # depend on the side it runs on.  An entry written as "old = V, wrong_side = old" would excuse
    # V on the old side only, and blame a patch based on V (both sides wrong) for V's behaviour:
    # the list writes such entries as `versions = [V]`
    import tomllib
    from oracles.triage import KNOWN_DIR
    one_sided = []
    for path in sorted(KNOWN_DIR.glob("*.toml")):
        for i, e in enumerate(tomllib.loads(path.read_text())["known"]):
            if "versions" not in e and ("old" in e) != ("new" in e) \
                    and e.get("wrong_side") == ("old" if "old" in e else "new"):
                one_sided.append(f"{path.name} entry {i}")
    assert not one_sided

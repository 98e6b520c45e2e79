"""Stateful hypothesis machine: the rules are the trace events, applied to both sides of a
pair; invariants are checked after every step.

After each step the whole trace so far is run by fuzz.runner.run_trace (fresh models, the
known list applied), so a divergence is judged exactly as the fuzzer and the corpus judge
it; the models that run leaves behind are the state the invariants look at.  Settings come
from the profile tests/conftest.py loads (MEMSLOT_FUZZ_PROFILE=dev|ci|deep), with a moderate
number of steps and examples.
"""
from __future__ import annotations

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, rule

from fuzz.runner import CapturingSide, Side, run_trace
from language.trace import (ChangePte, ClearFlushYoung, ClearYoung, FaultBegin, FaultCommit,
                        GuestAccess, HostMap, InvalidateRangeEnd, InvalidateRangeStart,
                        SetMemoryRegion, SyncPage, TestYoung, dumps)
from impls import registry
from impls.x86_shadow import X86ShadowV5_13
from oracles.gfnset import GfnSet
from oracles.reference import expect
from oracles.triage import load_known

KNOWN = load_known()
P = 4096
HVA = 0x7f0000000000
GFN = 0x100
PAGES = 12                          # hva window and gfn window, in pages
EXPLAINS_STRAY_LEAF = {"missed-invalidation", "stale-mapping"}


edge = st.builds(lambda page, d: max(0, HVA + page * P + d),
                 st.integers(-1, PAGES + 1), st.sampled_from([0, 0, -1, 1]))


class NotifierMachine(RuleBasedStateMachine):
    arch = old = new = ""
    old_cls = new_cls = None            # model classes; None: registry.resolve(arch, old/new)

    open_ranges = Bundle("open_ranges")
    faults = Bundle("faults")

    def __init__(self):
        super().__init__()
        self.o = Side(self.old, self.old_cls or registry.resolve(self.arch, self.old))
        self.n = Side(self.new, self.new_cls or registry.resolve(self.arch, self.new))
        self.n_as = self.o.cls.address_space_num
        self.events = []
        self.models = {"old": self.o.make(), "new": self.n.make()}
        self.found: list = []            # every divergence reported so far
        self.created: dict = {}          # side -> leaves installed by the latest step
        self.open = 0
        self.next_pfn = 0x20000
        self.next_fault = 0
        self.step([HostMap(HVA, PAGES * P, 0x10000, P, True)])

    # ----- the step: run the trace, check what run_trace reports -------------------------
    def step(self, new_events):
        before = {k: m.snapshot() for k, m in self.models.items()}
        self.events += new_events
        cap_o, cap_n = CapturingSide(self.o), CapturingSide(self.n)
        res = run_trace(self.events, self.arch, cap_o, cap_n, KNOWN, keep_observations=True)
        # leaves this step created (a fault commit, a set_spte that maps), per side
        first = len(self.events) - len(new_events)
        self.created = {side: [leaf for pair in res.observations[first:] for leaf in pair[k].installed]
                        for k, side in enumerate(("old", "new"))}
        self.models = {"old": cap_o.model, "new": cap_n.model}
        first_new = len(self.events) - len(new_events)
        fresh = [d for d in res.divergences if d.event_index >= first_new]
        unknown = [d.signature for d in res.divergences if not d.known]
        assert not unknown, f"divergences outside the known list: {unknown}\n{dumps(self.events)}"
        self.found += fresh
        # after invalidate_range_start (the last event of a start rule): nothing maps a gfn
        # of the range, unless the run reported it as a known missed invalidation
        ev = new_events[-1]
        if isinstance(ev, InvalidateRangeStart):
            at = len(self.events) - 1
            for name, m in self.models.items():
                gfns = expect(ev, before[name]).gfns
                post = m.snapshot()
                left = GfnSet((x.as_id, x.gfn, x.gfn_end) for x in post.leaves.values()) & gfns
                left |= GfnSet((e.as_id, e.gfn, e.gfn + e.pages) for e in post.tlb) & gfns
                if left:
                    # a signature is reported once per trace, at its first event
                    why = [d for d in res.divergences if d.event_index <= at and d.known
                           and d.cls == "missed-invalidation" and d.wrong_side in (name, "both")]
                    assert why, (f"{name} side: {left.describe()} still mapped after "
                                 f"invalidate_range_start, no known divergence says so\n{dumps(self.events)}")

    # ----- rules: the events ---------------------------------------------------------------
    @initialize(gfn=st.integers(0, PAGES - 4), npages=st.integers(1, 4), page=st.integers(0, PAGES - 4))
    def first_slot(self, gfn, npages, page):
        self.step([SetMemoryRegion(0, 0, 0, (GFN + gfn) * P, npages * P, HVA + page * P)])

    @rule(as_id=st.integers(0, 1), slot=st.integers(0, 3), gfn=st.integers(0, PAGES - 1),
          npages=st.integers(0, 4), page=st.integers(0, PAGES - 1), flags=st.sampled_from([0, 0, 1]))
    def set_memory_region(self, as_id, slot, gfn, npages, page, flags):
        # npages 0 deletes; KVM refuses what it refuses, identically on both sides
        self.step([SetMemoryRegion(as_id % self.n_as, slot, flags, (GFN + gfn) * P, npages * P, HVA + page * P)])

    @rule(page=st.integers(0, PAGES - 1), npages=st.integers(1, 3), unmap=st.booleans())
    def host_map(self, page, npages, unmap):
        pfn = None if unmap else self.next_pfn
        self.next_pfn += npages
        # the mm changes a mapped host page only inside an invalidation of it
        start, end = HVA + page * P, HVA + (page + npages) * P
        self.step([InvalidateRangeStart(start, end), HostMap(start, npages * P, pfn, P, True),
                   InvalidateRangeEnd(start, end)])

    @rule(target=faults, as_id=st.integers(0, 1), gfn=st.integers(0, PAGES - 1), write=st.booleans())
    def fault_begin(self, as_id, gfn, write):
        n = self.next_fault
        self.next_fault += 1
        self.step([FaultBegin(n, as_id % self.n_as, GFN + gfn, write)])
        return n

    @rule(fault=consumes(faults))
    def fault_commit(self, fault):
        self.step([FaultCommit(fault)])

    @rule(as_id=st.integers(0, 1), gfn=st.integers(0, PAGES - 1), write=st.booleans())
    def fault(self, as_id, gfn, write):
        n = self.next_fault
        self.next_fault += 1
        self.step([FaultBegin(n, as_id % self.n_as, GFN + gfn, write), FaultCommit(n)])

    @rule(as_id=st.integers(0, 1), gfn=st.integers(0, PAGES - 1), write=st.booleans())
    def guest_access(self, as_id, gfn, write):
        self.step([GuestAccess(as_id % self.n_as, GFN + gfn, write)])

    @rule(as_id=st.integers(0, 1), gfn=st.integers(0, PAGES - 1))
    def sync_page(self, as_id, gfn):
        self.step([SyncPage(as_id % self.n_as, GFN + gfn)])

    @rule(target=open_ranges, a=edge, b=edge, blockable=st.booleans())
    def invalidate_range_start(self, a, b, blockable):
        start, end = min(a, b), max(a, b)
        self.step([InvalidateRangeStart(start, end, blockable)])
        self.open += 1
        return (start, end)

    @rule(r=consumes(open_ranges))
    def invalidate_range_end(self, r):
        self.step([InvalidateRangeEnd(r[0], r[1], True)])
        self.open -= 1

    @rule(hva=edge, writable=st.booleans())
    def change_pte(self, hva, writable):
        self.next_pfn += 1
        self.step([ChangePte(hva, self.next_pfn, writable)])

    @rule(a=edge, b=edge, flush=st.booleans())
    def age(self, a, b, flush):
        cls = ClearFlushYoung if flush else ClearYoung
        self.step([cls(min(a, b), max(a, b))])

    @rule(hva=edge)
    def test_young(self, hva):
        self.step([TestYoung(hva)])

    # ----- invariants ---------------------------------------------------------------------
    @invariant()
    def notifier_count_is_the_number_of_open_invalidations(self):
        for name, m in self.models.items():
            assert m.mmu_notifier_count >= 0, f"{name}: mmu_notifier_count {m.mmu_notifier_count}"
            assert m.mmu_notifier_count == self.open, (
                f"{name}: mmu_notifier_count {m.mmu_notifier_count}, {self.open} open\n{dumps(self.events)}")

    @invariant()
    def no_leaf_is_created_outside_a_memslot_unless_explained(self):
        # leaves a memslot delete or move leaves behind are an arch's own behaviour (Book3S
        # PR, e500: flush_shadow_memslot is empty); the reference checks what that costs when
        # their hvas are invalidated.  A leaf *made* outside every memslot is another matter.
        for name, m in self.models.items():
            slots = m.memslots.all()
            for leaf in getattr(self, "created", {}).get(name, []):
                inside = any(s.as_id == leaf.as_id and s.base_gfn <= leaf.gfn and leaf.gfn_end <= s.gfn_end
                             for s in slots)
                if inside:
                    continue
                why = [d for d in self.found if d.known and d.cls in EXPLAINS_STRAY_LEAF
                       and d.wrong_side in (name, "both")]
                assert why, (f"{name}: leaf as{leaf.as_id} gfn {leaf.gfn:#x}+{leaf.pages} lies in no "
                             f"memslot and no known divergence explains it\n{dumps(self.events)}")


def machine(arch: str, old: str, new: str, old_cls=None, new_cls=None):
    cls = type(f"Machine_{arch.replace('-', '_')}", (NotifierMachine,),
               {"arch": arch, "old": old, "new": new, "old_cls": old_cls, "new_cls": new_cls})
    case = cls.TestCase
    case.settings = machine_settings()
    return case


def machine_settings(**kw):
    profile = settings.default          # the profile conftest.py loaded
    base = dict(stateful_step_count=25, max_examples=max(10, min(profile.max_examples, 1000) // 3))
    base.update(kw)
    return settings(profile, **base)


TestX86ShadowV512VsV513 = machine("x86-shadow", "v5.12", "v5.13")
TestBook3sHvHashRc1VsV513 = machine("ppc-hv-hash", "v5.13-rc1", "v5.13")
TestE500V512VsV513 = machine("e500", "v5.12", "v5.13")


class _SkipsUnmap(X86ShadowV5_13):
    """A deliberately broken candidate: invalidate_range_start unmaps nothing."""
    def kvm_unmap_gfn_range(self, range):
        return False


class _CountsTwice(X86ShadowV5_13):
    """A deliberately broken candidate: invalidate_range_end decrements twice."""
    def kvm_dec_notifier_count(self, start, end):
        super().kvm_dec_notifier_count(start, end)
        self.mmu_notifier_count -= 1


@pytest.mark.parametrize("broken", [_SkipsUnmap, _CountsTwice])
def test_the_machine_catches_a_broken_candidate(broken):
    case = machine("x86-shadow", "v5.13", "broken", new_cls=broken)
    case.settings = machine_settings(database=None, max_examples=300, derandomize=True,
                                     phases=[Phase.generate], print_blob=False)
    with pytest.raises(AssertionError):
        case("runTest").runTest()

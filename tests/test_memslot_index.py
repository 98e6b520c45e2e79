"""Memslot indexes (issue 10, goal 4): the views Memslots keeps between changes and the hva
index the reference reads give the answers the per-call scans and interval tree gave."""
from __future__ import annotations

import random

from intervaltree import IntervalTree

from impls.machine import KVM_MEMSLOT_INVALID, Memslot, MemslotChange, Memslots, MemslotUpdateError, SlotList

P = 4096
HVA = 0x7f0000000000


def random_memslots(rng: random.Random) -> Memslots:
    m = Memslots(2, 64, True)
    for _ in range(rng.randrange(1, 60)):
        as_id, sid = rng.randrange(2), rng.randrange(40)
        npages = rng.choice([0, 1, 3, 16, 512])
        try:
            if rng.random() < 0.1 and m._by_as[as_id].get(sid):
                m.mark_invalid(m._by_as[as_id][sid])
            else:
                m.set_user_memory_region(as_id, sid, 0, rng.randrange(0, 2000) * P, npages * P,
                                         HVA + rng.randrange(0, 2000) * P)
        except MemslotUpdateError:
            pass
    return m


def test_views_answer_as_the_scans_did():
    rng = random.Random(11)
    for _ in range(60):
        m = random_memslots(rng)
        for as_id in range(2):
            slots = list(m._by_as[as_id].values())
            assert m.in_as(as_id) == sorted(slots, key=lambda s: (-s.base_gfn, s.id))
            for _ in range(40):
                gfn = rng.randrange(0, 2600)
                assert m.find_gfn(as_id, gfn) == next((s for s in slots if s.has_gfn(gfn)), None)
                start = HVA + rng.randrange(-10, 2600) * P + rng.choice([0, 1, P - 1])
                last = start + rng.choice([0, 1, P - 1, 40 * P])
                hits = [s for s in slots if s.npages and s.hva_start <= last and start <= s.hva_end - 1]
                want = sorted(hits, key=lambda s: (s.hva_start, m._inserted.get(s.key, 0)))
                assert m.in_hva_range(as_id, start, last) == want
        assert m.all() == [s for a in range(2) for s in sorted(m._by_as[a].values(),
                                                               key=lambda s: (-s.base_gfn, s.id))]


def test_the_shared_slot_list_is_dropped_on_every_change():
    m = Memslots(1, 8, True)
    m.set_user_memory_region(0, 0, 0, 0x100 * P, 4 * P, HVA)
    first = m.all()
    assert m.all() is first                      # unchanged: the same list, index and all
    m.set_user_memory_region(0, 1, 0, 0x200 * P, 4 * P, HVA + 8 * P)
    assert m.all() is not first and len(m.all()) == 2 and len(first) == 1
    second = m.all()
    m.mark_invalid(m.find_gfn(0, 0x200))
    assert m.all() is not second and m.find_gfn(0, 0x200).flags & KVM_MEMSLOT_INVALID
    m.commit(MemslotChange("delete", m.find_gfn(0, 0x200), None))
    assert m.find_gfn(0, 0x200) is None and m.in_hva_range(0, HVA, HVA + 12 * P) == [m.find_gfn(0, 0x100)]


def test_hva_index_finds_what_the_interval_tree_found():
    rng = random.Random(4)
    for _ in range(60):
        slots = SlotList(Memslot(rng.randrange(2), i, rng.randrange(4000), rng.choice([0, 1, 2, 7, 100]),
                                 HVA + rng.randrange(0, 400) * P) for i in range(rng.randrange(0, 30)))
        tree = IntervalTree()
        for s in slots:
            if s.npages:
                tree[s.hva_start:s.hva_end] = s
        for _ in range(50):
            start = HVA + rng.randrange(-5, 520) * P + rng.choice([0, 1, P - 1])
            end = start + rng.choice([1, P, 3 * P + 1, 64 * P])
            want = {iv.data for iv in tree.overlap(start, end)}
            got = slots.overlapping_hva(start, end)
            assert set(got) == want and len(got) == len(want)


def test_gfnset_difference_by_sweep_matches_page_sets():
    from oracles.gfnset import GfnSet
    rng = random.Random(8)
    for _ in range(300):
        def spans():
            return [(rng.randrange(2), s, s + rng.randrange(0, 9)) for s in
                    (rng.randrange(60) for _ in range(rng.randrange(0, 7)))]
        a, b = GfnSet(spans()), GfnSet(spans())
        pages = lambda g: {(x, p) for x, s, e in g.spans() for p in range(s, e)}
        assert pages(a - b) == pages(a) - pages(b)
        assert pages(a & b) == pages(a) & pages(b)
        assert a - b == GfnSet((x, p, p + 1) for x, p in pages(a) - pages(b))

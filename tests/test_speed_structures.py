"""The faster structures of issue 10 give what the plain ones gave (no timings here: bench/)."""
from __future__ import annotations

import random

from impls import registry
from impls.machine import Memslots, SlotList
from oracles.gfnset import GfnSet


def random_memslots(rng: random.Random, n: int, address_spaces: int = 2) -> Memslots:
    ms = Memslots(address_spaces, 64, True)
    for _ in range(n):
        as_id = rng.randrange(address_spaces)
        slot = rng.randrange(64)
        gpa = rng.randrange(0, 256) << 12
        size = rng.choice([0, 1, 2, 3, 16, 512]) << 12
        hva = rng.randrange(0, 128) << 12        # slots' hvas overlap and alias freely
        try:
            ms.set_user_memory_region(as_id, slot, 0, gpa, size, hva)
        except Exception:
            pass
    return ms


def plain_walk(ms: Memslots, as_id: int, start: int, end: int) -> list:
    # what the walkers did before: every slot in array order, clamp, skip the empty clamp
    return [s for s in ms.in_as(as_id) if max(start, s.hva_start) < min(end, s.hva_end)]


def test_in_as_hitting_is_the_plain_walk_filtered():
    rng = random.Random(10)
    for _ in range(300):
        ms = random_memslots(rng, rng.randrange(0, 90))
        for _ in range(20):
            start = rng.randrange(0, 140 << 12) + rng.choice([0, 0, 1, 4095])
            end = start + rng.choice([0, 1, 4096, 4097, 3 << 12, 64 << 12, -1])
            for as_id in range(2):
                assert ms.in_as_hitting(as_id, start, end) == plain_walk(ms, as_id, start, end)


def test_slot_list_equality_is_list_equality():
    rng = random.Random(3)
    for _ in range(100):
        seed = rng.randrange(1 << 30)
        a = random_memslots(random.Random(seed), 12).all()
        b = random_memslots(random.Random(seed), 12).all()
        c = random_memslots(random.Random(seed + 1), 12).all()
        assert a is not b
        assert (a == b) == (list(a) == list(b)) and (a == b) and not (a != b)
        assert (a == b) and (b == a)                       # remembered, still true
        assert (a == c) == (list(a) == list(c)) and (a != c) == (list(a) != list(c))
        assert a == list(b)
        if len(b) > 1:
            assert a != SlotList(list(b)[1:])


def naive_gfns(spans) -> set:
    return {(a, g) for a, s, e in spans for g in range(s, e)}


def test_gfnset_from_spans_is_canonical():
    rng = random.Random(5)
    for _ in range(2000):
        spans = [(rng.randrange(3), s, s + rng.randrange(-2, 8)) for s in
                 (rng.randrange(0, 40) for _ in range(rng.randrange(0, 8)))]
        g = GfnSet(spans)
        assert {(a, x) for a, s, e in g.spans() for x in range(s, e)} == naive_gfns(spans)
        runs = g.spans()
        for (a1, s1, e1), (a2, s2, e2) in zip(runs, runs[1:]):
            assert a1 < a2 or e1 < s2                      # sorted, disjoint, not adjacent
        assert all(s < e for _, s, e in runs)
        assert g == GfnSet(reversed(spans))


def test_tdp_present_by_level_is_present_at_per_level():
    cls = registry.resolve("x86-tdp", "v5.13")
    m = cls()
    m.memslots.set_user_memory_region(0, 0, 0, 0, 4 << 30, 1 << 30)
    m.host_map(1 << 30, 2 << 30, 1 << 18, 1 << 30, True)            # 1G, 2M and 4K backing
    m.host_map(3 << 30, 1 << 30, 3 << 18, 2 << 20, True)
    m.host_map(4 << 30, 1 << 30, 4 << 18, 4096, True)
    rng = random.Random(2)
    for i in range(60):
        m.begin("fault_begin")
        m.fault_begin(i, 0, rng.randrange(0, 1 << 20), rng.random() < 0.5)
        m.begin("fault_commit")
        m.fault_commit(i)
        if i % 7 == 0:
            m.begin("invalidate_range_start")
            s = (1 << 30) + (rng.randrange(0, 1 << 20) << 12)
            m.kvm_mmu_notifier_invalidate_range_start(s, s + (rng.randrange(1, 1024) << 12), True)
            m.kvm_mmu_notifier_invalidate_range_end(s, s + 1, True)
        assert m.roots
        for root in m.roots:
            got = m.present_by_level(root)
            assert got == {lv: m.present_at(root, lv) for lv in range(4, 0, -1)}
    assert m.leaves and len({k[2] for k in m.leaves}) > 1


def recursive_walk_ptes(m, root, start, end):
    # the walk as nested generators, as x86_tdp.walk_ptes was written before issue 10
    import bisect
    if start >= end:
        return
    index = {lv: m.present_at(root, lv) for lv in range(4, 0, -1)}

    def level_walk(level, lo, hi):
        n = m.span(level)
        gfns = index[level]
        i = bisect.bisect_left(gfns, max(lo, start - start % n))
        while i < len(gfns) and gfns[i] < min(hi, end):
            g = gfns[i]
            i += 1
            if m.spte_kind(root, level, g) is None:
                continue
            yield level, g
            if level > 1 and m.spte_kind(root, level, g) == "table":
                yield from level_walk(level - 1, g, g + n)

    yield from level_walk(4, 0, m.span(5))


def test_tdp_walk_ptes_is_the_recursive_walk():
    cls = registry.resolve("x86-tdp", "v5.12")
    rng = random.Random(4)
    for trial in range(20):
        m = cls()
        m.memslots.set_user_memory_region(0, 0, 0, 0, 4 << 30, 1 << 30)
        m.host_map(1 << 30, 2 << 30, 1 << 18, 1 << 30, True)
        m.host_map(3 << 30, 1 << 30, 3 << 18, 2 << 20, True)
        m.host_map(4 << 30, 1 << 30, 4 << 18, 4096, True)
        for i in range(40):
            m.begin("fault_begin")
            m.fault_begin(i, 0, rng.randrange(0, 1 << 20), False)
            m.begin("fault_commit")
            m.fault_commit(i)
        root = m.roots[0]
        for _ in range(30):
            s = rng.randrange(0, 1 << 20)
            e = s + rng.choice([1, 7, 512, 5000, 1 << 18, 1 << 20])
            assert list(m.walk_ptes(root, s, e)) == list(recursive_walk_ptes(m, root, s, e))


def test_gfnset_operations_are_set_operations():
    rng = random.Random(6)

    def some():
        return [(rng.randrange(3), s, s + rng.randrange(0, 9)) for s in
                (rng.randrange(0, 40) for _ in range(rng.randrange(0, 6)))]
    for _ in range(3000):
        x, y = some(), some()
        a, b = GfnSet(x), GfnSet(y)
        for got, want in ((a - b, naive_gfns(x) - naive_gfns(y)), (a & b, naive_gfns(x) & naive_gfns(y)),
                          (a | b, naive_gfns(x) | naive_gfns(y))):
            assert got == GfnSet((g[0], g[1], g[1] + 1) for g in want)     # same canonical runs
            assert list(got._runs) == sorted(got._runs)

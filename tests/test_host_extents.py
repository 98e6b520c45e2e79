"""The host page table as extents (issue 10, goal 3): hand-worked cases, and page-for-page
agreement with the table of one entry per base page it replaced, over random changes."""
from __future__ import annotations

import random

import pytest

from impls.machine import (LEVEL_1G, LEVEL_2M, LEVEL_4K, LEVEL_PAGE_SIZE, PAGE_SHIFT, HostExtent, HostPageTable,
                           HostPte)

P = 4096
M2 = 2 << 20
G1 = 1 << 30
HVA = 0x7f0000000000          # 1 GiB aligned


class PagedHostPageTable:
    """The table of one HostPte per base page that HostPageTable replaced (commit ed69521),
    kept here as the specification the extents must match page for page."""

    def __init__(self, page_shift: int = PAGE_SHIFT):
        self.page_shift = page_shift
        self.ptes: dict[int, HostPte] = {}
        # the mm's invalidations whose range_start has returned and whose range_end has not
        # begun, as (task, start, end): no secondary MMU may map their pages then (task mode)
        self.open_invalidations: list[tuple[str, int, int]] = []
        # tasks from their call of range_start to the return of the matching range_end
        self.invalidating: list[str] = []

    def lookup(self, hva: int) -> HostPte | None:
        return self.ptes.get(hva >> self.page_shift)

    def map(self, hva: int, size: int, pfn: int | None, page_size: int, writable: bool) -> None:
        """Map [hva, hva+size) to consecutive pfns from `pfn` with backing page size
        `page_size`, or unmap it when pfn is None.  Huge backing needs hva, size and pfn
        aligned to the page size, as a THP or hugetlbfs mapping would be."""
        level = {v: k for k, v in LEVEL_PAGE_SIZE.items()}.get(page_size)
        if level is None:
            raise ValueError(f"host page size {page_size:#x} is not 4K, 2M or 1G")
        mask = page_size - 1
        if hva & ((1 << self.page_shift) - 1) or size & ((1 << self.page_shift) - 1):
            raise ValueError(f"host mapping [{hva:#x},+{size:#x}) is not page aligned")
        if pfn is not None and (hva & mask or size & mask or (pfn << self.page_shift) & mask):
            raise ValueError(f"host mapping [{hva:#x},+{size:#x}) pfn {pfn:#x} not aligned to {page_size:#x}")
        first = hva >> self.page_shift
        count = size >> self.page_shift
        self._split_around(first, count, level)
        if pfn is None:
            for page in range(first, first + count):
                self.ptes.pop(page, None)
        else:
            self.ptes.update(zip(range(first, first + count),
                                 (HostPte(pfn + i, writable, level) for i in range(count))))

    def set_pte(self, hva: int, pfn: int, writable: bool) -> None:
        """set_pte_at for one base page (what change_pte accompanies); a 4K pte."""
        self._split_around(hva >> self.page_shift, 1, LEVEL_4K)
        self.ptes[hva >> self.page_shift] = HostPte(pfn, writable, LEVEL_4K)

    def _split_around(self, first: int, count: int, new_level: int) -> None:
        """Changing part of a huge mapping splits it first (split_huge_pmd/pud): the pages
        of a huge frame left outside the change become 4K ptes with their pfns."""
        for level in (LEVEL_2M, LEVEL_1G):
            if level <= new_level:
                continue
            n = LEVEL_PAGE_SIZE[level] >> self.page_shift
            for frame in range(first - first % n, first + count, n):
                head = self.ptes.get(frame)
                if head is None or head.level < level:
                    continue      # huge mappings are frame aligned: the head tells
                for page in range(frame, frame + n):
                    pte = self.ptes.get(page)
                    if pte is not None and pte.level >= level and not first <= page < first + count:
                        self.ptes[page] = HostPte(pte.pfn, pte.writable, LEVEL_4K)




def pages(h) -> dict:
    return dict(h.ptes)


def test_split_of_a_2m_frame_by_a_4k_change_keeps_pfns():
    h = HostPageTable()
    h.map(HVA, M2, 0x40000, M2, True)
    h.set_pte(HVA + 7 * P, 0x9000, False)
    got = pages(h)
    assert len(got) == 512
    for i in range(512):
        want = HostPte(0x9000, False, LEVEL_4K) if i == 7 else HostPte(0x40000 + i, True, LEVEL_4K)
        assert got[(HVA >> 12) + i] == want
    # the next 2M frame is not touched
    h.map(HVA + M2, M2, 0x40200, M2, True)
    h.set_pte(HVA + 7 * P, 0x9001, False)
    assert h.lookup(HVA + M2).level == LEVEL_2M


def test_unmapping_a_middle_piece():
    h = HostPageTable()
    h.map(HVA, 16 * P, 0x100, P, True)
    h.map(HVA + 4 * P, 8 * P, None, P, True)
    assert [h.lookup(HVA + i * P) is not None for i in range(16)] == [True] * 4 + [False] * 8 + [True] * 4
    assert h.lookup(HVA + 12 * P) == HostPte(0x10c, True, LEVEL_4K)
    assert h.extents() == [HostExtent(HVA, HVA + 4 * P, 0x100, True, LEVEL_4K),
                           HostExtent(HVA + 12 * P, HVA + 16 * P, 0x10c, True, LEVEL_4K)]
    assert not h.present_in(HVA + 4 * P, HVA + 12 * P)
    assert h.present_in(HVA + 4 * P, HVA + 12 * P + 1)        # touches page 12
    assert h.present_in(HVA + 4 * P - 1, HVA + 5 * P)         # touches page 3
    assert h.extents(HVA + 2 * P, HVA + 13 * P) == [HostExtent(HVA + 2 * P, HVA + 4 * P, 0x102, True, LEVEL_4K),
                                                    HostExtent(HVA + 12 * P, HVA + 13 * P, 0x10c, True, LEVEL_4K)]
    # unmapping a middle piece of a 2M page splits the rest into 4K ptes
    h.map(HVA + M2, M2, 0x40000, M2, True)
    h.map(HVA + M2 + 8 * P, 4 * P, None, P, True)
    assert h.lookup(HVA + M2 + 7 * P) == HostPte(0x40007, True, LEVEL_4K)
    assert h.lookup(HVA + M2 + 8 * P) is None and h.lookup(HVA + M2 + 11 * P) is None
    assert h.lookup(HVA + M2 + 12 * P) == HostPte(0x4000c, True, LEVEL_4K)


def test_lookup_at_both_ends():
    h = HostPageTable()
    h.map(HVA, M2, 0x40000, M2, False)
    assert h.lookup(HVA - 1) is None
    assert h.lookup(HVA) == HostPte(0x40000, False, LEVEL_2M)
    assert h.lookup(HVA + M2 - 1) == HostPte(0x401ff, False, LEVEL_2M)
    assert h.lookup(HVA + M2) is None


def test_16_tib_mapping_is_one_extent_and_looks_up_its_last_page():
    h = HostPageTable()
    size = 16 << 40
    h.map(HVA, size, 1 << 30, G1, True)
    assert len(h.extents()) == 1
    assert h.lookup(HVA + size - P) == HostPte((1 << 30) + (size // P) - 1, True, LEVEL_1G)
    assert h.lookup(HVA + size) is None
    # a 4K change in the middle of the 1G frames splits only the 1G frame it lands in
    mid = HVA + 5 * G1 + 3 * M2 + 9 * P
    h.set_pte(mid, 0x77, True)
    assert h.lookup(mid) == HostPte(0x77, True, LEVEL_4K)
    assert h.lookup(mid + P).level == LEVEL_4K
    assert h.lookup(HVA + 5 * G1).level == LEVEL_4K
    assert h.lookup(HVA + 5 * G1 - P).level == LEVEL_1G
    assert h.lookup(HVA + 6 * G1).level == LEVEL_1G
    assert len(h.extents()) == 5      # 1G | 4K pages | the new pte | 4K pages | 1G
    h.map(HVA, size, None, P, True)
    assert h.extents() == [] and not h.present_in(HVA, HVA + size)


def test_change_in_the_first_2m_of_a_1g_page_splits_that_2m_only():
    # what the per-page table did (the 2M pass makes the head 4K, so the 1G pass skips the frame)
    h = HostPageTable(page_shift=16)
    ref = PagedHostPageTable(page_shift=16)
    for t in (h, ref):
        t.map(HVA, G1, 1 << 14, G1, True)
        t.set_pte(HVA + 5 * (1 << 16), 3, True)
    assert pages(h) == ref.ptes
    assert h.lookup(HVA + M2).level == LEVEL_1G


@pytest.mark.parametrize("shift,seed", [(20, s) for s in range(40)] + [(16, s) for s in range(3)])
def test_extents_agree_with_the_per_page_table(shift, seed):
    # large base pages keep the per-page table small: at 1M a 1G frame is 1024 pages and a
    # 2M one 2; at 64K, 16384 and 32
    rng = random.Random(seed)
    pg = 1 << shift
    h, ref = HostPageTable(page_shift=shift), PagedHostPageTable(page_shift=shift)
    span = 3 * G1
    for _ in range(30):
        kind = rng.random()
        if kind < 0.3:
            addr = HVA + rng.randrange(span // pg) * pg
            args = ("set_pte", addr, rng.randrange(1 << 20), rng.random() < 0.5)
        else:
            size_name = rng.choice([P * 16, M2, M2, G1])
            step = max(size_name, pg)
            addr = HVA + rng.randrange(span // step) * step
            size = step * rng.choice([1, 1, 2, 3]) if size_name > pg * 16 else pg * rng.randrange(0, 40)
            unmap = kind > 0.8
            if unmap:
                args = ("map", addr + rng.randrange(0, 4) * pg, size, None, rng.choice([P * 16, M2, G1]), True)
            else:
                ps = size_name if size_name in LEVEL_PAGE_SIZE.values() else P
                if size_name == P * 16:
                    ps = P
                args = ("map", addr, size, (addr >> shift) + rng.randrange(4) * (step >> shift), ps,
                        rng.random() < 0.5)
        results = []
        for t in (h, ref):
            try:
                getattr(t, args[0])(*args[1:])
                results.append(None)
            except ValueError as e:
                results.append(str(e))
        assert results[0] == results[1], args
        assert pages(h) == ref.ptes, args
    for _ in range(200):
        addr = HVA - pg + rng.randrange((span + 2 * pg) // pg) * pg + rng.randrange(pg)
        assert h.lookup(addr) == ref.lookup(addr)
        end = addr + rng.randrange(1, 64) * pg
        assert h.present_in(addr, end) == any(
            ref.lookup(a) is not None for a in range(addr & -pg, end, pg))


# ----- language/wellformed.py: mapped host pages as runs ----------------------------------------

def test_page_runs_agree_with_a_set_of_pages():
    from language.wellformed import PageRuns
    rng = random.Random(5)
    runs, pages_ = PageRuns(), set()
    for _ in range(400):
        lo = rng.randrange(200)
        hi = lo + rng.randrange(0, 30)
        if rng.random() < 0.6:
            runs.add(lo, hi)
            pages_.update(range(lo, hi))
        else:
            runs.remove(lo, hi)
            pages_.difference_update(range(lo, hi))
        assert {p for a, b in runs.runs() for p in range(a, b)} == pages_
        got = runs.runs()
        assert all(b1 < a2 for (_, b1), (a2, _) in zip(got, got[1:]))      # merged, disjoint
        q = rng.randrange(230)
        assert (q in runs) == (q in pages_)
        assert runs.intersects(q, q + 7) == any(p in pages_ for p in range(q, q + 7))


def _old_mapped_in(host_pages: set, start: int, end: int) -> bool:
    P_ = 4096
    if end - start > len(host_pages) * P_:
        return any(start < (p + 1) * P_ and p * P_ < end for p in host_pages)
    return any(p in host_pages for p in range(start // P_, (end + P_ - 1) // P_))


def test_walk_state_over_runs_answers_as_the_page_set_did():
    from language.wellformed import WalkState
    rng = random.Random(9)
    for _ in range(30):
        st, old = WalkState(), set()
        for _ in range(6):
            lo = rng.randrange(64)
            hi = lo + rng.randrange(1, 20)
            st.host_pages.add(lo, hi)
            old.update(range(lo, hi))
        st.open_ranges = [(s, s + rng.randrange(0, 12 * P) + rng.choice([0, 1, P - 1]), True)
                          for s in (rng.randrange(0, 70 * P) for _ in range(rng.randrange(3)))]
        for _ in range(50):
            start = rng.randrange(0, 90 * P)
            end = start + rng.choice([0, 1, P, 3 * P + 5, 40 * P])
            assert st.mapped_in(start, end) == _old_mapped_in(old, start, end)
            lo, hi = start // P, end // P + rng.randrange(3)
            want = next((p for p in range(lo, hi) if p in old and not st.covered(p)), None)
            assert st.first_uncovered(lo, hi) == want


# ----- fuzz/runner_tasks.lost_race over extents ---------------------------------------------

def test_lost_race_names_the_first_present_page_no_invalidation_covers():
    from fuzz.runner_tasks import lost_race
    from language.trace import HostMap
    h = HostPageTable()
    h.map(HVA, G1, 1 << 18, G1, True)
    h.open_invalidations.append(("mm0", HVA, HVA + 5 * P + 1))      # covers pages 0..4 whole
    h.open_invalidations.append(("mm1", HVA + 5 * P, HVA + 9 * P))  # 5..8
    why = lost_race(h, HostMap(HVA, G1, None))
    assert why.startswith(f"host page {HVA + 9 * P:#x} is already present")
    h.open_invalidations.append(("mm2", HVA + 8 * P, HVA + G1))
    assert lost_race(h, HostMap(HVA, G1, None)) is None
    assert lost_race(h, HostMap(HVA + G1, P, 5)) is None          # absent: a host fault maps it


# ----- oracles/compare.stale_leaf over extents ----------------------------------------------

def _old_stale_leaf(leaf, slots, host):
    slot = next((s for s in slots if s.as_id == leaf.as_id and s.has_gfn(leaf.gfn)
                 and (leaf.hva < 0 or s.gfn_to_hva(leaf.gfn) == leaf.hva)), None)
    if slot is None:
        return "outside-memslot", None
    for i in range(leaf.pages):
        gfn = leaf.gfn + i
        if not slot.has_gfn(gfn):
            return "outside-memslot", f"as{leaf.as_id} gfn {gfn:#x} is mapped by a leaf that leaves {slot.describe()}"
        pte = host.lookup(slot.gfn_to_hva(gfn))
        if pte is None or pte.pfn != leaf.pfn + i:
            have = "nothing" if pte is None else f"pfn {pte.pfn:#x}"
            return "pfn", (f"as{leaf.as_id} gfn {gfn:#x} maps pfn {leaf.pfn + i:#x} but the host maps "
                           f"{have} at hva {slot.gfn_to_hva(gfn):#x}")
    return None


def test_stale_leaf_over_extents_finds_the_gfn_the_page_walk_found():
    from impls.machine import Leaf, Memslot
    from oracles.compare import stale_leaf
    rng = random.Random(3)
    slot = Memslot(0, 0, 0x200, 1000, HVA)         # a 2M leaf at gfn 0x400 leaves it
    for _ in range(300):
        h = HostPageTable()
        h.map(HVA, M2 * 2, 0x40000, M2, True)
        for _ in range(rng.randrange(3)):
            page = rng.randrange(1024)
            if rng.random() < 0.5:
                h.set_pte(HVA + page * P, 0x40000 + page + rng.choice([0, 1]), True)
            else:
                h.map(HVA + page * P, P * rng.randrange(1, 4), None, P, True)
        pages_ = rng.choice([1, 512])
        gfn = 0x200 + rng.randrange(1024 + 8) // pages_ * pages_
        leaf = Leaf(0, gfn, LEVEL_2M if pages_ > 1 else LEVEL_4K, 0x40000 + gfn - 0x200 + rng.choice([0, 0, 1]),
                    pages_, hva=slot.gfn_to_hva(gfn))
        want = _old_stale_leaf(leaf, [slot], h)
        got = stale_leaf(leaf, [slot], h)
        assert (got and got[0]) == (want and want[0])
        if want and want[1]:
            assert got[1] == want[1]


def test_a_copy_keeps_the_mapping_it_was_taken_of():
    host = HostPageTable()
    host.map(0x200000, 0x200000, 0x400, 0x200000, True)
    then = host.copy()
    host.set_pte(0x201000, 0x9000, False)              # splits the 2M frame in the original only
    assert then.lookup(0x201000).pfn == 0x401 and then.lookup(0x201000).level != host.lookup(0x201000).level
    assert host.lookup(0x201000).pfn == 0x9000
    assert [(e.hva, e.hva_end, e.pfn) for e in then.extents()] == [(0x200000, 0x400000, 0x400)]

"""The TDP MMU's paging structure as the iterator reads it (arch/x86/kvm/mmu/tdp_iter.c): a
root, which SPTE of a level is present and whether it is a leaf or a table, and the pre-order
walk of for_each_tdp_pte.  X86TdpMmu (impls/x86_tdp.py) mixes it in; every change to the
structure (zeroing, installing, tearing tables down) and every decision a handler makes stays
there.

Kept apart from x86_tdp.py so that the atheris engine's coverage leaves it out
(fuzz/engines/atheris_engine.py INSTRUMENT_EXCLUDE): like the host page table and the memslot
index in impls/machine.py, its branches say how a lookup went, not what a kernel version
decided; instrumented, they took about a quarter of the x86-tdp target's time in the libFuzzer
loop (14,274 against 19,291 events/s, bench/atheris_speed.py --arch x86-tdp --seconds 20).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from .machine import LEVEL_1G, LEVEL_4K

ROOT_LEVEL = 4                    # PT64_ROOT_4LEVEL: a 4-level EPT/NPT root


@dataclass
class Root:
    """One TDP MMU root: its address space (role.smm), role.invalid (v5.13 fast zap), its
    present non-leaf SPTEs as (level of the SPTE, first gfn it spans), its reference count
    (v5.12 root_count, v5.13 tdp_mmu_root_count: one per vCPU running on it, one per
    yield-safe walk in it, one from a fast zap until its deferred zap is done) and whether the
    last reference went (the root was unlinked, zapped and freed: a walk that still holds a
    pointer to it reads freed memory)."""
    id: int
    as_id: int
    invalid: bool = False
    tables: set[tuple[int, int]] = field(default_factory=set)
    refs: int = 0
    freed: bool = False


class TdpIter:
    """Reads of the paging structure of a root; the class using it has `leaves` (Kvm.leaves)."""

    # ----- sizes -----------------------------------------------------------------------------
    def span(self, level: int) -> int:
        """KVM_PAGES_PER_HPAGE for levels 1-4."""
        # v5.12 arch/x86/include/asm/kvm_host.h KVM_PAGES_PER_HPAGE
        return 1 << (9 * (level - 1))

    # ----- the paging structure ----------------------------------------------------------------
    def spte_kind(self, root: Root, level: int, gfn: int) -> str | None:
        """'leaf', 'table' or None (not present) for the SPTE of `level` at aligned `gfn`."""
        # v5.12 arch/x86/kvm/mmu/spte.h is_shadow_present_pte / is_last_spte
        if level <= LEVEL_1G and (root.as_id, gfn, level) in self.leaves:
            return "leaf"
        if (level, gfn) in root.tables:
            return "table"
        return None

    def present_at(self, root: Root, level: int) -> list[int]:
        """Sorted gfns of the present SPTEs of one level."""
        # v5.12 arch/x86/kvm/mmu/tdp_iter.c tdp_iter_refresh_sptep (the SPTEs the iterator reads)
        out = {g for lv, g in root.tables if lv == level}
        if level <= LEVEL_1G:
            out |= {k[1] for k in self.leaves if k[0] == root.as_id and k[2] == level}
        return sorted(out)

    def present_by_level(self, root: Root) -> dict[int, list[int]]:
        """present_at for every level 1..ROOT_LEVEL, from one pass over the tables and one over
        the leaves (the same lists as calling present_at per level)."""
        out: dict[int, set[int]] = {lv: set() for lv in range(ROOT_LEVEL, 0, -1)}
        for lv, g in root.tables:
            out[lv].add(g)
        as_id = root.as_id
        for a, g, lv in self.leaves:
            if a == as_id and lv <= LEVEL_1G:
                out[lv].add(g)
        return {lv: sorted(gs) for lv, gs in out.items()}

    def walk_ptes(self, root: Root, start: int, end: int):
        """Yield (level, gfn) of the present SPTEs the TDP iterator visits over [start, end), in
        pre-order; after each yield the caller may have zeroed the SPTE, and the walk descends
        only into what is still a present table.

        v5.12 arch/x86/kvm/mmu/tdp_iter.c tdp_iter_start / tdp_iter_next: the first SPTE of each
        level is the one containing start; the walk goes on while the SPTE's aligned gfn < end.
        Non-present SPTEs are skipped here: every handler we model does nothing on them."""
        # v5.12 arch/x86/kvm/mmu/tdp_iter.h for_each_tdp_pte
        if start >= end:
            return
        index = self.present_by_level(root)
        # the recursion of the iterator's levels as an explicit stack of frames
        # [level, present gfns of the level, next position, stop gfn, pages per SPTE]: the same
        # visits in the same order as nested generators, without a generator per table
        span, spte_kind, bisect_left = self.span, self.spte_kind, bisect.bisect_left

        def frame(level: int, lo: int, hi: int) -> list:
            n = span(level)
            gfns = index[level]
            return [level, gfns, bisect_left(gfns, max(lo, start - start % n)), min(hi, end), n]

        stack = [frame(ROOT_LEVEL, 0, span(ROOT_LEVEL + 1))]
        while stack:
            f = stack[-1]
            level, gfns, i, stop, n = f
            if i >= len(gfns) or gfns[i] >= stop:
                stack.pop()
                continue
            g = gfns[i]
            f[2] = i + 1
            if spte_kind(root, level, g) is None:
                continue
            yield level, g
            if level > LEVEL_4K and spte_kind(root, level, g) == "table":
                stack.append(frame(level - 1, g, g + n))

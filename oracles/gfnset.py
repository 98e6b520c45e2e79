"""Sets of (address space, gfn) kept as merged half-open intervals, so a 1 GiB mapping costs
one interval, not 262144 entries."""
from __future__ import annotations

from typing import Iterable


class GfnSet:
    """`_runs`: per address space with gfns, in increasing as_id order, its gfns as sorted,
    disjoint, non-adjacent [start, end) runs (the one form of a set, so equality is ==)."""

    __slots__ = ("_runs",)

    def __init__(self, spans: Iterable[tuple[int, int, int]] = ()):
        # one sweep over the sorted spans, merging overlapping and adjacent runs per address space
        spans = sorted(spans)
        out: dict[int, tuple] = {}
        if spans:
            cur = None
            runs: list = []
            lo = hi = 0
            for as_id, start, end in spans:
                if start >= end:
                    continue
                if as_id != cur:
                    if cur is not None:
                        runs.append((lo, hi))
                        out[cur] = tuple(runs)
                    cur, runs, lo, hi = as_id, [], start, end
                elif start <= hi:
                    if end > hi:
                        hi = end
                else:
                    runs.append((lo, hi))
                    lo, hi = start, end
            if cur is not None:
                runs.append((lo, hi))
                out[cur] = tuple(runs)
        self._runs = out

    def spans(self) -> list[tuple[int, int, int]]:
        return [(a, s, e) for a in sorted(self._runs) for s, e in self._runs[a]]

    def __bool__(self) -> bool:
        return bool(self._runs)

    def __eq__(self, other) -> bool:
        return isinstance(other, GfnSet) and self._runs == other._runs

    def __hash__(self) -> int:
        return hash(tuple(self.spans()))

    def __len__(self) -> int:
        return sum(e - s for _, s, e in self.spans())

    def __contains__(self, item: tuple[int, int]) -> bool:
        as_id, gfn = item
        return any(s <= gfn < e for s, e in self._runs.get(as_id, ()))

    def intersects(self, as_id: int, start: int, end: int) -> bool:
        for s, e in self._runs.get(as_id, ()):
            if s < end and start < e:
                return True
        return False

    def __or__(self, other: "GfnSet") -> "GfnSet":
        return GfnSet(self.spans() + other.spans())

    def __sub__(self, other: "GfnSet") -> "GfnSet":
        # both sides are sorted, merged runs: one sweep per address space.  The pieces left of
        # disjoint, non-adjacent runs are disjoint and non-adjacent (a cut or a gap of the
        # original lies between any two), so the result is already in canonical form
        runs_out: dict[int, tuple] = {}
        for a, runs in self._runs.items():
            cut = other._runs.get(a)
            if not cut:
                runs_out[a] = runs
                continue
            out = []
            k = 0
            for s, e in runs:
                while k < len(cut) and cut[k][1] <= s:
                    k += 1                     # cuts wholly before this run never matter again
                j = k
                while j < len(cut) and cut[j][0] < e:
                    cs, ce = cut[j]
                    if s < cs:
                        out.append((s, cs))
                    s = max(s, ce)
                    j += 1
                if s < e:
                    out.append((s, e))
            if out:
                runs_out[a] = tuple(out)
        res = GfnSet.__new__(GfnSet)
        res._runs = runs_out
        return res

    def __and__(self, other: "GfnSet") -> "GfnSet":
        # one sweep per address space both have; pieces of disjoint, non-adjacent runs are
        # themselves disjoint and non-adjacent, so the result is already in canonical form
        runs: dict[int, tuple] = {}
        for a, mine in self._runs.items():
            theirs = other._runs.get(a)
            if not theirs:
                continue
            out = []
            i = j = 0
            while i < len(mine) and j < len(theirs):
                s1, e1 = mine[i]
                s2, e2 = theirs[j]
                s, e = max(s1, s2), min(e1, e2)
                if s < e:
                    out.append((s, e))
                if e1 <= e2:
                    i += 1
                else:
                    j += 1
            if out:
                runs[a] = tuple(out)
        res = GfnSet.__new__(GfnSet)
        res._runs = runs
        return res

    def __repr__(self) -> str:
        return "GfnSet(" + ", ".join(f"as{a}:[{s:#x},{e:#x})" for a, s, e in self.spans()) + ")"

    def describe(self) -> str:
        return ", ".join(f"as{a} gfn [{s:#x},{e:#x})" for a, s, e in self.spans()) or "none"

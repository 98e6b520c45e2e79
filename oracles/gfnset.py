"""Sets of (address space, gfn) kept as merged half-open intervals, so a 1 GiB mapping costs
one interval, not 262144 entries."""
from __future__ import annotations

from typing import Iterable


class GfnSet:
    def __init__(self, spans: Iterable[tuple[int, int, int]] = ()):
        merged: dict[int, list[list[int]]] = {}
        for as_id, start, end in sorted(spans):
            if start >= end:
                continue
            runs = merged.setdefault(as_id, [])
            if runs and start <= runs[-1][1]:
                runs[-1][1] = max(runs[-1][1], end)
            else:
                runs.append([start, end])
        self._runs = {a: tuple((s, e) for s, e in r) for a, r in merged.items()}

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
        return any(s < end and start < e for s, e in self._runs.get(as_id, ()))

    def __or__(self, other: "GfnSet") -> "GfnSet":
        return GfnSet(self.spans() + other.spans())

    def __sub__(self, other: "GfnSet") -> "GfnSet":
        # both sides are sorted, merged runs: one sweep per address space
        out = []
        for a, runs in self._runs.items():
            cut = other._runs.get(a, ())
            k = 0
            for s, e in runs:
                while k < len(cut) and cut[k][1] <= s:
                    k += 1                     # cuts wholly before this run never matter again
                j = k
                while j < len(cut) and cut[j][0] < e:
                    cs, ce = cut[j]
                    if s < cs:
                        out.append((a, s, cs))
                    s = max(s, ce)
                    j += 1
                if s < e:
                    out.append((a, s, e))
        return GfnSet(out)

    def __and__(self, other: "GfnSet") -> "GfnSet":
        return self - (self - other)

    def __repr__(self) -> str:
        return "GfnSet(" + ", ".join(f"as{a}:[{s:#x},{e:#x})" for a, s, e in self.spans()) + ")"

    def describe(self) -> str:
        return ", ".join(f"as{a} gfn [{s:#x},{e:#x})" for a, s, e in self.spans()) or "none"

"""Trace-level minimization: delta debugging over events, then over numbers, keeping the
same divergence signature.  Paired events (invalidate start/end, fault begin/commit) are
removed together, and every candidate must stay well formed.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

from .wellformed import well_formed
from .trace import (ClearFlushYoung, ClearYoung, Event, InvalidateRangeEnd,
                    InvalidateRangeStart, partner)

P = 4096


def _simpler_values(ev: Event) -> list[Event]:
    """Candidate simplifications of one event's numbers, simplest first."""
    out = []
    if isinstance(ev, (InvalidateRangeStart, InvalidateRangeEnd, ClearFlushYoung, ClearYoung)):
        s, e = ev.start, ev.end
        cands = [(s, s + 1), (s - s % P, s - s % P + P), (s - s % P, e + (-e) % P),
                 (s, e - P), (s + P, e)]
        for ns, ne in cands:
            # strictly smaller (length, start): no cycles
            if 0 <= ns <= ne and (ne - ns, ns) < (e - s, s):
                out.append(dataclasses.replace(ev, start=ns, end=ne))
    for f in dataclasses.fields(ev):
        v = getattr(ev, f.name)
        if isinstance(v, bool) and f.name in ("write", "writable") and v:
            out.append(dataclasses.replace(ev, **{f.name: False}))
        if f.name == "blockable" and not v:
            out.append(dataclasses.replace(ev, blockable=True))
    return out


def minimize(events: list[Event], fails: Callable[[list[Event]], bool],
             max_seconds: float = 20.0) -> list[Event]:
    """Smallest trace we can find (within max_seconds) for which `fails` still holds."""
    deadline = time.monotonic() + max_seconds
    best = list(events)

    def attempt(cand: list[Event]) -> bool:
        nonlocal best
        if len(cand) > len(best) or not well_formed(cand):
            return False
        if fails(cand):
            best = cand
            return True
        return False

    # 1. ddmin-style chunk removal
    chunk = max(1, len(best) // 2)
    while chunk >= 1 and time.monotonic() < deadline:
        progressed = False
        i = 0
        while i < len(best) and time.monotonic() < deadline:
            if attempt(best[:i] + best[i + chunk:]):
                progressed = True
            else:
                i += chunk
        if not progressed:
            chunk //= 2
    # 2. pairs: remove a start with its end, a fault begin with its commit
    i = 0
    while i < len(best) and time.monotonic() < deadline:
        j = partner(best, i)
        if j is None or not attempt([e for k, e in enumerate(best) if k not in (i, j)]):
            i += 1
    # 3. simpler numbers and flags, event by event (paired ends follow their starts);
    # passes repeat while they make progress, each pass resumes where it succeeded
    changed = True
    while changed and time.monotonic() < deadline:
        changed = False
        for i in range(len(best)):
            ev = best[i]
            if isinstance(ev, InvalidateRangeEnd):
                continue
            for simpler in _simpler_values(ev):
                cand = list(best)
                cand[i] = simpler
                j = partner(best, i)
                if j is not None and isinstance(ev, InvalidateRangeStart):
                    cand[j] = dataclasses.replace(best[j], start=simpler.start, end=simpler.end)
                if attempt(cand):
                    changed = True
                    break
    return best

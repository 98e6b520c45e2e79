"""Trace-level minimization: delta debugging over events, then over numbers, keeping the
same divergence signature.  Paired events (invalidate start/end, fault begin/commit) are
removed together, and every candidate must stay well formed.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

from language.wellformed import ALLOWANCES, allowances_needed, well_formed
from language.trace import (ClearFlushYoung, ClearYoung, Event, InvalidateRangeEnd,
                    InvalidateRangeStart, partner, Schedule)

P = 4096


def _simpler_values(ev: Event) -> list[Event]:
    """Candidate simplifications of one event's numbers, simplest first."""
    out = []
    if isinstance(ev, Schedule):
        # fewer preemptions, fewer skipped yields, or a shallower PCT schedule (dropping the
        # directive altogether, the default schedule, is tried by the event removal passes)
        for k in range(len(ev.preempt)):
            out.append(dataclasses.replace(ev, preempt=ev.preempt[:k] + ev.preempt[k + 1:]))
        for k in range(len(ev.no_resched)):
            out.append(dataclasses.replace(ev, no_resched=ev.no_resched[:k] + ev.no_resched[k + 1:]))
        if ev.pct is not None and ev.pct[1] > 1:
            out.append(dataclasses.replace(ev, pct=(ev.pct[0], ev.pct[1] - 1)))
        return out
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


class _Clock:
    """The minimizer's budget: seconds of wall time, or (for results that must depend on the
    input alone) a number of calls of `fails`."""

    def __init__(self, max_seconds: float, max_attempts: int | None):
        self.max_attempts = max_attempts
        self.attempts = 0
        self.deadline = time.monotonic() + max_seconds

    def left(self) -> bool:
        if self.max_attempts is not None:
            return self.attempts < self.max_attempts
        return time.monotonic() < self.deadline


def minimize(events: list[Event], fails: Callable[[list[Event]], bool],
             max_seconds: float = 20.0, max_attempts: int | None = None) -> list[Event]:
    """Smallest trace we can find for which `fails` still holds, within max_seconds, or,
    when max_attempts is given, within that many calls of `fails` whatever the time (the
    result is then a function of the input alone).  A candidate may not use a well-formedness
    allowance the input did not (language.wellformed.ALLOWANCES): what a running kernel could send
    minimizes to what a running kernel could send, so reachability judges the real trace."""
    clock = _Clock(max_seconds, max_attempts)
    best = list(events)
    allowed = allowances_needed(best) if well_formed(best) else set(ALLOWANCES)

    def attempt(cand: list[Event]) -> bool:
        nonlocal best
        if len(cand) > len(best) or not clock.left() or not well_formed(cand):
            return False
        if allowances_needed(cand) - allowed:
            return False
        clock.attempts += 1
        if fails(cand):
            best = cand
            return True
        return False

    # 1. ddmin-style chunk removal
    chunk = max(1, len(best) // 2)
    while chunk >= 1 and clock.left():
        progressed = False
        i = 0
        while i < len(best) and clock.left():
            if attempt(best[:i] + best[i + chunk:]):
                progressed = True
            else:
                i += chunk
        if not progressed:
            chunk //= 2
    # 2. pairs: remove a start with its end, a fault begin with its commit
    i = 0
    while i < len(best) and clock.left():
        j = partner(best, i)
        if j is None or not attempt([e for k, e in enumerate(best) if k not in (i, j)]):
            i += 1
    # 3. simpler numbers and flags, event by event (paired ends follow their starts);
    # passes repeat while they make progress, each pass resumes where it succeeded
    changed = True
    while changed and clock.left():
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

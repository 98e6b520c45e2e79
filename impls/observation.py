"""What a model reports for one event (design card section 5).

The same fields describe every version (v5.12's hva hooks, v5.13's gfn handlers), so the two
sides of a comparison are read the same way.

Models fill these in as they run; the oracles compare them.  Every gfn range is half-open
[start, end) after normalization: a model whose handler consumes an inclusive end, or a
(gpa, bytes) pair, reports the gfns that handler really touches.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .machine import Leaf


@dataclass(slots=True)
class HandlerCall:
    """One call from a walker into an arch handler, normalized to the gfns it acts on."""
    hook: str                  # e.g. "kvm_unmap_rmapp", "kvm_unmap_gfn_range"
    as_id: int
    slot: int
    start: int                 # first gfn the handler acts on
    end: int                   # one past the last gfn the handler acts on
    detail: str = ""           # arch-specific shape, e.g. per-level rmap visits

    def to_json(self) -> dict:
        d = {"hook": self.hook, "as_id": self.as_id, "slot": self.slot,
             "gfns": [hex(self.start), hex(self.end)]}
        if self.detail:
            d["detail"] = self.detail
        return d


@dataclass
class Flush:
    """One TLB flush: all translations, or a gfn range of one address space."""
    scope: str                 # "all" | "range"
    locked: bool               # mmu_lock held when it was issued
    origin: str                # function that issued it, e.g. "kvm_flush_remote_tlbs"
    as_id: int | None = None
    start: int = 0
    end: int = 0

    def covers(self, as_id: int, start: int, end: int) -> bool:
        if self.scope == "all":
            return True
        return (self.as_id is None or self.as_id == as_id) and self.start < end and start < self.end

    def to_json(self) -> dict:
        d = {"scope": self.scope, "locked": self.locked, "origin": self.origin}
        if self.scope == "range":
            d.update(as_id=self.as_id, gfns=[hex(self.start), hex(self.end)])
        return d


@dataclass(slots=True, init=False)
class Observation:
    """Everything one model did for one event.  (Slots: one is made per event and side; the
    __init__ is written out, as the generated one with eight default factories took twice as
    long.  Every list defaults to a new empty one, as before.)"""
    op: str
    calls: list[HandlerCall]
    zapped: list[Leaf]                      # leaves removed (state before removal)
    aged: list[Leaf]                        # leaves whose young bit was cleared
    changed: list[tuple[Leaf, Leaf]]        # (before, after) in place
    installed: list[Leaf]                   # leaves created
    flushes: list[Flush]
    young: int | None                       # age / test_age result
    lock_taken: bool
    warnings: list[str]
    error: str | None                       # errno name for a refused update
    note: str                               # e.g. "fault retried"
    crashed: str | None                     # a candidate model raised
    # what the machine itself saw go wrong in task mode, as (class, shape, detail): a fault that
    # installs inside an open invalidation, a guest using a zapped translation while unflushed
    violations: list[tuple[str, str, str]]

    def __init__(self, op: str, calls=None, zapped=None, aged=None, changed=None, installed=None,
                 flushes=None, young: int | None = None, lock_taken: bool = False, warnings=None,
                 error: str | None = None, note: str = "", crashed: str | None = None,
                 violations=None) -> None:
        self.op = op
        self.calls = [] if calls is None else calls
        self.zapped = [] if zapped is None else zapped
        self.aged = [] if aged is None else aged
        self.changed = [] if changed is None else changed
        self.installed = [] if installed is None else installed
        self.flushes = [] if flushes is None else flushes
        self.young = young
        self.lock_taken = lock_taken
        self.warnings = [] if warnings is None else warnings
        self.error = error
        self.note = note
        self.crashed = crashed
        self.violations = [] if violations is None else violations

    def to_json(self) -> dict:
        d: dict = {"op": self.op}
        if self.calls:
            d["calls"] = [c.to_json() for c in self.calls]
        for name in ("zapped", "aged", "installed"):
            leaves = getattr(self, name)
            if leaves:
                d[name] = [leaf_json(x) for x in leaves]
        if self.changed:
            d["changed"] = [{"before": leaf_json(a), "after": leaf_json(b)} for a, b in self.changed]
        if self.flushes:
            d["flushes"] = [f.to_json() for f in self.flushes]
        if self.young is not None:
            d["young"] = self.young
        d["lock_taken"] = self.lock_taken
        if self.violations:
            d["violations"] = [list(v) for v in self.violations]
        for name in ("warnings", "error", "note", "crashed"):
            v = getattr(self, name)
            if v:
                d[name] = v
        return d


def leaf_json(leaf: Leaf) -> dict:
    return {"as_id": leaf.as_id, "gfn": hex(leaf.gfn), "level": leaf.level, "pages": leaf.pages,
            "pfn": hex(leaf.pfn), "young": leaf.young, "writable": leaf.writable,
            "hva": hex(leaf.hva) if leaf.hva >= 0 else None}

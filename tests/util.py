"""Small builders for hand-written traces in tests."""
from __future__ import annotations

from fuzz.runner import Side, apply_event, run_trace
from language.trace import FaultBegin, FaultCommit, HostMap, SetMemoryRegion
from impls.kvm import Kvm
from impls.observation import Observation
from oracles.gfnset import GfnSet
from oracles.triage import load_known

P = 4096
HVA = 0x7f0000000000          # 1 GiB aligned, so 2M/1G host pages line up


def slot(as_id: int, slot_id: int, base_gfn: int, npages: int, hva: int, flags: int = 0) -> SetMemoryRegion:
    return SetMemoryRegion(as_id, slot_id, flags, base_gfn * P, npages * P, hva)


def host(hva: int, npages: int, pfn: int, page_size: int = P, writable: bool = True) -> HostMap:
    return HostMap(hva, npages * P, pfn, page_size, writable)


_fault_ids = iter(range(1 << 30))


def fault(as_id: int, gfn: int, write: bool = False) -> list:
    """fault_begin immediately followed by fault_commit."""
    n = next(_fault_ids)
    return [FaultBegin(n, as_id, gfn, write), FaultCommit(n)]


def run_model(cls: type[Kvm], events: list) -> tuple[Kvm, list[Observation]]:
    """Run events on one model; return it and one observation per event."""
    model = cls()
    return model, [apply_event(model, e) for e in events]


def handed(obs: Observation) -> GfnSet:
    """The gfns the walker handed to arch handlers."""
    return GfnSet((c.as_id, c.start, c.end) for c in obs.calls)


def gfns(*spans: tuple[int, int, int]) -> GfnSet:
    return GfnSet(spans)


def diverge(arch: str, old: tuple[str, type[Kvm]], new: tuple[str, type[Kvm]], events: list):
    """Divergences between two models on a trace (known list applied)."""
    return run_trace(events, arch, Side(*old), Side(*new), load_known()).divergences


def resched_points(cls: type[Kvm], events: list) -> tuple[Kvm, list[list[int]]]:
    """Run events on a model of cls that records, at every cond_resched_lock, the gfns still
    mapped then; return the model and those lists (one per point offered)."""
    class Spy(cls):
        def cond_resched_lock(self):
            self.seen.append(sorted(k[1] for k in self.leaves))
            super().cond_resched_lock()
    model = Spy()
    model.seen = []
    for e in events:
        apply_event(model, e)
    return model, model.seen

"""The trace language: one dataclass per event kind and a versioned, human-readable JSON codec.

    {"schema": "memslot-fuzz-trace/1",
     "events": [{"op": "set_memory_region", "as_id": 0, "slot": 0, "flags": 0,
                 "guest_phys_addr": "0x100000", "memory_size": "0x4000",
                 "userspace_addr": "0x7f0000000000"}, ...]}

Addresses and sizes are written as hex strings (plain integers are accepted too).  Every
field is checked on load; a bad one is reported as `FILE: event N (op): field: problem`.

Tasks (design card section 9).  Every event may name the kernel task that issues it:
`"task": "mm0"` (an mm context: notifier events and host mapping changes), `"vcpu1"` (guest
faults and accesses) or `"ioctl"` (memslot updates).  A trace is then an interleaving of the
tasks' programs: each task runs its own events in trace order, an event starts when the
scheduler picks its task, and runs until it ends or blocks on a lock.  Events without a task
belong to the task "main" and are left out of the JSON, so every trace written before tasks
existed loads, saves and replays exactly as it did (same schema).  A `schedule` directive
(`{"op": "schedule", "preempt": [[12, "vcpu0"]]}` or `{"op": "schedule", "pct": [seed, depth]}`)
says how the scheduler departs from its default: see fuzz/schedule.py.  Either may carry
`"no_resched": [3, 7]`: the need_resched() queries (counted from 0 in one side's run) that
answer no, so a walk that may yield does not yield there (impls/tasks.py).
"""
from __future__ import annotations

import json
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

SCHEMA = "memslot-fuzz-trace/1"


class TraceError(ValueError):
    """A malformed trace: the message names the file, the event and the field."""


MAIN_TASK = "main"
TASK_NAME = re.compile(r"(main|(mm|vcpu|ioctl)[0-9]{0,3})\Z")
# what each kind of task may issue (the "main" task of a one-task trace may issue anything)
TASK_ROLES = {
    "mm": ("host_map", "invalidate_range_start", "invalidate_range_end", "change_pte",
           "clear_flush_young", "clear_young", "test_young", "release"),
    "vcpu": ("fault_begin", "fault_commit", "guest_access", "sync_page"),
    "ioctl": ("set_memory_region",),
}


def task_role(task: str) -> str:
    """"mm", "vcpu", "ioctl" or "main"."""
    return task.rstrip("0123456789")


@dataclass(frozen=True)
class Event:
    op: ClassVar[str] = ""
    hex_fields: ClassVar[tuple[str, ...]] = ()
    task: str = field(default=MAIN_TASK, kw_only=True)


@dataclass(frozen=True)
class SetMemoryRegion(Event):
    """KVM_SET_USER_MEMORY_REGION for (as_id, slot); memory_size 0 deletes the slot."""
    op: ClassVar[str] = "set_memory_region"
    hex_fields: ClassVar[tuple[str, ...]] = ("guest_phys_addr", "memory_size", "userspace_addr")
    as_id: int
    slot: int
    flags: int
    guest_phys_addr: int
    memory_size: int
    userspace_addr: int


@dataclass(frozen=True)
class HostMap(Event):
    """The host maps [hva, hva+size) to pfns from `pfn` (None: unmaps) with the given backing
    page size.  No notifier is sent by this event alone."""
    op: ClassVar[str] = "host_map"
    hex_fields: ClassVar[tuple[str, ...]] = ("hva", "size", "pfn", "page_size")
    hva: int
    size: int
    pfn: int | None
    page_size: int = 4096
    writable: bool = True


@dataclass(frozen=True)
class FaultBegin(Event):
    """A vCPU faults on gfn: snapshots mmu_notifier_seq and reads the host pfn."""
    op: ClassVar[str] = "fault_begin"
    hex_fields: ClassVar[tuple[str, ...]] = ("gfn",)
    fault: int
    as_id: int
    gfn: int
    write: bool = False


@dataclass(frozen=True)
class FaultCommit(Event):
    """The fault takes mmu_lock, asks the retry check, then installs or gives up."""
    op: ClassVar[str] = "fault_commit"
    fault: int


@dataclass(frozen=True)
class GuestAccess(Event):
    """The guest touches gfn through the TLB or a present leaf (sets young)."""
    op: ClassVar[str] = "guest_access"
    hex_fields: ClassVar[tuple[str, ...]] = ("gfn",)
    as_id: int
    gfn: int
    write: bool = False


@dataclass(frozen=True)
class SyncPage(Event):
    """x86 shadow paging drops one 4K SPTE and defers the flush (kvm->tlbs_dirty++)."""
    op: ClassVar[str] = "sync_page"
    hex_fields: ClassVar[tuple[str, ...]] = ("gfn",)
    as_id: int
    gfn: int


@dataclass(frozen=True)
class InvalidateRangeStart(Event):
    op: ClassVar[str] = "invalidate_range_start"
    hex_fields: ClassVar[tuple[str, ...]] = ("start", "end")
    start: int
    end: int
    blockable: bool = True


@dataclass(frozen=True)
class InvalidateRangeEnd(Event):
    op: ClassVar[str] = "invalidate_range_end"
    hex_fields: ClassVar[tuple[str, ...]] = ("start", "end")
    start: int
    end: int
    blockable: bool = True


@dataclass(frozen=True)
class ChangePte(Event):
    """set_pte_at_notify: the host pte of hva's page becomes (pfn, writable)."""
    op: ClassVar[str] = "change_pte"
    hex_fields: ClassVar[tuple[str, ...]] = ("hva", "pfn")
    hva: int
    pfn: int
    writable: bool = False


@dataclass(frozen=True)
class ClearFlushYoung(Event):
    op: ClassVar[str] = "clear_flush_young"
    hex_fields: ClassVar[tuple[str, ...]] = ("start", "end")
    start: int
    end: int


@dataclass(frozen=True)
class ClearYoung(Event):
    op: ClassVar[str] = "clear_young"
    hex_fields: ClassVar[tuple[str, ...]] = ("start", "end")
    start: int
    end: int


@dataclass(frozen=True)
class TestYoung(Event):
    op: ClassVar[str] = "test_young"
    hex_fields: ClassVar[tuple[str, ...]] = ("hva",)
    __test__ = False    # not a pytest class
    hva: int


@dataclass(frozen=True)
class Release(Event):
    op: ClassVar[str] = "release"


@dataclass(frozen=True)
class Schedule(Event):
    """A directive, not a kernel event: how the tasks interleave.  `preempt`: at scheduling
    point N switch to task T (when it can run); `pct`: (seed, depth) of a PCT schedule.  With
    neither, the default: events start in trace order and run until they end or block.
    `no_resched`: the need_resched() queries that answer no (sorted, distinct); every other
    query answers yes."""
    op: ClassVar[str] = "schedule"
    preempt: tuple = ()
    pct: tuple | None = None
    no_resched: tuple = ()


EVENT_TYPES: dict[str, type[Event]] = {cls.op: cls for cls in (
    SetMemoryRegion, HostMap, FaultBegin, FaultCommit, GuestAccess, SyncPage,
    InvalidateRangeStart, InvalidateRangeEnd, ChangePte, ClearFlushYoung, ClearYoung,
    TestYoung, Release, Schedule)}

NOTIFIER_OPS = ("invalidate_range_start", "invalidate_range_end", "change_pte",
                "clear_flush_young", "clear_young", "test_young", "release")


def notifier_range(ev: Event) -> tuple[int, int] | None:
    """The hva range the mm hands the notifier, or None for non-notifier events.
    Single-address notifiers are shown as their page-sized neighbourhood [hva, hva+1)."""
    if isinstance(ev, (InvalidateRangeStart, InvalidateRangeEnd, ClearFlushYoung, ClearYoung)):
        return ev.start, ev.end
    if isinstance(ev, (ChangePte, TestYoung)):
        return ev.hva, ev.hva + 1
    return None


def partner(events: list[Event], i: int) -> int | None:
    """Index of the event paired with events[i]: an invalidate_range_start and the end that
    closes it, a fault_begin and its commit (either way round); None if it has none."""
    ev = events[i]
    if isinstance(ev, InvalidateRangeStart):
        return next((j for j in range(i + 1, len(events)) if isinstance(events[j], InvalidateRangeEnd)
                     and (events[j].start, events[j].end) == (ev.start, ev.end)), None)
    if isinstance(ev, InvalidateRangeEnd):
        return next((j for j in range(i - 1, -1, -1) if isinstance(events[j], InvalidateRangeStart)
                     and (events[j].start, events[j].end) == (ev.start, ev.end)), None)
    if isinstance(ev, FaultBegin):
        return next((j for j in range(i + 1, len(events)) if isinstance(events[j], FaultCommit)
                     and events[j].fault == ev.fault), None)
    if isinstance(ev, FaultCommit):
        return next((j for j in range(i - 1, -1, -1) if isinstance(events[j], FaultBegin)
                     and events[j].fault == ev.fault), None)
    return None


def repro_prefix(events: list[Event], index: int) -> list[Event]:
    """The events needed to reproduce what events[index] showed: the prefix through it for a
    one-task trace; the whole trace when there are tasks (each must finish, and what others
    run after `index` in trace order may run before it in the schedule)."""
    if any(e.task != MAIN_TASK or isinstance(e, Schedule) for e in events):
        return list(events)
    return events[:index + 1]


# ----- JSON codec ------------------------------------------------------------------------
_JSON_FIELDS: dict[type, tuple[tuple[str, bool], ...]] = {}    # class -> (field, written in hex)


def _json_fields(cls: type) -> tuple[tuple[str, bool], ...]:
    got = _JSON_FIELDS.get(cls)
    if got is None:
        got = _JSON_FIELDS[cls] = tuple((f.name, f.name in cls.hex_fields)
                                        for f in fields(cls) if f.name != "task")
    return got


def event_to_json(ev: Event) -> dict:
    d: dict = {"op": ev.op}
    if isinstance(ev, Schedule):
        if ev.preempt:
            d["preempt"] = [list(p) for p in ev.preempt]
        if ev.pct is not None:
            d["pct"] = list(ev.pct)
        if ev.no_resched:
            d["no_resched"] = list(ev.no_resched)
    else:
        for name, in_hex in _json_fields(type(ev)):
            v = getattr(ev, name)
            d[name] = hex(v) if in_hex and isinstance(v, int) else v
    if ev.task != MAIN_TASK:
        d["task"] = ev.task
    return d


def trace_to_json(events: list[Event]) -> dict:
    return {"schema": SCHEMA, "events": [event_to_json(e) for e in events]}


def dumps(events: list[Event]) -> str:
    """One event per line: diffs and hand edits stay readable."""
    lines = ",\n    ".join(json.dumps(event_to_json(e)) for e in events)
    return '{"schema": "%s",\n  "events": [\n    %s\n  ]}\n' % (SCHEMA, lines)


def _schedule_from_json(d: dict, where: str) -> Schedule:
    extra = set(d) - {"op", "preempt", "pct", "no_resched"}
    if extra:
        raise TraceError(f"{where}: field {sorted(extra)[0]}: not a field of schedule")
    preempt = d.get("preempt", [])
    if not isinstance(preempt, list) or not all(
            isinstance(p, list) and len(p) == 2 and type(p[0]) is int and 0 <= p[0] < 1 << 32
            and isinstance(p[1], str) and TASK_NAME.match(p[1]) for p in preempt):
        raise TraceError(f"{where}: field preempt: expected a list of [scheduling point, task] pairs")
    pct = d.get("pct")
    if pct is not None and not (isinstance(pct, list) and len(pct) == 2 and all(type(x) is int for x in pct)
                                and 0 <= pct[0] < 1 << 64 and 0 <= pct[1] <= 64):
        raise TraceError(f"{where}: field pct: expected [seed, depth] with 0 <= depth <= 64")
    if preempt and pct is not None:
        raise TraceError(f"{where}: field pct: a schedule is either preempt or pct, not both")
    no_resched = d.get("no_resched", [])
    if not (isinstance(no_resched, list) and all(type(q) is int and 0 <= q < 1 << 32 for q in no_resched)):
        raise TraceError(f"{where}: field no_resched: expected a list of need_resched() query numbers (0 or more)")
    return Schedule(preempt=tuple((p, t) for p, t in preempt), pct=tuple(pct) if pct is not None else None,
                    no_resched=tuple(sorted(set(no_resched))))


def _field_value(f, raw, where: str):
    typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if typ == "str":
        if not isinstance(raw, str) or not TASK_NAME.match(raw):
            raise TraceError(f"{where}: field {f.name}: {raw!r} is not a task name "
                             "(main, or mm/vcpu/ioctl followed by up to 3 digits)")
        return raw
    if typ == "bool":
        if not isinstance(raw, bool):
            raise TraceError(f"{where}: field {f.name}: expected true/false, got {raw!r}")
        return raw
    optional = typ.endswith("| None")
    if raw is None:
        if optional:
            return None
        raise TraceError(f"{where}: field {f.name}: must not be null")
    if isinstance(raw, bool):
        raise TraceError(f"{where}: field {f.name}: expected an integer, got {raw!r}")
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str):
        try:
            value = int(raw, 0)
        except ValueError:
            raise TraceError(f"{where}: field {f.name}: {raw!r} is not an integer") from None
    else:
        raise TraceError(f"{where}: field {f.name}: expected an integer, got {raw!r}")
    if value < 0:
        raise TraceError(f"{where}: field {f.name}: {raw!r} is negative")
    if value >= 1 << 64:
        raise TraceError(f"{where}: field {f.name}: {raw!r} does not fit in 64 bits")
    return value


def event_from_json(d, where: str) -> Event:
    if not isinstance(d, dict):
        raise TraceError(f"{where}: expected an object, got {type(d).__name__}")
    op = d.get("op")
    cls = EVENT_TYPES.get(op) if isinstance(op, str) else None
    if cls is None:
        raise TraceError(f"{where}: field op: unknown event {op!r}; known: {', '.join(EVENT_TYPES)}")
    where = f"{where} ({op})"
    if cls is Schedule:
        sched = _schedule_from_json({k: v for k, v in d.items() if k != "task"}, where)
        return sched
    kwargs = {}
    names = {f.name for f in fields(cls)}
    extra = set(d) - names - {"op"}
    if extra:
        raise TraceError(f"{where}: field {sorted(extra)[0]}: not a field of {op}")
    for f in fields(cls):
        if f.name in d:
            kwargs[f.name] = _field_value(f, d[f.name], where)
        elif f.default is MISSING:
            raise TraceError(f"{where}: field {f.name}: missing")
    return cls(**kwargs)


def trace_from_json(doc, source: str = "<trace>") -> list[Event]:
    if not isinstance(doc, dict):
        raise TraceError(f"{source}: a trace is a JSON object with 'schema' and 'events'")
    if doc.get("schema") != SCHEMA:
        raise TraceError(f"{source}: field schema: expected {SCHEMA!r}, got {doc.get('schema')!r}")
    events = doc.get("events")
    if not isinstance(events, list):
        raise TraceError(f"{source}: field events: expected a list")
    return [event_from_json(e, f"{source}: event {i}") for i, e in enumerate(events)]


def parse_json(text: str, source: str = "<trace>"):
    """json.loads with every failure as a one-line TraceError naming `source`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TraceError(f"{source}: not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise TraceError(f"{source}: not a trace: JSON nested too deeply") from None
    except ValueError:          # an integer of more digits than int() converts (4300)
        raise TraceError(f"{source}: not a trace: a number with too many digits") from None


def read_json(path: str | Path):
    """The JSON document in file `path` (UTF-8); every failure is a one-line TraceError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TraceError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TraceError(f"{path}: not UTF-8: byte {data[e.start]:#04x} at offset {e.start}") from None
    return parse_json(text, str(path))


def loads(text: str, source: str = "<trace>") -> list[Event]:
    return trace_from_json(parse_json(text, source), source)


def load(path: str | Path) -> list[Event]:
    return trace_from_json(read_json(path), str(path))

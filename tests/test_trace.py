"""The trace language: every event kind round-trips; malformed traces give one line naming
the file, the event and the field."""
import json

import pytest
from hypothesis import given, settings

from fuzz.engines.generate import GenConfig, traces
from fuzz.runner import check_well_formed
from language.trace import (EVENT_TYPES, ChangePte, ClearFlushYoung, ClearYoung, FaultBegin,
                        FaultCommit, GuestAccess, HostMap, InvalidateRangeEnd,
                        InvalidateRangeStart, Release, SetMemoryRegion, SyncPage, TestYoung,
                        TraceError, dumps, load, loads, trace_to_json, Schedule)

ONE_OF_EACH = [
    Schedule(preempt=((4, "vcpu0"),)),
    SetMemoryRegion(1, 3, 1, 0x100000, 0x4000, 0x7f0000000000),
    HostMap(0x7f0000000000, 0x200000, 0x40000, 0x200000, False),
    HostMap(0x7f0000000000, 0x1000, None, 0x1000, True),
    FaultBegin(7, 1, 0x101, True),
    FaultCommit(7),
    GuestAccess(0, 0x102, True),
    SyncPage(0, 0x102),
    InvalidateRangeStart(0x7f0000000001, 0x7f0000003000, False),
    InvalidateRangeEnd(0x7f0000000001, 0x7f0000003000, False),
    ChangePte(0x7f0000000123, 0x9000, True),
    ClearFlushYoung(0x7f0000000000, 0x7f0000001000),
    ClearYoung(0x7f0000000000, 0x7f0000000000),
    TestYoung(0x7f0000000fff),
    Release(),
]


def test_every_event_kind_is_covered():
    assert {e.op for e in ONE_OF_EACH} == set(EVENT_TYPES)


def test_every_event_kind_round_trips():
    text = dumps(ONE_OF_EACH)
    assert loads(text) == ONE_OF_EACH
    doc = json.loads(text)
    assert doc["events"][1]["guest_phys_addr"] == "0x100000"     # addresses readable as hex
    assert loads(json.dumps(trace_to_json(ONE_OF_EACH))) == ONE_OF_EACH


@given(traces(GenConfig(max_events=25)))
@settings(max_examples=60, deadline=None)
def test_generated_traces_round_trip_and_are_well_formed(events):
    check_well_formed(events)
    assert loads(dumps(events)) == events


@pytest.mark.parametrize("text, message", [
    ('{"schema": "memslot-fuzz-trace/1", "events": [{"op": "fault_begin", "fault": 1, "as_id": 0}]}',
     "t.json: event 0 (fault_begin): field gfn: missing"),
    ('{"schema": "memslot-fuzz-trace/1", "events": [{"op": "test_young", "hva": "0xzz"}]}',
     "t.json: event 0 (test_young): field hva: '0xzz' is not an integer"),
    ('{"schema": "memslot-fuzz-trace/1", "events": [{"op": "teleport"}]}',
     "t.json: event 0: field op: unknown event 'teleport'"),
    ('{"schema": "memslot-fuzz-trace/1", "events": [{"op": "release", "when": 3}]}',
     "t.json: event 0 (release): field when: not a field of release"),
    ('{"schema": "memslot-fuzz-trace/1", "events": [{"op": "fault_begin", "fault": 1, "as_id": 0, "gfn": 1, "write": 1}]}',
     "t.json: event 0 (fault_begin): field write: expected true/false, got 1"),
    ('{"schema": "memslot-fuzz-trace/1", "events": [{"op": "test_young", "hva": -4}]}',
     "t.json: event 0 (test_young): field hva: -4 is negative"),
    ('{"schema": "memslot-fuzz-trace/9", "events": []}', "t.json: field schema: expected"),
    ('{"schema": "memslot-fuzz-trace/1", "events": [', "t.json: not JSON:"),
])
def test_malformed_traces_name_file_event_and_field(tmp_path, text, message):
    path = tmp_path / "t.json"
    path.write_text(text)
    with pytest.raises(TraceError) as e:
        load(path)
    msg = str(e.value)
    assert message in msg.replace(str(tmp_path) + "/", "")
    assert "\n" not in msg


@pytest.mark.parametrize("events, message", [
    ([InvalidateRangeEnd(0, 4096)], "event 0 (invalidate_range_end): field start: no open"),
    ([FaultCommit(3)], "event 0 (fault_commit): field fault: fault 3 was not begun"),
    ([FaultBegin(1, 0, 1), FaultBegin(1, 0, 2)], "event 1 (fault_begin): field fault: fault 1 is already"),
    ([HostMap(0x1000, 0x200000, 0, 0x200000)], "event 0 (host_map): field hva: mapping not aligned"),
    ([ClearYoung(8192, 4096)], "event 0 (clear_young): field end"),
])
def test_traces_the_kernel_cannot_see_are_rejected(events, message):
    with pytest.raises(TraceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_well_formed(events, "x")


def test_host_page_changed_without_an_invalidation_is_rejected():
    fresh = HostMap(0x7f0000000000, 0x4000, 0x1000, 0x1000, True)
    remap = HostMap(0x7f0000001000, 0x1000, 0x2000, 0x1000, True)
    check_well_formed([fresh, InvalidateRangeStart(0x7f0000001000, 0x7f0000002000), remap,
                       InvalidateRangeEnd(0x7f0000001000, 0x7f0000002000)])
    check_well_formed([fresh, HostMap(0x7f0000010000, 0x1000, 0x3000, 0x1000, True)])   # fresh hvas
    with pytest.raises(TraceError, match=r"event 1 \(host_map\): field hva: changes the mapped host page 0x7f0000001000"):
        check_well_formed([fresh, remap], "x")

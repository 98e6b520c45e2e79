"""Replay a trace keeping, per event and per side, the state before and after, what the side
did and what the reference required: the raw material of `show`'s timeline and of pictures.
It runs events through runner.apply_event, looked up at call time, so a candidate's worker
(fuzz/contain.py) that wraps it sees these replays too."""
from __future__ import annotations

from dataclasses import dataclass

from impls.kvm import State
from impls.observation import Observation
from oracles.reference import Expectation, expect

from fuzz import runner
from language.trace import Event


@dataclass
class SideView:
    """One side at one event: state before and after, what it did, what it had to do."""
    name: str
    pre: State
    post: State
    obs: Observation
    exp: Expectation | None


@dataclass
class EventDetail:
    index: int
    event: Event
    old: SideView
    new: SideView


def replay_details(events: list[Event], old_side: runner.Side, new_side: runner.Side,
                   upto: int | None = None) -> list[EventDetail]:
    """Re-run `events` (through index `upto`, default all) on both sides, as run_trace does
    (a side that crashed stops), keeping each side's pre-state and the reference for it."""
    if old_side.contained or new_side.contained:     # a user's candidate: only in its worker
        from fuzz.contain import replay_details_contained
        return replay_details_contained(events, old_side, new_side, upto)
    models = {"old": old_side.make(), "new": new_side.make()}
    names = {"old": old_side.name, "new": new_side.name}
    dead = {"old": False, "new": False}
    out: list[EventDetail] = []
    last = len(events) - 1 if upto is None else min(upto, len(events) - 1)
    for i, ev in enumerate(events[:last + 1]):
        views = {}
        for k, m in models.items():
            pre = m.snapshot()
            obs = runner.apply_event(m, ev) if not dead[k] else Observation(ev.op)
            dead[k] |= bool(obs.crashed)
            views[k] = SideView(names[k], pre, m.snapshot(), obs, expect(ev, pre))
        out.append(EventDetail(i, ev, views["old"], views["new"]))
    return out

"""The modelled kernel history, and bisecting a divergence along it (`memslot-fuzz bisect`).

(Not named bisect.py: the atheris target runs with fuzz/ on sys.path, where that name would
shadow the standard library's bisect module.)

The history of an architecture is a list of points in kernel order, each a model class and the
commits it adds over the point before it:

* every listed version the arch has (impls/registry.py VERSIONS), except `series-v1`, which was
  a posting, not a point of mainline; its commits are the arch module's VERSION_COMMITS for that
  version, then the generic layer's `commits` (impls/kvm_main_*.py), and if neither names one,
  the release tag itself;
* every commit a model names as a point of its own between two versions: the arch module's
  COMMIT_POINTS (e.g. Book3S HV after 32b48bf8514c and before da3bb206c9ce) and each
  LATER_OVERRIDES mixin whose release is not a listed version (arm64's df6556adf27b in v6.5),
  composed over the version before it.  Such a point is the models' picture of that state: the
  version before it plus that one commit (generic changes merged in between are not in it;
  `list --commits` shows what each point is made of).

A trace "shows" a divergence at a point when the point's model, run alone on the trace, does
what the divergence says (class, op, shape) against the reference (oracles.compare.check_side,
as each side of a comparison is judged).  The answer is each point's yes/no and the transitions:
the first point where it appears, and the first where it disappears again.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass

from impls import registry
from impls.kvm import Kvm
from oracles.compare import SideResult, check_side
from oracles.reference import expect, trace_contexts

from fuzz.runner import apply_event
from fuzz.runner_tasks import needs_task_mode, run_side
from language.trace import Event, Schedule

OFF_MAINLINE = {"series-v1"}


class BisectError(Exception):
    """Bad input: an unknown point, a --good not older than --bad, nothing to bisect."""


@dataclass(frozen=True)
class Point:
    name: str                                  # what --good/--bad accept
    commits: tuple[tuple[str, str], ...]       # (short id, subject) this point adds, first the arch's
    cls: type[Kvm]

    def describe(self) -> str:
        return "; ".join(f"{c} {s}" for c, s in self.commits)


def _commit_of(mixin: type) -> tuple[str, str] | None:
    """A LATER_OVERRIDES mixin's commit: its `commit` and `subject`, or its name's suffix (a
    commit id) and the quoted title that opens its docstring; None for a mixin that stands for
    no one commit (a release's Kconfig choices, named after the release)."""
    commit = getattr(mixin, "commit", None) or mixin.__name__.rsplit("_", 1)[-1]
    if not re.fullmatch(r"[0-9a-f]{12,40}", commit):
        return None
    subject = getattr(mixin, "subject", None)
    if subject is None:
        doc = (mixin.__doc__ or "").split('"')
        subject = doc[1] if len(doc) > 2 else ""
    return commit, subject


def history(arch: str) -> list[Point]:
    """Every point of `arch`'s modelled history, oldest first."""
    registry.check_arch(arch)
    module = importlib.import_module(registry.ARCH_MODULES[arch])
    version_commits = getattr(module, "VERSION_COMMITS", {})
    commit_points = getattr(module, "COMMIT_POINTS", {}).get(arch, [])
    overrides = [(rel, m) for rel, m in getattr(module, "LATER_OVERRIDES", []) if rel not in registry.VERSIONS]
    versions = [v for v in registry.versions_for(arch) if v not in OFF_MAINLINE]
    points: list[Point] = []
    for v in versions:
        # the named commits that come before v: after the previous point, in release order
        for after, commit, subject, cls in commit_points:
            if points and points[-1].name == after:
                points.append(Point(f"{after}+{commit}", ((commit, subject),), cls))
        for rel, mixin in overrides:
            named_commit = _commit_of(mixin)
            if named_commit and points and registry.release_key(points[-1].name.split("+")[0]) \
                    < registry.release_key(rel) < registry.release_key(v):
                base = points[-1]
                commit, subject = named_commit
                cls = type(f"{base.cls.__name__}_{commit}", (mixin, base.cls),
                           {"version": f"{base.name}+{commit}", "__module__": base.cls.__module__})
                points.append(Point(f"{base.name}+{commit}", ((commit, subject),), cls))
        cls = registry.model(arch, v)
        named = list(version_commits.get(arch, {}).get(v, []))
        named += [c for rel, m in getattr(module, "LATER_OVERRIDES", []) if rel == v
                  for c in [_commit_of(m)] if c is not None]
        layer = getattr(cls, "commits", ())          # the generic layer's, unless the one before had them
        if not points or getattr(points[-1].cls, "commits", ()) != layer:
            named += [c for c in layer if c not in named]
        points.append(Point(v, tuple(named) or ((v, f"Linux {v.removeprefix('v')}"),), cls))
    return points


def point(arch: str, name: str) -> Point:
    """The point named `name`: its name (a version, `mainline`, `v5.13-rc1+32b48bf8514c`) or one
    of the commits it brings (7 hex digits or more)."""
    name = registry.canonical_version(name)
    for p in history(arch):
        if p.name == name:
            return p
    if re.fullmatch(r"[0-9a-f]{7,40}", name):
        for p in history(arch):
            if any(c.startswith(name) or name.startswith(c) for c, _ in p.commits):
                return p
    names = ", ".join(p.name for p in history(arch))
    raise BisectError(f"{name!r} is not a point of {arch}'s modelled history (one of: {names})")


def shows(events: list[Event], arch: str, cls: type[Kvm]) -> set[tuple[str, str, str]]:
    """(class, op, shape) of every finding `cls` run alone on `events` has against the reference."""
    found: set[tuple[str, str, str]] = set()
    if needs_task_mode(events, cls):
        side = run_side(cls, events, arch, apply_event)
        for i, r in enumerate(side.events):
            found |= {(f.cls, events[i].op, f.shape) for f in r.findings}
        found |= {(f.cls, events[i].op, f.shape) for i, f in side.trace_findings}
        return found
    model = cls()
    contexts = trace_contexts(events)
    for i, ev in enumerate(events):
        if isinstance(ev, Schedule):
            continue
        pre = model.snapshot()
        obs = apply_event(model, ev)
        post = model.snapshot()
        found |= {(f.cls, ev.op, f.shape) for f in check_side(ev, expect(ev, pre), SideResult(pre, post, obs, model.host),
                                                           contexts[i])}
        if obs.crashed:
            break
    return found


@dataclass
class Bisection:
    finding: tuple[str, str, str]
    points: list[Point]
    present: list[bool]

    def transitions(self) -> list[tuple[str, Point]]:
        """("appears" | "disappears", the first point of the new state), oldest first."""
        out = []
        for k in range(1, len(self.points)):
            if self.present[k] != self.present[k - 1]:
                out.append(("appears" if self.present[k] else "disappears", self.points[k]))
        return out


def bisect(events: list[Event], arch: str, finding: tuple[str, str, str],
           good: str | None = None, bad: str | None = None) -> Bisection:
    """Where along `arch`'s history `events` starts or stops showing `finding`.  With --good
    and --bad, only the points from good to bad (good must be older and must not show it, bad
    must show it), as git bisect would take them."""
    pts = history(arch)
    if good is not None or bad is not None:
        names = [p.name for p in pts]
        lo = names.index(point(arch, good).name) if good is not None else 0
        hi = names.index(point(arch, bad).name) if bad is not None else len(pts) - 1
        if lo >= hi:
            raise BisectError(f"--good {pts[lo].name} is not older than --bad {pts[hi].name}")
        pts = pts[lo:hi + 1]
    present = [finding in shows(events, arch, p.cls) for p in pts]
    if good is not None and present[0]:
        raise BisectError(f"--good {pts[0].name} already shows {'/'.join(finding)}")
    if bad is not None and not present[-1]:
        raise BisectError(f"--bad {pts[-1].name} does not show {'/'.join(finding)}")
    if not any(present):
        raise BisectError(f"the trace shows {'/'.join(finding)} at no point of {arch}'s history "
                          f"({pts[0].name}..{pts[-1].name})")
    return Bisection(finding, pts, present)

"""The JSON report of a run (schema in docs/REPORT.md, checked by validate_report) and the
console summary that leads with the verdict.  The timeline of one trace is timeline.py.

Functions for callers:
    build(results, seed, seconds, pictures=True, reach=True) -> dict   (writes pictures)
    validate_report(doc, source="report") -> None                       (raises ReportError)
    print_summary(doc, out)
"""
from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path
from typing import TextIO

from oracles.compare import CLASSES, Divergence
from oracles.triage import is_candidate

from fuzz.reports.picture import write_pictures
from fuzz.reachability import ALIGNED, UNALIGNED_ONLY, reach_and_needs
from fuzz.reachability import VALUES as REACH_VALUES
from language.trace import TraceError, trace_from_json, trace_to_json
from language.wellformed import ALLOWANCES

REPORT_SCHEMA = "memslot-fuzz-report/1"


def divergence_json(d: Divergence, saved: str | None, reachability: str | None = None,
                    picture: str | None = None, needs: list[str] | None = None) -> dict:
    return {"class": d.cls, "arch": d.arch, "old": d.old, "new": d.new,
            "wrong_side": d.wrong_side, "known": d.known, "explanation": d.explanation,
            "signature": d.signature, "op": d.op, "shape": d.shape,
            "event_index": d.event_index, "detail": d.detail,
            "trace": trace_to_json(d.trace), "saved": saved,
            "reachability": reachability, "needs": needs, "picture": picture,
            "cause": d.cause, "root": d.root, "root_event": d.root_event}


def build(results, seed: int, seconds: float, pictures: bool = True, reach: bool = True) -> dict:
    """The JSON report of a run (docs/REPORT.md).  For every divergence, unless turned off:
    `reachability` (fuzz.reachability: does it show with page-aligned notifier ranges) and
    `picture` (fuzz.reports.picture.write_pictures: an SVG, with an HTML page beside it, written next
    to the saved trace in the job's out_dir)."""
    divs, runs = [], []
    for res in results:
        j = res.job
        runs.append({"arch": j.arch, "old": j.old.name, "new": j.new.name, "engine": getattr(j, "engine", "random"),
                     "seed": j.seed, "events": res.events, "traces": res.traces,
                     "seconds": round(res.seconds, 3), "interrupted": res.interrupted,
                     "aligned_only": bool(getattr(getattr(j, "gen", None), "aligned_only", False)),
                     "kernel_only": bool(getattr(getattr(j, "gen", None), "kernel_only", False))})
        for d in res.divergences:
            saved = res.saved.get(d.signature)
            r, needs = reach_and_needs(d.trace, j.arch, j.old, j.new, [], d.signature) if reach else (None, None)
            pic = None
            if pictures:
                stem = f"{Path(saved).stem}-{_short(d.signature)}" if saved else None
                pic = str(write_pictures(d, j, j.out_dir, stem))
            divs.append(divergence_json(d, str(saved) if saved is not None else None, r, pic, needs))
    divs.sort(key=lambda x: (x["known"], CLASSES.index(x["class"]), x["arch"], x["signature"]))
    events = sum(r["events"] for r in runs)
    return {"schema": REPORT_SCHEMA, "seed": seed, "runs": runs, "divergences": divs,
            "totals": {"events": events, "traces": sum(r["traces"] for r in runs),
                       "seconds": round(seconds, 3),
                       "events_per_second": round(events / seconds, 1) if seconds else 0.0,
                       "divergences": len(divs),
                       "new_divergences": sum(not d["known"] for d in divs),
                       "new_roots": len(new_roots(divs)),
                       "unaligned_only": sum(d.get("reachability") == UNALIGNED_ONLY for d in divs),
                       "interrupted": any(r["interrupted"] for r in runs)}}


def is_echo(d: dict, new_signatures: set[str]) -> bool:
    """A NEW divergence that follows from another NEW one of the same report (a knock-on through
    the state, or a zap/age/flush after a wrong gfn set at the same event): shown under it."""
    return d.get("cause") in ("knock-on", "same-event") and d.get("root", "") in new_signatures


def top_root(d: dict, divs: list[dict]) -> dict:
    """Follow an echo's root links (an echo of an echo) to the divergence they start from."""
    by_sig = {x["signature"]: x for x in divs}
    seen = set()
    while d.get("cause") in ("knock-on", "same-event") and d.get("root") in by_sig and d["signature"] not in seen:
        seen.add(d["signature"])
        d = by_sig[d["root"]]
    return d


def new_roots(divs: list[dict]) -> list[dict]:
    """The NEW divergences that are not echoes of another NEW one (fuzz/rootcause.py)."""
    fresh = {d["signature"] for d in divs if not d["known"]}
    return [d for d in divs if not d["known"] and not is_echo(d, fresh)]


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]


# ----- schema check of the JSON report ----------------------------------------------------
class ReportError(ValueError):
    """A report that does not follow docs/REPORT.md: names the field."""


_STR, _INT, _NUM, _BOOL = str, int, (int, float), bool
RUN_FIELDS = {"arch": _STR, "old": _STR, "new": _STR, "engine": _STR, "seed": _INT, "events": _INT,
              "traces": _INT, "seconds": _NUM, "interrupted": _BOOL, "aligned_only": _BOOL,
              "kernel_only": _BOOL}
DIV_FIELDS = {"class": _STR, "arch": _STR, "old": _STR, "new": _STR, "wrong_side": _STR,
              "known": _BOOL, "explanation": _STR, "signature": _STR, "op": _STR, "shape": _STR,
              "event_index": _INT, "detail": _STR, "trace": dict, "saved": (_STR, type(None)),
              "reachability": (_STR, type(None)), "needs": (list, type(None)), "picture": (_STR, type(None)),
              "cause": _STR, "root": _STR, "root_event": _INT}
CAUSES = ("", "knock-on", "same-event", "inherited", "contrast")
# fields that came after the schema's first reports, which stay valid without them
LATER_FIELDS = ("needs", "cause", "root", "root_event")
TOTAL_FIELDS = {"events": _INT, "traces": _INT, "seconds": _NUM, "events_per_second": _NUM,
                "divergences": _INT, "new_divergences": _INT, "unaligned_only": _INT,
                "interrupted": _BOOL, "new_roots": _INT}


def _fields(obj, spec: dict, where: str) -> None:
    if not isinstance(obj, dict):
        raise ReportError(f"{where}: expected an object, got {type(obj).__name__}")
    for name, typ in spec.items():
        if name not in obj:
            raise ReportError(f"{where}: field {name}: missing")
        v = obj[name]
        bad_bool = isinstance(v, bool) and typ is not _BOOL and bool not in (typ if isinstance(typ, tuple) else (typ,))
        if not isinstance(v, typ) or bad_bool:
            raise ReportError(f"{where}: field {name}: unexpected {type(v).__name__} {v!r:.60}")
    extra = sorted(set(obj) - set(spec))
    if extra:
        raise ReportError(f"{where}: field {extra[0]}: not in the report schema")


def validate_report(doc, source: str = "report") -> None:
    """Raise ReportError (one line naming the field) unless `doc` follows docs/REPORT.md."""
    if not isinstance(doc, dict):
        raise ReportError(f"{source}: expected a JSON object")
    _fields(doc, {"schema": _STR, "seed": _INT, "runs": list, "divergences": list, "totals": dict}, source)
    if doc["schema"] != REPORT_SCHEMA:
        raise ReportError(f"{source}: field schema: expected {REPORT_SCHEMA!r}, got {doc['schema']!r}")
    for i, r in enumerate(doc["runs"]):
        _fields(r, {k: v for k, v in RUN_FIELDS.items() if k != "kernel_only" or k in r}, f"{source}: runs[{i}]")
    order = []
    for i, d in enumerate(doc["divergences"]):
        where = f"{source}: divergences[{i}]"
        _fields(d, {k: v for k, v in DIV_FIELDS.items() if k not in LATER_FIELDS or k in d}, where)
        if d.get("cause", "") not in CAUSES:
            raise ReportError(f"{where}: field cause: {d['cause']!r} is not one of {CAUSES[1:]} or empty")
        if d["class"] not in CLASSES:
            raise ReportError(f"{where}: field class: {d['class']!r} is not a divergence class")
        if d["wrong_side"] not in ("old", "new", "both"):
            raise ReportError(f"{where}: field wrong_side: {d['wrong_side']!r} is not old, new or both")
        if d["reachability"] is not None and d["reachability"] not in REACH_VALUES:
            raise ReportError(f"{where}: field reachability: {d['reachability']!r} is not one of "
                              f"{', '.join(REACH_VALUES)}")
        if d.get("needs") is not None and any(n not in ALLOWANCES for n in d["needs"]):
            bad = next(n for n in d["needs"] if n not in ALLOWANCES)
            raise ReportError(f"{where}: field needs: {bad!r} is not one of {', '.join(ALLOWANCES)}")
        sig = "|".join([d["class"], d["arch"], d["old"], d["new"], d["op"], d["wrong_side"], d["shape"]])
        if d["signature"] != sig:
            raise ReportError(f"{where}: field signature: {d['signature']!r} does not match its fields")
        try:
            events = trace_from_json(d["trace"], f"{where}.trace")
        except TraceError as e:
            raise ReportError(str(e)) from None
        if not 0 <= d["event_index"] < len(events):
            raise ReportError(f"{where}: field event_index: {d['event_index']} outside the trace "
                              f"of {len(events)} events")
        order.append((d["known"], CLASSES.index(d["class"])))
    if order != sorted(order):
        raise ReportError(f"{source}: field divergences: not sorted new first, then by class severity")
    t = doc["totals"]
    _fields(t, {k: v for k, v in TOTAL_FIELDS.items() if k != "new_roots" or k in t}, f"{source}: totals")
    if "new_roots" in t and t["new_roots"] != len(new_roots(doc["divergences"])):
        raise ReportError(f"{source}: totals: field new_roots: does not match the list")
    if t["divergences"] != len(doc["divergences"]):
        raise ReportError(f"{source}: totals: field divergences: {t['divergences']} but "
                          f"{len(doc['divergences'])} listed")
    if t["new_divergences"] != sum(not d["known"] for d in doc["divergences"]):
        raise ReportError(f"{source}: totals: field new_divergences: does not match the list")
    if t["events"] != sum(r["events"] for r in doc["runs"]):
        raise ReportError(f"{source}: totals: field events: not the sum of the runs")


# ----- console summary --------------------------------------------------------------------
def _kernel_word(d: dict) -> str:
    """Can a running kernel send the trace: yes, or which kernel rules it breaks."""
    if d.get("needs") is None:
        return {ALIGNED: "aligned", UNALIGNED_ONLY: "no:unaligned"}.get(d.get("reachability"), "-")
    return "yes" if not d["needs"] else "no:" + "+".join(d["needs"])


WIDTH = 100


def _wrap(text: str, indent: str, first: str = "") -> str:
    """`first` + text wrapped at WIDTH, continuation lines indented: never cut."""
    return textwrap.fill(text, WIDTH, initial_indent=first or indent, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def verdict(doc: dict) -> str:
    """One line a KVM developer reads first: new findings or not, and the exit code they mean."""
    t = doc["totals"]
    new, total = t["new_divergences"], t["divergences"]
    stopped = " (interrupted: what was found so far)" if t.get("interrupted") else ""
    roots = len(new_roots(doc["divergences"]))
    if new and roots < new:
        return (f"verdict: {_plural(roots, 'NEW root cause')} and {new - roots} NEW "
                f"{'divergence follows' if new - roots == 1 else 'divergences follow'} from "
                f"{'it' if roots == 1 else 'them'}, not on the known list, of {total} distinct (exit 1){stopped}")
    if new:
        return (f"verdict: {_plural(new, 'NEW divergence')} not on the known list, "
                f"of {total} distinct (exit 1){stopped}")
    fixes = [d for d in doc["divergences"] if d["known"] and _candidate_fixes(d)]
    if fixes:
        bases = ", ".join(sorted({d["old"] if d["wrong_side"] == "old" else d["new"] for d in fixes}))
        return (f"verdict: nothing new: all {total} distinct divergences are on the known list, and the "
                f"candidate fixes {_plural(len(fixes), 'known flaw')} of {bases} (exit 0){stopped}")
    if total:
        return f"verdict: nothing new: all {total} distinct divergences are on the known list (exit 0){stopped}"
    return f"verdict: nothing new: no divergence at all (exit 0){stopped}"


def _new_block(i: int, d: dict, out: TextIO) -> None:
    n = len(d["trace"]["events"])
    print(f"  {i}. {d['class']} on {d['arch']} {d['old']}..{d['new']}, {d['wrong_side']} wrong, at "
          f"{d['op']} (event {d['event_index']} of {_plural(n, 'event')})", file=out)
    print(_wrap(d["shape"], " " * 7, "     shape: "), file=out)
    print(_wrap(d["detail"], " " * 7, "     what:  "), file=out)
    print(_wrap(_kernel_sentence(d), " " * 7, "     kernel: "), file=out)
    if d.get("saved"):
        print(f"     see:   memslot-fuzz show {d['saved']}", file=out)
    if d.get("picture"):
        print(f"     picture: {d['picture']}", file=out)


def _candidate_fixes(d: dict) -> bool:
    """A known flaw that only the base shows, against a candidate (fuzz.rootcause.fixes)."""
    other = {"old": d["new"], "new": d["old"]}.get(d["wrong_side"])
    return other is not None and is_candidate(other) and d.get("cause") not in ("knock-on", "contrast")


def _kernel_sentence(d: dict) -> str:
    if d.get("needs") is None:
        return {ALIGNED: "shows with page-aligned ranges", UNALIGNED_ONLY: "needs unaligned ranges"}.get(
            d.get("reachability"), "not computed")
    if not d["needs"]:
        return "a running kernel can send this trace"
    return "only with what the mm never sends: " + ", ".join(d["needs"])


def _by_pair(divs: list[dict], runs: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """divs grouped by architecture and version pair, in the order the run ran them (the order
    of its progress lines and its per-arch totals), then any pair it did not run."""
    groups: dict[tuple[str, str, str], list[dict]] = {(r.get("arch"), r.get("old"), r.get("new")): [] for r in runs}
    for d in divs:
        groups.setdefault((d["arch"], d["old"], d["new"]), []).append(d)
    return {k: v for k, v in groups.items() if v}


def _overview(divs: list[dict], runs: list[dict], out: TextIO) -> None:
    """A table, one row per architecture and version pair: how many divergences, NEW ones, which
    side they blame (old, new, both), how many echo another (knock-on, same-event) and how many
    a running kernel can reach."""
    groups = _by_pair(divs, runs)
    rows = [("", "total", "NEW", "old wrong", "new wrong", "both", "echoes", "kernel-legal")]
    for (arch, old, new), ds in groups.items():
        rows.append((f"{arch} {old}..{new}", str(len(ds)), str(sum(not d["known"] for d in ds)),
                     *(str(sum(d["wrong_side"] == s for d in ds)) for s in ("old", "new", "both")),
                     str(sum(d.get("cause") in ("knock-on", "same-event") for d in ds)),
                     str(sum(d.get("needs") == [] for d in ds))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  " + r[0].ljust(widths[0]) + "".join(f"  {c:>{w}s}" for c, w in zip(r[1:], widths[1:])), file=out)


def _collapsed(divs: list[dict], runs: list[dict], out: TextIO) -> None:
    """Per architecture and version pair: what one version does that the other does not, then
    what both do, one line per class (count, ops and shapes, how many a running kernel reaches)."""
    groups = _by_pair(divs, runs)
    for (arch, old, new), ds in groups.items():
        print(f"  {arch} {old}..{new}: {_plural(len(ds), 'known divergence')}", file=out)
        for side, label in (("old", f"only {old}"), ("new", f"only {new}"), ("both", "both")):
            by_class: dict[str, list[dict]] = {}
            for d in ds:
                if d["wrong_side"] == side:
                    by_class.setdefault(d["class"], []).append(d)
            for cls in sorted(by_class, key=CLASSES.index):
                items = by_class[cls]
                shapes = sorted({f"{d['op']} {d['shape']}" for d in items})
                reach = sum(1 for d in items if d.get("needs") == [])
                causes = [f"{n} {c}" for c in CAUSES[1:] if (n := sum(d.get("cause") == c for d in items))]
                text = (f"{cls} x{len(items)}" + (f" ({', '.join(causes)})" if causes else "")
                        + f", {reach} by a kernel-legal trace: " + "; ".join(shapes))
                print(_wrap(text, " " * 16, f"    {label:11s} "), file=out)


def print_summary(doc: dict, out: TextIO, verbose: bool = False, files: bool = False) -> None:
    """The verdict first; then each NEW divergence in full (what, where, the command that shows
    it, its picture); then, per architecture, what the newer version changed (one side wrong)
    and what both share, a line per class (with `verbose`: every divergence, each with its
    files); `files` (a run that ended early: a write failed, or a signal) lists every file kept;
    then the runs and totals, and the verdict again as the last line."""
    t = doc["totals"]
    divs = doc["divergences"]
    print(verdict(doc), file=out)
    roots = new_roots(divs)
    if roots:
        print(file=out)
        print("NEW (not on the known list):", file=out)
        fresh = {d["signature"] for d in divs if not d["known"]}
        for i, d in enumerate(roots, 1):
            _new_block(i, d, out)
            for e in divs:
                if is_echo(e, fresh) and top_root(e, divs) is d:
                    why = ("the other version's code does the same from this side's state"
                           if e["cause"] == "knock-on" else "follows from the wrong gfns at that event")
                    print(_wrap(f"{e['class']} at {e['op']} ({e['shape']}, {e['wrong_side']} wrong, event "
                                f"{e['event_index']}): {why}; see {e['saved'] or '-'}",
                                " " * 7, f"     {e['cause']}: "), file=out)
    fixed = [d for d in divs if d["known"] and _candidate_fixes(d)]
    if fixed:
        print(file=out)
        print("fixes known (flaws of the base version that the candidate no longer has):", file=out)
        for d in fixed:
            base = d["old"] if d["wrong_side"] == "old" else d["new"]
            print(_wrap(f"{d['class']} at {d['op']} ({d['shape']}) of {base}", " " * 4, "  - "), file=out)
    known = [d for d in divs if d["known"]]
    if divs:
        print(file=out)
        print("per architecture and version pair (old/new wrong: what one version does and the other "
              "does not):", file=out)
        _overview(divs, doc.get("runs", []), out)
    if known and not verbose:
        print(file=out)
        print("known, by what differs between the versions (one side wrong) and what both share", file=out)
        print("(one line per class; --verbose lists each divergence with its files):", file=out)
        _collapsed(known, doc.get("runs", []), out)
    if divs and verbose:
        print(file=out)
        rows = [("#", "class", "arch", "versions", "wrong", "status", "kernel", "events", "op", "shape")]
        for i, d in enumerate(divs, 1):
            rows.append((str(i), d["class"], d["arch"], f"{d['old']}..{d['new']}", d["wrong_side"],
                         "known" if d["known"] else "NEW", _kernel_word(d),
                         str(len(d["trace"]["events"])), d["op"], d["shape"]))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        for r in rows:
            head = "  ".join(c.ljust(w) for c, w in zip(r, widths))
            print(_wrap(r[-1], " " * (len(head) + 2), head + "  "), file=out)
        print("(kernel: a running kernel can send the trace that shows it; else the rules it breaks: "
              "unaligned ranges, a bare change_pte, ...)", file=out)
        print(file=out)
        for i, d in enumerate(divs, 1):
            files = [f"trace {d['saved'] or '-'}"]
            if d.get("picture"):
                files.append(f"picture {d['picture']}")
            print(f"#{i:<3d} " + "  ".join(files), file=out)
    if files and not verbose:
        kept = [d for d in divs if d.get("saved")]
        if kept:
            print(file=out)
            print(f"kept ({_plural(len(kept), 'file')}, the run ended early):", file=out)
            for d in kept:
                print(f"  {d['saved']}" + (f"  picture {d['picture']}" if d.get("picture") else ""), file=out)
    print(file=out)
    for r in doc["runs"]:
        print(f"{r['arch']:13s} {r['old']}..{r['new']}: {_plural(r['events'], 'event')} in "
              f"{_plural(r['traces'], 'trace')}, {r['seconds']:.1f}s" + (" (interrupted)" if r["interrupted"] else "")
              + (" (only what a running kernel sends)" if r.get("kernel_only")
                 else " (aligned ranges only)" if r.get("aligned_only") else ""), file=out)
    print(f"total: {t['events']} events, {t['events_per_second']:.0f} events/s, {t['seconds']:.1f}s; "
          f"{t['divergences']} distinct divergences, {t['new_divergences']} new"
          + (f", {t['unaligned_only']} only with unaligned ranges" if t.get("unaligned_only") else "")
          + f" (seed {doc['seed']})", file=out)
    print(verdict(doc), file=out)

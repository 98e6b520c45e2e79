"""Reports: the JSON report of a run (schema in docs/REPORT.md, checked by validate_report),
the console summary, and the timeline of one trace (console and HTML).

Functions for callers:
    build(results, seed, seconds, pictures=True, reach=True) -> dict   (writes pictures)
    validate_report(doc, source="report") -> None                       (raises ReportError)
    print_summary(doc, out)
    print_timeline(events, res, arch, old, new, out, color=None, reach=True)
    show_html(events, res, arch, old, new) -> str
`res` is a fuzz.runner.TraceResult run with keep_observations=True; old/new are version
names, candidate specs or fuzz.runner.Side objects.
"""
from __future__ import annotations

import hashlib
import textwrap
from html import escape
from pathlib import Path
from typing import TextIO

from impls import registry
from oracles.compare import CLASSES, Divergence
from oracles.reference import Expectation

from .picture import html_page, replay_details, svg_from_detail, write_pictures
from .reachability import ALIGNED, UNALIGNED_ONLY, reach_and_needs
from .reachability import VALUES as REACH_VALUES
from .runner import Side
from .trace import MAIN_TASK, TraceError, event_to_json, trace_from_json, trace_to_json
from .wellformed import ALLOWANCES

REPORT_SCHEMA = "memslot-fuzz-report/1"


def divergence_json(d: Divergence, saved: str | None, reachability: str | None = None,
                    picture: str | None = None, needs: list[str] | None = None) -> dict:
    return {"class": d.cls, "arch": d.arch, "old": d.old, "new": d.new,
            "wrong_side": d.wrong_side, "known": d.known, "explanation": d.explanation,
            "signature": d.signature, "op": d.op, "shape": d.shape,
            "event_index": d.event_index, "detail": d.detail,
            "trace": trace_to_json(d.trace), "saved": saved,
            "reachability": reachability, "needs": needs, "picture": picture}


def build(results, seed: int, seconds: float, pictures: bool = True, reach: bool = True) -> dict:
    """The JSON report of a run (docs/REPORT.md).  For every divergence, unless turned off:
    `reachability` (fuzz.reachability: does it show with page-aligned notifier ranges) and
    `picture` (fuzz.picture.write_pictures: an SVG, with an HTML page beside it, written next
    to the saved trace in the job's out_dir)."""
    divs, runs = [], []
    for res in results:
        j = res.job
        runs.append({"arch": j.arch, "old": j.old.name, "new": j.new.name, "engine": getattr(j, "engine", "random"),
                     "seed": j.seed, "events": res.events, "traces": res.traces,
                     "seconds": round(res.seconds, 3), "interrupted": res.interrupted,
                     "aligned_only": bool(getattr(getattr(j, "gen", None), "aligned_only", False))})
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
                       "unaligned_only": sum(d.get("reachability") == UNALIGNED_ONLY for d in divs),
                       "interrupted": any(r["interrupted"] for r in runs)}}


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]


# ----- schema check of the JSON report ----------------------------------------------------
class ReportError(ValueError):
    """A report that does not follow docs/REPORT.md: names the field."""


_STR, _INT, _NUM, _BOOL = str, int, (int, float), bool
RUN_FIELDS = {"arch": _STR, "old": _STR, "new": _STR, "engine": _STR, "seed": _INT, "events": _INT,
              "traces": _INT, "seconds": _NUM, "interrupted": _BOOL, "aligned_only": _BOOL}
DIV_FIELDS = {"class": _STR, "arch": _STR, "old": _STR, "new": _STR, "wrong_side": _STR,
              "known": _BOOL, "explanation": _STR, "signature": _STR, "op": _STR, "shape": _STR,
              "event_index": _INT, "detail": _STR, "trace": dict, "saved": (_STR, type(None)),
              "reachability": (_STR, type(None)), "needs": (list, type(None)), "picture": (_STR, type(None))}
TOTAL_FIELDS = {"events": _INT, "traces": _INT, "seconds": _NUM, "events_per_second": _NUM,
                "divergences": _INT, "new_divergences": _INT, "unaligned_only": _INT,
                "interrupted": _BOOL}


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
        _fields(r, RUN_FIELDS, f"{source}: runs[{i}]")
    order = []
    for i, d in enumerate(doc["divergences"]):
        where = f"{source}: divergences[{i}]"
        # `needs` came after the schema's first reports, which stay valid without it
        _fields(d, DIV_FIELDS if "needs" in d else {k: v for k, v in DIV_FIELDS.items() if k != "needs"}, where)
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
    _fields(t, TOTAL_FIELDS, f"{source}: totals")
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
    if new:
        return (f"verdict: {_plural(new, 'NEW divergence')} not on the known list, "
                f"of {total} distinct (exit 1){stopped}")
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


def _kernel_sentence(d: dict) -> str:
    if d.get("needs") is None:
        return {ALIGNED: "shows with page-aligned ranges", UNALIGNED_ONLY: "needs unaligned ranges"}.get(
            d.get("reachability"), "not computed")
    if not d["needs"]:
        return "a running kernel can send this trace"
    return "only with what the mm never sends: " + ", ".join(d["needs"])


def _collapsed(divs: list[dict], out: TextIO) -> None:
    """Per architecture and version pair: what one version does that the other does not, then
    what both do, one line per class (count, ops and shapes, how many a running kernel reaches)."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for d in divs:
        groups.setdefault((d["arch"], d["old"], d["new"]), []).append(d)
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
                text = f"{cls} x{len(items)}, {reach} by a kernel-legal trace: " + "; ".join(shapes)
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
    fresh = [d for d in divs if not d["known"]]
    if fresh:
        print(file=out)
        print("NEW (not on the known list):", file=out)
        for i, d in enumerate(fresh, 1):
            _new_block(i, d, out)
    known = [d for d in divs if d["known"]]
    if known and not verbose:
        print(file=out)
        print("known, by what differs between the versions (one side wrong) and what both share", file=out)
        print("(one line per class; --verbose lists each divergence with its files):", file=out)
        _collapsed(known, out)
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
              + (" (aligned ranges only)" if r.get("aligned_only") else ""), file=out)
    print(f"total: {t['events']} events, {t['events_per_second']:.0f} events/s, {t['seconds']:.1f}s; "
          f"{t['divergences']} distinct divergences, {t['new_divergences']} new"
          + (f", {t['unaligned_only']} only with unaligned ranges" if t.get("unaligned_only") else "")
          + f" (seed {doc['seed']})", file=out)
    print(verdict(doc), file=out)


# ----- timeline of one trace --------------------------------------------------------------
RED, YELLOW, BOLD, RESET = "\x1b[31m", "\x1b[33m", "\x1b[1m", "\x1b[0m"


def _sides_for(arch: str, old, new) -> tuple[Side, Side]:
    if isinstance(old, Side) and isinstance(new, Side):
        return old, new
    return Side(old, registry.resolve(arch, old)), Side(new, registry.resolve(arch, new))


def _gfns_brief(leaves) -> str:
    return ",".join(f"as{x.as_id}:{x.gfn:#x}" + (f"+{x.pages}" if x.pages > 1 else "") for x in leaves)


def ref_brief(exp: Expectation | None) -> str:
    """What the reference requires at a notifier event, in one line ('' for other events)."""
    if exp is None:
        return ""
    parts = [f"gfns {exp.gfns.describe()}" if exp.gfns else "hits no memslot"]
    if exp.op == "invalidate_range_start":
        parts.append(f"must unmap {_gfns_brief(exp.must_unmap)}" if exp.must_unmap else "nothing mapped")
    elif exp.op in ("clear_flush_young", "clear_young"):
        parts.append(f"must age {_gfns_brief(exp.must_age)}" if exp.must_age else "nothing young")
    if exp.young is not None:
        parts.append(f"young={int(bool(exp.young))}")
    return "; ".join(parts)


def timeline_rows(events, res, arch: str, old, new, known=None):
    """Per event: (index, event line, [(who, text)], [divergences]) shared by the console and
    HTML timelines; `who` is old/new/both/ref/ref old/ref new."""
    old_side, new_side = _sides_for(arch, old, new)
    details = replay_details(events, old_side, new_side)
    by_event: dict[int, list[Divergence]] = {}
    for d in res.divergences:
        by_event.setdefault(d.event_index, []).append(d)
    rows = []
    width = max((len(ev.task) for ev in events), default=0) if is_task_trace(events) else 0
    for i, ev in enumerate(events):
        args = {k: v for k, v in event_to_json(ev).items() if k != "op" and not (width and k == "task")}
        line = f"{ev.op} " + " ".join(f"{k}={v}" for k, v in args.items())
        if width:       # a task column: which task runs the event
            line = f"{('' if ev.op == 'schedule' else ev.task):{width}s}  {line}"
        lines: list[tuple[str, str]] = []
        if i < len(res.observations):
            o, n = res.observations[i]
            oj, nj = o.to_json(), n.to_json()
            oj.pop("op"), nj.pop("op")
            if oj == nj:
                if len(oj) > 1 or oj.get("lock_taken"):
                    lines.append(("both", _brief(oj)))
            else:
                lines.append(("old", _brief(oj)))
                lines.append(("new", _brief(nj)))
        if i < len(details):
            ro, rn = ref_brief(details[i].old.exp), ref_brief(details[i].new.exp)
            if ro == rn and ro:
                lines.append(("ref", ro))
            else:
                if ro:
                    lines.append(("ref old", ro))
                if rn:
                    lines.append(("ref new", rn))
        rows.append((i, line, lines, by_event.get(i, [])))
    return rows, old_side, new_side, details


def print_timeline(events, res, arch: str, old, new, out: TextIO, color: bool | None = None,
                   reach: bool = True) -> None:
    """Each event with both sides' observations and, at notifier events, what the reference
    requires; the first divergent event is marked '>>' (and coloured when `out` is a tty),
    later ones '! '.  `old`/`new` are version names or candidate specs (or Sides)."""
    if color is None:
        color = hasattr(out, "isatty") and out.isatty()
    rows, old_side, new_side, _ = timeline_rows(events, res, arch, old, new)
    first = min((d.event_index for d in res.divergences), default=None)
    c = (lambda code, s: f"{code}{s}{RESET}") if color else (lambda code, s: s)
    print(f"{arch}: {old_side.name} (old) vs {new_side.name} (new), {len(events)} events", file=out)
    for i, line, lines, divs in rows:
        mark = ">>" if i == first else ("! " if divs else "  ")
        text = f"{mark}{i:3d} {line}"
        print(c(BOLD + RED, text) if i == first else (c(BOLD, text) if divs else text), file=out)
        for who, t in lines:
            print(f"        {who + ':':8s} {t}", file=out)
        for d in divs:
            status = "known" if d.known else "NEW"
            r = ""
            if reach:
                r, needs = reach_and_needs(events, arch, old_side, new_side, [], d.signature)
                others = [n for n in needs if n != "unaligned"]
                if r == UNALIGNED_ONLY:
                    r = "; only with unaligned ranges" + (" and " + ", ".join(others) if others else "")
                else:
                    r = ("; a running kernel can send this trace" if not needs
                         else "; aligned, but only with " + ", ".join(needs))
            print(c(YELLOW if d.known else RED,
                    f"        ** {d.cls} [{d.wrong_side} wrong, {status}] {d.shape}: {d.detail}{r}"), file=out)
            if d.known and d.explanation:
                print(f"           {d.explanation.splitlines()[0][:160]}", file=out)
    for text in run_order_lines(res):
        print(text, file=out)
    if not res.divergences:
        print("no divergence", file=out)


def is_task_trace(events) -> bool:
    """Events of more than one task, or a schedule directive."""
    return any(ev.task != MAIN_TASK or ev.op == "schedule" for ev in events)


def run_order_lines(res) -> list[str]:
    """Task mode: the order each side's tasks ran in, a segment per line (task, the events it
    was in, '…' when it resumed one already under way, and why it stopped)."""
    if not res.schedules:
        return []
    old, new = ([seg.describe() for seg in res.schedules.get(side, [])] for side in ("old", "new"))
    sides = [("both", old)] if old == new else [("old", old), ("new", new)]
    lines = []
    for who, segs in sides:
        lines.append(f"run order ({who}):")
        lines += [f"    {k:3d}  {seg}" for k, seg in enumerate(segs)]
    return lines


def show_html(events, res, arch: str, old, new, hva_scale: str = "compressed") -> str:
    """`show TRACE.json --html OUT.html`: the picture of every divergent event (its hva axis
    "compressed" or "linear", see fuzz.picture.svg_from_detail), then the timeline as a table
    (the first divergent event highlighted)."""
    rows, old_side, new_side, details = timeline_rows(events, res, arch, old, new)
    first = min((d.event_index for d in res.divergences), default=None)
    parts = [f"<h1>{escape(arch)}: {escape(old_side.name)} (old) vs {escape(new_side.name)} (new)</h1>",
             f"<p>{len(events)} events, {len(res.divergences)} divergence(s)</p>"]
    by_event: dict[int, list[Divergence]] = {}
    for d in res.divergences:
        by_event.setdefault(d.event_index, []).append(d)
    for i in sorted(by_event):
        divs = by_event[i]
        parts.append(f'<h2 id="event-{i}">event {i}: {escape(events[i].op)}</h2>')
        parts.append(svg_from_detail(details[i], divs[0], arch, divs, hva_scale))
        for d in divs:
            if d.explanation:
                parts.append(f"<p><b>{escape(d.signature)}</b>: {escape(d.explanation)}</p>")
    parts.append("<h2>timeline</h2><table><tr><th>#</th><th>event</th><th>observed / reference</th></tr>")
    for i, line, lines, divs in rows:
        cls = ' class="first"' if i == first else (' class="diverge"' if divs else "")
        obs = "<br>".join(f"<b>{escape(w)}:</b> {escape(t)}" for w, t in lines)
        for d in divs:
            obs += (f"<br><b>** {escape(d.cls)} [{escape(d.wrong_side)} wrong, "
                    f"{'known' if d.known else 'NEW'}] {escape(d.shape)}</b>: {escape(d.detail)}")
        parts.append(f"<tr{cls}><td>{i}</td><td>{escape(line)}</td><td>{obs}</td></tr>")
    parts.append("</table>")
    order = run_order_lines(res)
    if order:
        parts.append("<h2>run order</h2><pre>" + escape("\n".join(order)) + "</pre>")
    return html_page(f"memslot-fuzz show: {arch}", "\n".join(parts))


def _brief(obs: dict) -> str:
    parts = []
    for c in obs.get("calls", []):
        parts.append(f"{c['hook']}(as{c['as_id']}/slot{c['slot']} gfn [{c['gfns'][0]},{c['gfns'][1]}))")
    for name in ("zapped", "aged", "installed"):
        if name in obs:
            parts.append(name + " " + ",".join(f"as{x['as_id']}:{x['gfn']}" + (f"+{x['pages']}" if x["pages"] > 1 else "")
                                              for x in obs[name]))
    if "changed" in obs:
        parts.append("changed " + ",".join(f"as{c['after']['as_id']}:{c['after']['gfn']}->pfn {c['after']['pfn']}"
                                           for c in obs["changed"]))
    for f in obs.get("flushes", []):
        parts.append(f"flush {f['scope']}" + ("" if f["locked"] else " (unlocked)") + f" by {f['origin']}")
    if "young" in obs:
        parts.append(f"young={obs['young']}")
    parts.append("locked" if obs.get("lock_taken") else "no lock")
    for k in ("warnings", "error", "note", "crashed"):
        if k in obs:
            parts.append(f"{k}: {obs[k]}")
    return "; ".join(parts)

"""The timeline of one trace, per event and side: what each side did, what the reference
required, and the divergences, on the console (`show`) and as HTML (`show --html`).

    print_timeline(events, res, arch, old, new, out, color=None, reach=True)
    show_html(events, res, arch, old, new) -> str

`res` is a fuzz.runner.TraceResult run with keep_observations=True; old/new are version
names, candidate specs or fuzz.runner.Side objects.
"""
from __future__ import annotations

import textwrap
from html import escape
from typing import TextIO

from impls import registry
from oracles.compare import Divergence
from oracles.reference import Expectation

from fuzz.details import replay_details
from fuzz.reachability import UNALIGNED_ONLY, reach_and_needs
from fuzz.reports.picture import html_page, svg_from_detail
from fuzz.runner import Side
from language.trace import MAIN_TASK, event_to_json

WIDTH = 100
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
            if d.cause:
                status += f", {d.cause}" + (f" of event {d.root_event}" if d.cause == "knock-on" else "")
            print(c(YELLOW if d.known else RED,
                    f"        ** {d.cls} [{d.wrong_side} wrong, {status}] {d.shape}: {d.detail}{r}"), file=out)
            if d.cause and d.root and not d.known:
                print(textwrap.fill(f"follows from {d.root.replace('|', ' ')} at event {d.root_event}", WIDTH,
                                    initial_indent=" " * 11, subsequent_indent=" " * 11), file=out)
            if d.known and d.explanation:
                print(textwrap.fill(" ".join(d.explanation.split()), WIDTH, initial_indent=" " * 11,
                                    subsequent_indent=" " * 11, break_long_words=False,
                                    break_on_hyphens=False), file=out)
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
    "compressed" or "linear", see fuzz.reports.picture.svg_from_detail), then the timeline as a table
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

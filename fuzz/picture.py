"""Pictures of a divergence: an SVG (and an HTML page embedding it) a KVM developer reads at a
glance.

Top: the hva axis with every memslot as a bar (one colour per address space; slots backed by
the same hvas are stacked in lanes, so aliasing is visible) and the notifier range of the
diverging event.  Below, per address space, the gfn axis: one cell per gfn (long runs where
nothing changes are collapsed into one "…" cell), with rows

    reference       the gfns of the range, as oracles/reference.expect computes them
    <side> mapped   leaves present before the event
    <side> walker   gfns the walker handed to arch handlers, against the reference
    <side> zapped   (aged / changed) what the side did, against what the reference requires
    <side> flush    the TLB flushes the side issued, against the cached translations it owed

coloured ok (green), missed (red), extra (orange).  An off-by-one is one red or orange cell.

Data comes from re-running the trace event by event (fuzz.runner.apply_event) so that the
pre-event state of each side is at hand for the reference.

Functions for callers:
    replay_details(events, old_side, new_side, upto=None) -> list[EventDetail]
    render_svg(events, divergence, arch, old_side, new_side, others=None) -> str
    render_html(events, divergence, arch, old_side, new_side, others=None) -> str
    write_pictures(divergence, job, out_dir, stem=None) -> Path  (the .svg; .html beside it)
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from html import escape
from pathlib import Path

from impls.kvm import State
from impls.observation import Observation
from oracles.compare import Divergence
from oracles.gfnset import GfnSet
from oracles.reference import Expectation, expect

from . import output
from .runner import Side, apply_event
from .trace import Event, dumps, notifier_range

# cell states and their colours (the legend uses the same table)
COLOURS = {
    "ok": "#2ca02c",        # did what the reference requires
    "missed": "#d62728",    # required, not done
    "extra": "#ff7f0e",     # done, not required
    "ref": "#4a7fd4",       # reference gfns
    "done": "#17becf",      # done where the reference requires nothing in particular
    "mapped": "#b0b0b0",    # a leaf is present
    "young": "#808080",     # a young leaf is present
    "flush": "#9467bd",     # flushed, nothing owed there
    "slot": "#ececec",      # gfn in a memslot, nothing happened
    "none": "#ffffff",      # no memslot
}
LEGEND = [("ok", "ok"), ("missed", "missed"), ("extra", "extra"), ("ref", "reference gfns"),
          ("mapped", "mapped before"), ("young", "mapped, young"), ("flush", "flushed"),
          ("done", "done (no requirement)"), ("slot", "in a memslot")]
AS_COLOURS = ["#6baed6", "#74c476", "#fd8d3c", "#9e9ac8"]
MISSED, EXTRA = COLOURS["missed"], COLOURS["extra"]


# ----- data -------------------------------------------------------------------------------
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


def replay_details(events: list[Event], old_side: Side, new_side: Side,
                   upto: int | None = None) -> list[EventDetail]:
    """Re-run `events` (through index `upto`, default all) on both sides, as run_trace does
    (a side that crashed stops), keeping each side's pre-state and the reference for it."""
    if old_side.contained or new_side.contained:     # a user's candidate: only in its worker
        from .contain import replay_details_contained
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
            obs = apply_event(m, ev) if not dead[k] else Observation(ev.op)
            dead[k] |= bool(obs.crashed)
            views[k] = SideView(names[k], pre, m.snapshot(), obs, expect(ev, pre))
        out.append(EventDetail(i, ev, views["old"], views["new"]))
    return out


def _leaves(leaves) -> GfnSet:
    return GfnSet((x.as_id, x.gfn, x.gfn_end) for x in leaves)


@dataclass
class Row:
    label: str
    cells: list[tuple[GfnSet, str]]     # painted in order; later wins
    note: str = ""


def side_rows(ev: Event, v: SideView, label: str) -> list[Row]:
    """The rows of one side: mapped before, walker gfns, what it did, its flushes."""
    obs, exp, pre = v.obs, v.exp, v.pre
    rows: list[Row] = []
    mapped = [x for x in pre.leaves.values()]
    rows.append(Row(f"{label} mapped", [(_leaves([x for x in mapped if not x.young]), "mapped"),
                                        (_leaves([x for x in mapped if x.young]), "young")]))
    calls = GfnSet((c.as_id, c.start, c.end) for c in obs.calls)
    if exp is not None:
        want = exp.gfns
        rows.append(Row(f"{label} walker", [(calls & want, "ok"), (want - calls, "missed"),
                                            (calls - want, "extra")],
                        f"{len(obs.calls)} handler call(s)"))
    elif calls:
        rows.append(Row(f"{label} walker", [(calls, "done")]))

    # what the side did, against what the reference requires of it
    zapped, aged = _leaves(obs.zapped), _leaves(obs.aged)
    changed = _leaves([b for b, _ in obs.changed])
    installed = _leaves(obs.installed)
    required: GfnSet | None = None
    if ev.op == "invalidate_range_start" and exp is not None:
        did, what, required = zapped, "zapped", _leaves(exp.must_unmap)
    elif ev.op in ("clear_flush_young", "clear_young") and exp is not None:
        did, what, required = aged, "aged", _leaves(exp.must_age)
    elif ev.op == "change_pte" and exp is not None:
        did, what = changed | zapped, "changed"
        required = _leaves(mapped) & exp.gfns
    else:
        did = zapped | aged | changed | installed
        what = "/".join(n for n, s in (("zapped", zapped), ("aged", aged), ("changed", changed),
                                         ("installed", installed)) if s) or "acted"
    if required is not None:
        rows.append(Row(f"{label} {what}", [(did & required, "ok"), (required - did, "missed"),
                                            (did - required, "extra")]))
    elif did:
        rows.append(Row(f"{label} {what}", [(did, "done")]))

    # flushes: translations cached before the event that it removed or changed are owed one
    touched = zapped | changed | (aged if ev.op == "clear_flush_young" else GfnSet())
    if ev.op == "invalidate_range_start" and exp is not None:
        touched = touched | exp.gfns
    owed = GfnSet((e.as_id, e.gfn, e.gfn + e.pages) for e in pre.tlb
                  if touched.intersects(e.as_id, e.gfn, e.gfn + e.pages))
    spans, whole = [], False
    for f in obs.flushes:
        if f.scope == "all" or f.as_id is None:
            whole = whole or f.scope == "all"
            if f.scope != "all":
                spans += [(a, f.start, f.end) for a in range(pre.address_space_num)]
        else:
            spans.append((f.as_id, f.start, f.end))
    if obs.flushes or owed:
        everything = GfnSet((a, 0, 1 << 64) for a in range(pre.address_space_num))
        flushed = everything if whole else GfnSet(spans)
        kinds: dict[str, int] = {}
        for f in obs.flushes:
            k = f"{f.scope}{'' if f.locked else ' UNLOCKED'} by {f.origin}"
            kinds[k] = kinds.get(k, 0) + 1
        note = "; ".join(k + (f" x{c}" if c > 1 else "") for k, c in kinds.items())
        rows.append(Row(f"{label} flush", [(flushed, "flush"), (flushed & owed, "ok"),
                                           (owed - flushed, "missed")], note or "no flush"))
    return rows


# ----- layout helpers ---------------------------------------------------------------------
def _columns(breaks: list[int], lo: int, hi: int) -> list[tuple[int, int]]:
    """gfn columns over [lo, hi): one per gfn, except that a run longer than 4 between two
    breakpoints keeps its first and last gfn and collapses the middle into one column."""
    pts = sorted({b for b in breaks if lo < b < hi} | {lo, hi})
    cols: list[tuple[int, int]] = []
    for a, b in zip(pts, pts[1:]):
        if b - a <= 4:
            cols += [(g, g + 1) for g in range(a, b)]
        else:
            cols += [(a, a + 1), (a + 1, b - 1), (b - 1, b)]
    return cols


def _lanes(items: list[tuple[int, int, object]]) -> list[tuple[int, int, object, int]]:
    """Greedy interval lanes: overlapping items go to different lanes."""
    ends: list[int] = []
    out = []
    for s, e, data in sorted(items, key=lambda t: (t[0], -t[1])):
        for lane, end in enumerate(ends):
            if end <= s:
                ends[lane] = e
                break
        else:
            lane = len(ends)
            ends.append(e)
        out.append((s, e, data, lane))
    return out


class _Svg:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def rect(self, x, y, w, h, fill, stroke="none", extra="", opacity=None) -> None:
        op = f' fill-opacity="{opacity}"' if opacity is not None else ""
        self.parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0.5):.1f}" height="{h:.1f}" '
                          f'fill="{fill}" stroke="{stroke}"{op} {extra}/>')

    def text(self, x, y, s, size=11, anchor="start", weight="normal", fill="#222", rotate=None) -> None:
        tr = f' transform="rotate({rotate} {x:.1f} {y:.1f})"' if rotate is not None else ""
        self.parts.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                          f'font-weight="{weight}" fill="{fill}"{tr}>{escape(str(s))}</text>')

    def line(self, x1, y1, x2, y2, stroke="#444", width=1, dash=None) -> None:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                          f'stroke="{stroke}" stroke-width="{width}"{d}/>')


LABEL_W = 190
CELL_W = 22
CELL_H = 16


def _hva_axis(svg: _Svg, state: State, rng: tuple[int, int] | None, y0: float, width: float) -> float:
    """Memslots on the hva axis, stacked where their hvas overlap; returns the height used."""
    page = 1 << state.page_shift
    slots = [s for s in state.slots if s.npages]
    items = [(s.hva_start, s.hva_end, s) for s in slots]
    if not items and rng is None:
        svg.text(LABEL_W, y0 + 14, "no memslot and no notifier range", fill="#666")
        return 24
    pts = {p for s, e, _ in items for p in (s, e)}
    if rng is not None:
        pts |= {rng[0], rng[1]}
    pts = sorted(pts)
    # compressed axis: each gap between breakpoints gets a width that grows with its log size
    gaps = [(a, b, min(200.0, 40 + 12 * math.log2(1 + (b - a) / page))) for a, b in zip(pts, pts[1:])]
    total = sum(w for _, _, w in gaps) or 1.0
    scale = min(1.0, (width - LABEL_W - 20) / total) if total > width - LABEL_W - 20 else 1.0
    xs: dict[int, float] = {}
    x = LABEL_W
    for a, b, w in gaps:
        xs.setdefault(a, x)
        x += w * scale
        xs[b] = x
    if len(pts) == 1:
        xs[pts[0]] = LABEL_W

    def hx(h: int) -> float:
        for a, b, _ in gaps:
            if a <= h <= b:
                return xs[a] + (xs[b] - xs[a]) * ((h - a) / (b - a) if b > a else 0)
        return xs[pts[0]] if h < pts[0] else xs[pts[-1]]

    laid = _lanes(items)
    nlanes = max([lane for *_, lane in laid], default=-1) + 1
    svg.text(8, y0 + 14, "hva", weight="bold")
    top = y0 + 4
    lane_h = 22
    for s, e, slot, lane in laid:
        y = top + lane * lane_h
        colour = AS_COLOURS[slot.as_id % len(AS_COLOURS)]
        x1, x2 = hx(s), hx(e)
        svg.rect(x1, y, x2 - x1, lane_h - 4, colour, "#333",
                 f'data-slot="as{slot.as_id}/slot{slot.id}" data-hva="{s:#x}-{e:#x}"')
        svg.text(x1 + 3, y + 13, f"as{slot.as_id}/s{slot.id}", size=10)
    height = max(nlanes, 1) * lane_h
    if rng is not None:
        x1, x2 = hx(rng[0]), hx(rng[1])
        svg.rect(x1 - (1 if x2 - x1 < 3 else 0), top - 3, max(x2 - x1, 3), height + 2, "#d62728",
                 "#d62728", 'data-range="notifier" stroke-dasharray="4 2"', opacity=0.18)
    axis_y = top + height + 2
    svg.line(LABEL_W, axis_y, LABEL_W + total * scale, axis_y)
    for p in pts:
        svg.line(xs[p], axis_y, xs[p], axis_y + 4)
        weight = "bold" if rng is not None and p in rng else "normal"
        svg.text(xs[p] + 3, axis_y + 8, f"{p:#x}", size=9, rotate=60, weight=weight)
    y = axis_y + 100
    # the slots in words; slots sharing hvas are named as aliases
    for s, e, slot, lane in laid:
        alias = [f"as{o.as_id}/slot{o.id}" for o in slots if o is not slot
                 and o.hva_start < slot.hva_end and slot.hva_start < o.hva_end]
        svg.text(LABEL_W, y, f"as{slot.as_id}/slot{slot.id}: hva [{s:#x}, {e:#x}) -> gfn "
                 f"[{slot.base_gfn:#x}, {slot.gfn_end:#x})" + (f"  flags {slot.flags:#x}" if slot.flags else "")
                 + (f"  hva aliased with {', '.join(alias)}" if alias else ""), size=10,
                 fill="#333")
        y += 14
    return y - y0 + 6


def _gfn_axis(svg: _Svg, as_id: int, rows: list[Row], ref: GfnSet | None, state: State,
              y0: float) -> float:
    """One address space's gfn rows; returns the height used (0 if nothing to draw)."""
    def spans_of(selected: list[Row]) -> list[tuple[int, int, int]]:
        got = GfnSet()
        for r in selected:
            for s, _ in r.cells:
                got = got | GfnSet(x for x in s.spans() if x[0] == as_id and x[2] - x[1] < 1 << 40)
        if ref is not None:
            got = got | GfnSet(x for x in ref.spans() if x[0] == as_id)
        return got.spans()

    # the window is what the event is about; leaves mapped elsewhere are only context
    spans = spans_of([r for r in rows if not r.label.endswith(" mapped")]) or spans_of(rows)
    if not spans:
        return 0
    lo, hi = max(0, spans[0][1] - 1), spans[-1][2] + 1
    breaks = [p for _, s, e in spans for p in (s, e)]
    slots = [s for s in state.slots if s.as_id == as_id and s.npages]
    breaks += [p for s in slots for p in (s.base_gfn, s.gfn_end)]
    for r in rows:
        for s, _ in r.cells:
            breaks += [p for a, st, en in s.spans() if a == as_id for p in (st, en)]
    cols = _columns(breaks, lo, hi)
    slot_set = GfnSet((as_id, s.base_gfn, s.gfn_end) for s in slots)
    svg.text(8, y0 + 12, f"gfn, address space {as_id}", weight="bold")
    y = y0 + 20
    all_rows = ([Row("reference", [(ref, "ref")])] if ref is not None else []) + rows
    for r in all_rows:
        svg.text(8, y + CELL_H - 4, r.label, size=11)
        for ci, (s, e) in enumerate(cols):
            state_name = "slot" if slot_set.intersects(as_id, s, e) else "none"
            for cells, st in r.cells:
                if cells.intersects(as_id, s, e):
                    state_name = st
            x = LABEL_W + ci * CELL_W
            svg.rect(x, y, CELL_W - 2, CELL_H, COLOURS[state_name], "#999",
                     f'data-row="{escape(r.label)}" data-as="{as_id}" data-gfn="{s:#x}" '
                     f'data-gfns="{e - s}" data-state="{state_name}"')
            if e - s > 1:
                svg.text(x + (CELL_W - 2) / 2, y + CELL_H - 4, "…", size=10, anchor="middle")
        if r.note:
            svg.text(LABEL_W + len(cols) * CELL_W + 6, y + CELL_H - 4, r.note, size=10, fill="#555")
        y += CELL_H + 4
    for ci, (s, e) in enumerate(cols):
        x = LABEL_W + ci * CELL_W + 4
        label = f"{s:#x}" if e - s == 1 else f"+{e - s:#x} gfns"
        svg.text(x, y + 4, label, size=9, rotate=60, fill="#444" if e - s == 1 else "#888")
    return (y - y0) + 70


def _side_summary(v: SideView, ev: Event) -> str:
    o = v.obs
    parts = []
    if o.flushes:
        parts.append(f"{len(o.flushes)} flush(es)")
    else:
        parts.append("no flush")
    if o.young is not None and v.exp is not None and v.exp.young is not None:
        parts.append(f"young={o.young} (truth {int(bool(v.exp.young))})")
    parts.append("mmu_lock taken" if o.lock_taken else "no mmu_lock")
    if o.warnings:
        parts.append("WARN: " + "; ".join(o.warnings))
    if o.crashed:
        parts.append("crashed: " + o.crashed)
    if o.note:
        parts.append(o.note)
    if o.error:
        parts.append(o.error)
    return ", ".join(parts)


def svg_from_detail(det: EventDetail, divergence: Divergence, arch: str,
                    others: list[Divergence] | None = None) -> str:
    """The picture of one event already replayed (see replay_details)."""
    ev, o, n = det.event, det.old, det.new
    rng = notifier_range(ev)
    divs = others or [divergence]
    rows_o = side_rows(ev, o, f"old {o.name}")
    rows_n = side_rows(ev, n, f"new {n.name}")
    ref = o.exp.gfns if o.exp is not None else None
    as_ids = sorted({a for r in rows_o + rows_n for s, _ in r.cells for a, st, en in s.spans()
                     if en - st < 1 << 40} | ({a for a, _, _ in ref.spans()} if ref is not None else set()))
    ncols_guess = 40
    width = max(900, LABEL_W + ncols_guess * CELL_W + 260)
    body = _Svg()
    y = 10.0
    status = "known" if divergence.known else "NEW"
    body.text(8, y + 14, f"{divergence.cls} ({divergence.wrong_side} wrong, {status}) at event "
              f"{det.index}: {ev.op}" + (f" [{rng[0]:#x}, {rng[1]:#x})" if rng else ""), size=15, weight="bold")
    y += 22
    body.text(8, y + 12, f"{arch}: {o.name} (old) vs {n.name} (new); shape {divergence.shape}", size=11)
    y += 16
    for d in divs:
        body.text(8, y + 12, f"{d.cls} [{d.wrong_side}] {d.shape}: {d.detail}"[:220], size=10, fill="#555")
        y += 14
    y += 8
    y += _hva_axis(body, o.pre, rng, y, width)
    drawn = False
    for a in as_ids:
        ra = [r for r in rows_o + rows_n]
        h = _gfn_axis(body, a, ra, ref, o.pre, y)
        if h:
            drawn = True
            y += h
    if not drawn:
        body.text(8, y + 14, "no gfn involved: the range hits no memslot and neither side touched a mapping",
                  fill="#666")
        y += 24
    for v, tag in ((o, "old"), (n, "new")):
        body.text(8, y + 12, f"{tag} {v.name}: {_side_summary(v, ev)}"[:220], size=11)
        y += 16
    y += 6
    x = 8.0
    for key, label in LEGEND:
        body.rect(x, y, 12, 12, COLOURS[key], "#999")
        body.text(x + 16, y + 10, label, size=10)
        x += 28 + 6.2 * len(label)
    y += 24
    max_x = width
    for p in body.parts:     # widen to fit the widest gfn axis
        if 'data-gfn="' in p:
            xv = float(p.split('x="', 1)[1].split('"', 1)[0])
            max_x = max(max_x, xv + CELL_W + 260)
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{max_x:.0f}" height="{y:.0f}" '
            f'viewBox="0 0 {max_x:.0f} {y:.0f}" font-family="DejaVu Sans Mono, monospace" '
            f'data-signature="{escape(divergence.signature)}">')
    return "\n".join([head, f'<rect x="0" y="0" width="{max_x:.0f}" height="{y:.0f}" fill="#ffffff"/>']
                     + body.parts + ["</svg>"]) + "\n"


def render_svg(events: list[Event], divergence: Divergence, arch: str, old_side: Side,
               new_side: Side, others: list[Divergence] | None = None) -> str:
    """SVG of `divergence` (its event_index in `events`); `others` are further divergences of
    the same event to list in the title block."""
    if not 0 <= divergence.event_index < len(events):
        raise ValueError(f"divergence {divergence.signature}: event_index {divergence.event_index} "
                         f"is outside the trace of {len(events)} events")
    det = replay_details(events, old_side, new_side, divergence.event_index)[-1]
    return svg_from_detail(det, divergence, arch, others)


PAGE_STYLE = """body{font-family:sans-serif;margin:16px;background:#fff;color:#222}
pre{font-size:12px;background:#f7f7f7;padding:8px;overflow:auto}
table{border-collapse:collapse;font-size:12px;font-family:monospace}
td,th{border:1px solid #ddd;padding:2px 6px;vertical-align:top;text-align:left}
tr.diverge td{background:#fde0e0}tr.first td{background:#f9b4b4}"""


def html_page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{PAGE_STYLE}</style></head><body>\n{body}\n</body></html>\n")


def render_html(events: list[Event], divergence: Divergence, arch: str, old_side: Side,
                new_side: Side, others: list[Divergence] | None = None) -> str:
    """A standalone page: the picture, the divergence's explanation, and the trace."""
    return _page_for(render_svg(events, divergence, arch, old_side, new_side, others),
                     events, divergence, arch)


def _page_for(svg: str, events: list[Event], divergence: Divergence, arch: str) -> str:
    expl = f"<p>{escape(divergence.explanation)}</p>" if divergence.explanation else ""
    body = (f"<h1>{escape(divergence.cls)} on {escape(arch)}</h1>\n"
            f"<p><code>{escape(divergence.signature)}</code></p>\n{svg}{expl}"
            f"<h2>trace</h2><pre>{escape(dumps(events))}</pre>")
    return html_page(divergence.signature, body)


def picture_stem(divergence: Divergence) -> str:
    return hashlib.sha256((divergence.signature + "\n" + dumps(divergence.trace)).encode()).hexdigest()[:16]


def write_pictures(divergence: Divergence, job, out_dir: Path, stem: str | None = None) -> Path:
    """Write <out_dir>/<arch>/<stem>.svg and .html for `divergence` (its minimized trace in
    divergence.trace, run with job.old / job.new) and return the .svg path.  Files are
    written through fuzz.output (atomically, with the umask's mode); a failure is one
    OutputError line."""
    stem = stem or picture_stem(divergence)
    target = Path(out_dir) / job.arch
    with output.errors(target, None, "cannot create directory"):
        target.mkdir(parents=True, exist_ok=True)
    det = replay_details(divergence.trace, job.old, job.new, divergence.event_index)[-1]
    svg = svg_from_detail(det, divergence, job.arch)
    html = _page_for(svg, divergence.trace, divergence, job.arch)
    paths = {}
    for ext, text in (("svg", svg), ("html", html)):
        paths[ext] = target / f"{stem}.{ext}"
        output.write_text(paths[ext], text)
    return paths["svg"]

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
    render_svg(events, divergence, arch, old_side, new_side, others=None, hva_scale="compressed") -> str
    render_html(events, divergence, arch, old_side, new_side, others=None, hva_scale="compressed") -> str
    write_pictures(divergence, job, out_dir, stem=None, hva_scale="compressed") -> Path
        (the .svg; .html beside it)

Sizes are for a laptop screen (about 1400 x 900 CSS px): PAGE_W wide, cells at least CELL_W x
CELL_H px, no text under SMALL px, none rotated.  The hva axis is "compressed" (each gap between
breakpoints grows with the log of its bytes, so a 1-byte range and a 1 GiB slot both show) or
"linear" (to scale: a 1-byte range is a hairline, still labelled); the legend says which.
"""
from __future__ import annotations

import hashlib
import math
import textwrap
from dataclasses import dataclass
from html import escape
from pathlib import Path

from impls.kvm import State
from oracles.compare import Divergence
from oracles.gfnset import GfnSet

from fuzz import output
from fuzz.details import EventDetail, SideView, replay_details
from fuzz.runner import Side
from language.trace import Event, dumps, notifier_range

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


# Sizes in CSS px, for a laptop screen (about 1400 x 900): the picture is PAGE_W wide, so it fits
# a 1400 px window beside the page margins and a scrollbar; no text is smaller than SMALL px and
# none is rotated (axis labels that would collide are staggered onto further rows, or thinned).
PAGE_W = 1340
TITLE = 18          # the title line
FONT = 14           # row labels, slot names, summaries
SMALL = 12          # axis labels, notes, legend: the legibility floor
CHAR = 0.61         # advance of the monospace font, in em (DejaVu Sans Mono: 0.602)
CELL_W = 32         # smallest pitch of gfn cells; cells widen to fill the page, up to CELL_MAX_W
CELL_MAX_W = 88
CELL_GAP = 2        # white between two cells: a cell is drawn CELL_W - CELL_GAP (30) px wide or more
CELL_H = 24
ROW_GAP = 6
LANE_H = 30         # one lane of memslot bars on the hva axis
MIN_LABEL_W = 170
HVA_SCALES = ("compressed", "linear")
COMPRESSED_MIN_PX = 4.0     # the narrowest hva gap a compressed axis draws


class _Svg:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def rect(self, x, y, w, h, fill, stroke="none", extra="", opacity=None) -> None:
        op = f' fill-opacity="{opacity}"' if opacity is not None else ""
        self.parts.append(f'<rect x="{x:.2f}" y="{y:.1f}" width="{max(w, 0.5):.2f}" height="{h:.1f}" '
                          f'fill="{fill}" stroke="{stroke}"{op} {extra}/>')

    def text(self, x, y, s, size=FONT, anchor="start", weight="normal", fill="#222", extra="") -> None:
        self.parts.append(f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
                          f'font-weight="{weight}" fill="{fill}"{extra}>{escape(str(s))}</text>')

    def line(self, x1, y1, x2, y2, stroke="#444", width=1, dash=None) -> None:
        d = f' stroke-dasharray="{dash}"' if dash else ""
        self.parts.append(f'<line x1="{x1:.2f}" y1="{y1:.1f}" x2="{x2:.2f}" y2="{y2:.1f}" '
                          f'stroke="{stroke}" stroke-width="{width}"{d}/>')

    def lines(self, x, y, s, size=FONT, width=None, **kw) -> float:
        """`s` wrapped to `width` px (default: to the right edge of the page) from baseline y;
        returns the height used."""
        n = 0
        for n, part in enumerate(_wrap(s, size, (width or PAGE_W - x - 8)), 1):
            self.text(x, y + (n - 1) * (size + 4), part, size, **kw)
        return n * (size + 4)


def _tw(s: str, size: float) -> float:
    """Width of `s` in px in the picture's monospace font."""
    return len(s) * size * CHAR


def _wrap(s: str, size: float, width: float) -> list[str]:
    return textwrap.wrap(s, max(10, int(width // (size * CHAR))), break_on_hyphens=False) or [""]


def _stagger(svg: _Svg, labels: list[tuple[float, str, bool, dict]], axis_y: float, size: int,
             max_rows: int, x_max: float, anchor: str = "start") -> float:
    """Axis labels without rotation: each label hangs below its tick at x; one that would overlap
    a label already placed goes to the next row down (with a tick line reaching it); a label
    that finds no room in `max_rows` rows is left out, unless it is marked important, which
    always gets a row.  Important labels are placed first.  Returns the height used."""
    line_h = size + 5
    rows: list[list[tuple[float, float]]] = []
    placed = []
    for x, text, important, kw in sorted(labels, key=lambda t: (not t[2], t[0])):
        w = _tw(text, size)
        if anchor == "middle":
            x0 = min(max(x - w / 2, 0.0), x_max - w)
            a = "middle"
            tx = x0 + w / 2
        elif x + 3 + w > x_max:              # no room to the right of the tick: end at the tick
            x0, a, tx = x - 3 - w, "end", x - 3
        else:
            x0, a, tx = x + 3, "start", x + 3
        x1 = x0 + w
        for r, taken in enumerate(rows + [[]]):
            if r >= max_rows and not important:
                r = None
                break
            if all(x1 + 6 <= s or e + 6 <= x0 for s, e in taken):
                break
        if r is None:
            continue
        if r == len(rows):
            rows.append([])
        rows[r].append((x0, x1))
        placed.append((x, tx, a, text, r, kw))
    for x, tx, a, text, r, kw in placed:     # ticks first: a tick passing a label is hidden by its halo
        base = axis_y + 4 + (r + 1) * line_h - 5
        if r or anchor == "start":
            svg.line(x, axis_y, x, base - size + 2 if r else axis_y + 5, "#999" if r else "#444")
    for x, tx, a, text, r, kw in placed:
        base = axis_y + 4 + (r + 1) * line_h - 5
        svg.text(tx, base, text, size, a, extra=' stroke="#fff" stroke-width="4" paint-order="stroke"', **kw)
    return len(rows) * line_h + 6


def _hva_positions(pts: list[int], x0: float, avail: float, scale: str,
                   page: int = 4096) -> dict[int, float]:
    """x of every breakpoint on the hva axis, from x0 over `avail` px.  linear: every gap in
    proportion to its bytes; compressed (the axis these pictures always had): a gap of n bytes
    gets min(200, 40 + 12 * log2(1 + n / page)) units (4 KiB pages: 1 byte 40, a page 52, 2 MiB
    148, 16 MiB and more 200), the units stretched or squeezed to fill the axis, no gap
    narrower than COMPRESSED_MIN_PX."""
    if len(pts) == 1:
        return {pts[0]: x0}
    gaps = [b - a for a, b in zip(pts, pts[1:])]
    if scale == "linear":
        widths = [avail * g / (pts[-1] - pts[0]) for g in gaps]
    else:
        raw = [min(200.0, 40 + 12 * math.log2(1 + g / page)) for g in gaps]
        small: set[int] = set()
        while True:     # gaps below the minimum get the minimum; the rest share what is left
            rest = avail - COMPRESSED_MIN_PX * len(small)
            big = sum(r for i, r in enumerate(raw) if i not in small) or 1.0
            widths = [COMPRESSED_MIN_PX if i in small else r * rest / big for i, r in enumerate(raw)]
            more = {i for i, w in enumerate(widths) if w < COMPRESSED_MIN_PX} - small
            if not more or len(small | more) == len(raw):
                break
            small |= more
    xs = {pts[0]: x0}
    x = x0
    for p, w in zip(pts[1:], widths):
        x += w
        xs[p] = x
    return xs


def _hva_axis(svg: _Svg, state: State, rng: tuple[int, int] | None, y0: float,
              scale: str) -> float:
    """Memslots on the hva axis, stacked where their hvas overlap; returns the height used."""
    slots = [s for s in state.slots if s.npages]
    items = [(s.hva_start, s.hva_end, s) for s in slots]
    x_lo, x_hi = MIN_LABEL_W, PAGE_W - 12
    if not items and rng is None:
        svg.text(x_lo, y0 + 16, "no memslot and no notifier range", fill="#666")
        return 28
    pts = {p for s, e, _ in items for p in (s, e)}
    if rng is not None:
        pts |= {rng[0], rng[1]}
    pts = sorted(pts)
    xs = _hva_positions(pts, x_lo, x_hi - x_lo, scale, 1 << state.page_shift)

    def hx(h: int) -> float:
        return xs[h]

    laid = _lanes(items)
    nlanes = max([lane for *_, lane in laid], default=-1) + 1
    svg.text(8, y0 + 36, "hva", FONT, weight="bold")
    svg.text(8, y0 + 54, f"({scale})", SMALL, fill="#555")
    y = y0
    if rng is not None:         # the range's name above the bars, so a hairline is found
        x1, x2 = hx(rng[0]), hx(rng[1])
        n = rng[1] - rng[0]
        what = f"notifier range, {n} byte{'s' if n != 1 else ''}"
        if n >= 1 << state.page_shift:
            pages = n / (1 << state.page_shift)
            what += f" ({pages:g} page{'s' if pages != 1 else ''})"
        tx = min(max(x1, x_lo), x_hi - _tw(what, SMALL))
        svg.text(tx, y + 14, what, SMALL, fill=MISSED, weight="bold")
        y += 20
    top = y + 4
    height = max(nlanes, 1) * LANE_H
    for s, e, slot, lane in laid:
        ly = top + lane * LANE_H
        colour = AS_COLOURS[slot.as_id % len(AS_COLOURS)]
        x1, x2 = hx(s), hx(e)
        svg.rect(x1, ly, x2 - x1, LANE_H - 6, colour, "#333",
                 f'data-slot="as{slot.as_id}/slot{slot.id}" data-hva="{s:#x}-{e:#x}"')
        name = f"as{slot.as_id}/slot{slot.id}"
        if _tw(name, FONT) + 8 > x2 - x1:
            name = f"as{slot.as_id}/s{slot.id}"
        if _tw(name, FONT) + 8 <= x2 - x1:
            svg.text(x1 + 4, ly + LANE_H - 12, name, FONT)
    if rng is not None:
        x1, x2 = hx(rng[0]), hx(rng[1])
        w = x2 - x1
        if scale == "linear" and w < 3:      # to scale: a hairline, solid so it is seen
            svg.rect(x1, top - 6, max(w, 1.0), height + 4, MISSED, "none",
                     f'data-range="notifier" data-range-px="{w:.4f}"')
        else:
            svg.rect(x1, top - 3, max(w, 3.0), height - 2, MISSED, MISSED,
                     f'data-range="notifier" data-range-px="{w:.4f}" stroke-dasharray="5 3"', opacity=0.2)
    axis_y = top + height + 2
    svg.line(x_lo, axis_y, x_hi, axis_y)
    labels = [(xs[p], f"{p:#x}", rng is not None and p in rng,
               {"weight": "bold", "fill": MISSED} if rng is not None and p in rng else {"fill": "#333"})
              for p in pts]
    y = axis_y + _stagger(svg, labels, axis_y, SMALL, 3, PAGE_W - 4) + 10
    # the slots in words; slots sharing hvas are named as aliases
    for s, e, slot, lane in laid:
        alias = [f"as{o.as_id}/slot{o.id}" for o in slots if o is not slot
                 and o.hva_start < slot.hva_end and slot.hva_start < o.hva_end]
        y += svg.lines(x_lo, y + FONT, f"as{slot.as_id}/slot{slot.id}: hva [{s:#x}, {e:#x}) -> gfn "
                       f"[{slot.base_gfn:#x}, {slot.gfn_end:#x}), {slot.npages} pages"
                       + (f", flags {slot.flags:#x}" if slot.flags else "")
                       + (f", hva aliased with {', '.join(alias)}" if alias else ""), FONT, fill="#333")
    return y - y0 + 10


def _gfn_axis(svg: _Svg, as_id: int, rows: list[Row], ref: GfnSet | None, state: State,
              y0: float, label_w: float) -> float:
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
    all_rows = ([Row("reference", [(ref, "ref")])] if ref is not None else []) + rows
    note_w = max([_tw(r.note, SMALL) + 14 for r in all_rows if r.note], default=0)
    room = PAGE_W - label_w - note_w - 8
    if len(cols) * CELL_W > room:      # cells take the whole width; the notes go below them
        room = PAGE_W - label_w - 8
    per_band = max(1, int(room // CELL_W))
    bands = [cols[i:i + per_band] for i in range(0, len(cols), per_band)]
    cw = int(min(CELL_MAX_W, max(CELL_W, room // max(len(bands[0]), 1))))
    ref_edges = {p for _, s, e in (GfnSet(x for x in ref.spans() if x[0] == as_id).spans()
                                   if ref is not None else []) for p in (s, e - 1)}
    y = y0
    for bi, band in enumerate(bands):
        part = f" (gfns {band[0][0]:#x}-{band[-1][1] - 1:#x}, part {bi + 1} of {len(bands)})" if len(bands) > 1 else ""
        svg.text(8, y + 18, f"gfn, address space {as_id}{part}", FONT, weight="bold")
        y += 28
        y = _gfn_band(svg, as_id, all_rows, band, cw, slot_set, ref_edges, y, label_w, bi == 0)
    return (y - y0) + 12


def _gfn_band(svg: _Svg, as_id: int, all_rows: list[Row], cols: list[tuple[int, int]], cw: int,
              slot_set: GfnSet, ref_edges: set[int], y: float, label_w: float, notes: bool) -> float:
    """One band of gfn columns (a gfn axis wider than the page wraps like text): the rows, then
    the gfn labels; returns the y below it."""
    states: list[set[str]] = [set() for _ in cols]
    group = None
    for r in all_rows:
        g = r.label.split(" ")[0]
        if group is not None and g != group:     # a little air between reference, old and new
            y += 8
        group = g
        svg.text(8, y + CELL_H - 7, r.label, FONT)
        for ci, (s, e) in enumerate(cols):
            state_name = "slot" if slot_set.intersects(as_id, s, e) else "none"
            for cells, st in r.cells:
                if cells.intersects(as_id, s, e):
                    state_name = st
            states[ci].add(state_name)
            x = label_w + ci * cw
            svg.rect(x, y, cw - CELL_GAP, CELL_H, COLOURS[state_name], "#999",
                     f'shape-rendering="crispEdges" data-row="{escape(r.label)}" data-as="{as_id}" '
                     f'data-gfn="{s:#x}" data-gfns="{e - s}" data-state="{state_name}"')
            if e - s > 1:
                svg.text(x + (cw - CELL_GAP) / 2, y + CELL_H - 7, "…", FONT, anchor="middle")
        if r.note and notes:
            nx = label_w + len(cols) * cw + 8
            if nx + _tw(r.note, SMALL) > PAGE_W:        # no room beside the cells: below them
                y += CELL_H + 2
                nx = label_w
            svg.text(nx, y + CELL_H - 7, r.note, SMALL, fill="#444")
        y += CELL_H + ROW_GAP
    # gfn labels under the cells: every edge of the reference and every wrong cell always,
    # the others as room allows
    labels = []
    for ci, (s, e) in enumerate(cols):
        x = label_w + ci * cw + (cw - CELL_GAP) / 2
        if e - s == 1:
            important = bool(states[ci] & {"missed", "extra"}) or s in ref_edges
            labels.append((x, f"{s:#x}", important,
                           {"fill": "#111", "weight": "bold"} if important else {"fill": "#333"}))
        else:
            labels.append((x, f"{e - s} gfns", False, {"fill": "#777"}))
    return y + _stagger(svg, labels, y - ROW_GAP + 2, SMALL, 3, PAGE_W - 4, anchor="middle")


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


def _scale_words(scale: str, state: State, rng: tuple[int, int] | None) -> str:
    pts = sorted({p for s in state.slots if s.npages for p in (s.hva_start, s.hva_end)}
                 | (set(rng) if rng else set()))
    if scale == "linear":
        span = pts[-1] - pts[0] if len(pts) > 1 else 0
        per_px = span / (PAGE_W - 12 - MIN_LABEL_W) if span else 0
        return (f"hva axis: linear, to scale ({per_px:,.1f} bytes per px); a range narrower than "
                f"a pixel is a hairline")
    return ("hva axis: compressed, NOT to scale (a gap's width grows with the log of its size: "
            "1 byte, 1 page, 512 pages, 4096 pages or more = 40 : 52 : 148 : 200)")


def svg_from_detail(det: EventDetail, divergence: Divergence, arch: str,
                    others: list[Divergence] | None = None, hva_scale: str = "compressed") -> str:
    """The picture of one event already replayed (see replay_details).  `hva_scale` is
    "compressed" (gaps between hva breakpoints grow with the log of their size) or "linear"
    (every gap in proportion to its bytes)."""
    if hva_scale not in HVA_SCALES:
        raise ValueError(f"hva_scale {hva_scale!r}: expected one of {', '.join(HVA_SCALES)}")
    ev, o, n = det.event, det.old, det.new
    rng = notifier_range(ev)
    divs = others or [divergence]
    rows_o = side_rows(ev, o, f"old {o.name}")
    rows_n = side_rows(ev, n, f"new {n.name}")
    ref = o.exp.gfns if o.exp is not None else None
    as_ids = sorted({a for r in rows_o + rows_n for s, _ in r.cells for a, st, en in s.spans()
                     if en - st < 1 << 40} | ({a for a, _, _ in ref.spans()} if ref is not None else set()))
    label_w = max(MIN_LABEL_W, math.ceil(max(_tw(r.label, FONT) for r in rows_o + rows_n
                                             + [Row("reference", [])])) + 24)
    body = _Svg()
    y = 8.0
    status = "known" if divergence.known else "NEW"
    y += body.lines(8, y + TITLE, f"{divergence.cls} ({divergence.wrong_side} wrong, {status}) at event "
                    f"{det.index}: {ev.op}" + (f" [{rng[0]:#x}, {rng[1]:#x})" if rng else ""), TITLE,
                    weight="bold")
    y += 2
    y += body.lines(8, y + FONT, f"{arch}: {o.name} (old) vs {n.name} (new); shape {divergence.shape}", FONT)
    for d in divs:
        y += body.lines(8, y + SMALL, f"{d.cls} [{d.wrong_side}] {d.shape}: {d.detail}", SMALL, fill="#444")
    y += 10
    y += _hva_axis(body, o.pre, rng, y, hva_scale)
    drawn = False
    for a in as_ids:
        h = _gfn_axis(body, a, rows_o + rows_n, ref, o.pre, y, label_w)
        if h:
            drawn = True
            y += h
    if not drawn:
        y += body.lines(8, y + FONT, "no gfn involved: the range hits no memslot and neither side "
                        "touched a mapping", fill="#666")
        y += 8
    for v, tag in ((o, "old"), (n, "new")):
        y += body.lines(8, y + FONT, f"{tag} {v.name}: {_side_summary(v, ev)}", FONT)
    y += 10
    x = 8.0
    for key, label in LEGEND:
        w = 22 + _tw(label, SMALL) + 18
        if x + w > PAGE_W:
            x, y = 8.0, y + 24
        body.rect(x, y, 16, 16, COLOURS[key], "#999")
        body.text(x + 22, y + 13, label, SMALL)
        x += w
    y += 26
    y += body.lines(8, y + SMALL, _scale_words(hva_scale, o.pre, rng), SMALL, fill="#444")
    y += 8
    max_x = float(PAGE_W)
    for p in body.parts:     # widen to fit a gfn axis with more columns than the page holds
        if 'data-gfn="' in p:
            a = p.split('x="', 1)[1]
            xv = float(a.split('"', 1)[0]) + float(p.split('width="', 1)[1].split('"', 1)[0])
            max_x = max(max_x, xv + 12)
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{max_x:.0f}" height="{y:.0f}" '
            f'viewBox="0 0 {max_x:.0f} {y:.0f}" font-family="DejaVu Sans Mono, monospace" '
            f'data-signature="{escape(divergence.signature)}" data-hva-scale="{hva_scale}">')
    return "\n".join([head, f'<rect x="0" y="0" width="{max_x:.0f}" height="{y:.0f}" fill="#ffffff"/>']
                     + body.parts + ["</svg>"]) + "\n"


def render_svg(events: list[Event], divergence: Divergence, arch: str, old_side: Side,
               new_side: Side, others: list[Divergence] | None = None,
               hva_scale: str = "compressed") -> str:
    """SVG of `divergence` (its event_index in `events`); `others` are further divergences of
    the same event to list in the title block; `hva_scale` as in svg_from_detail."""
    if not 0 <= divergence.event_index < len(events):
        raise ValueError(f"divergence {divergence.signature}: event_index {divergence.event_index} "
                         f"is outside the trace of {len(events)} events")
    det = replay_details(events, old_side, new_side, divergence.event_index)[-1]
    return svg_from_detail(det, divergence, arch, others, hva_scale)


PAGE_STYLE = """body{font-family:sans-serif;margin:16px;background:#fff;color:#222}
pre{font-size:12px;background:#f7f7f7;padding:8px;overflow:auto}
table{border-collapse:collapse;font-size:12px;font-family:monospace}
td,th{border:1px solid #ddd;padding:2px 6px;vertical-align:top;text-align:left}
tr.diverge td{background:#fde0e0}tr.first td{background:#f9b4b4}"""


def html_page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{PAGE_STYLE}</style></head><body>\n{body}\n</body></html>\n")


def render_html(events: list[Event], divergence: Divergence, arch: str, old_side: Side,
                new_side: Side, others: list[Divergence] | None = None,
                hva_scale: str = "compressed") -> str:
    """A standalone page: the picture, the divergence's explanation, and the trace."""
    return _page_for(render_svg(events, divergence, arch, old_side, new_side, others, hva_scale),
                     events, divergence, arch)


def _page_for(svg: str, events: list[Event], divergence: Divergence, arch: str) -> str:
    expl = f"<p>{escape(divergence.explanation)}</p>" if divergence.explanation else ""
    body = (f"<h1>{escape(divergence.cls)} on {escape(arch)}</h1>\n"
            f"<p><code>{escape(divergence.signature)}</code></p>\n{svg}{expl}"
            f"<h2>trace</h2><pre>{escape(dumps(events))}</pre>")
    return html_page(divergence.signature, body)


def picture_stem(divergence: Divergence) -> str:
    return hashlib.sha256((divergence.signature + "\n" + dumps(divergence.trace)).encode()).hexdigest()[:16]


def write_pictures(divergence: Divergence, job, out_dir: Path, stem: str | None = None,
                   hva_scale: str = "compressed") -> Path:
    """Write <out_dir>/<arch>/<stem>.svg and .html for `divergence` (its minimized trace in
    divergence.trace, run with job.old / job.new) and return the .svg path.  Files are
    written through fuzz.output (atomically, with the umask's mode); a failure is one
    OutputError line."""
    stem = stem or picture_stem(divergence)
    target = Path(out_dir) / job.arch
    with output.errors(target, None, "cannot create directory"):
        target.mkdir(parents=True, exist_ok=True)
    det = replay_details(divergence.trace, job.old, job.new, divergence.event_index)[-1]
    svg = svg_from_detail(det, divergence, job.arch, hva_scale=hva_scale)
    html = _page_for(svg, divergence.trace, divergence, job.arch)
    paths = {}
    for ext, text in (("svg", svg), ("html", html)):
        paths[ext] = target / f"{stem}.{ext}"
        output.write_text(paths[ext], text)
    return paths["svg"]

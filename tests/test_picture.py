"""Pictures of divergences: the cells of the SVG, and the HTML page in a real headless browser."""
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest

from fuzz.reports import picture, summary as report, timeline
from fuzz.engines.random_engine import Job, run_job
from fuzz.engines.generate import GenConfig
from fuzz.runner import Side, run_trace
from language.trace import InvalidateRangeEnd, InvalidateRangeStart
from oracles.compare import Divergence
from impls.registry import resolve
from oracles.triage import load_known
from util import HVA, P, fault, host, slot

SVG_NS = "{http://www.w3.org/2000/svg}"


def sides(arch, old, new):
    return Side(old, resolve(arch, old)), Side(new, resolve(arch, new))


def divergence(events, arch, old, new, cls, op=None):
    o, n = sides(arch, old, new)
    divs = run_trace(events, arch, o, n, load_known()).divergences
    d = next(d for d in divs if d.cls == cls and (op is None or d.op == op))
    return d, o, n


def cells(svg: str) -> dict[str, dict[int, str]]:
    """row label -> {first gfn of the cell: state}, from the data- attributes."""
    rows: dict[str, dict[int, str]] = {}
    for el in ET.fromstring(svg).iter(SVG_NS + "rect"):
        if "data-row" in el.attrib:
            rows.setdefault(el.attrib["data-row"], {})[int(el.attrib["data-gfn"], 16)] = el.attrib["data-state"]
    return rows


def arm64_unaligned_unmap():
    # v5.12 arm64 unmap of [HVA+0x800, HVA+P+0x800): the walk covers one page, the range touches two
    ev = [slot(0, 0, 0x100, 16, HVA), host(HVA, 16, 0x5000)] + fault(0, 0x100) + fault(0, 0x101)
    return ev + [InvalidateRangeStart(HVA + 0x800, HVA + P + 0x800)]


def mips_past_end():
    # MIPS hands its inclusive-end flush the exclusive end gfn: one gfn past the range
    ev = [slot(0, 2, 0x400, 16, HVA), host(HVA, 16, 0x5000)] + fault(0, 0x400) + fault(0, 0x401)
    return ev + [InvalidateRangeStart(HVA, HVA + P), InvalidateRangeEnd(HVA, HVA + P)]


def test_missed_last_page_is_one_red_cell_per_row():
    ev = arm64_unaligned_unmap()
    d, o, n = divergence(ev, "arm64", "v5.12", "v5.13", "missed-invalidation")
    rows = cells(picture.render_svg(ev, d, "arm64", o, n))
    assert rows["reference"][0x100] == rows["reference"][0x101] == "ref"
    assert rows["reference"][0x102] == "slot" and rows["reference"][0xff] == "none"
    for row in ("old v5.12 walker", "old v5.12 zapped"):
        assert rows[row][0x100] == "ok" and rows[row][0x101] == "missed"
        assert list(rows[row].values()).count("missed") == 1
    for row in ("new v5.13 walker", "new v5.13 zapped"):
        assert "missed" not in rows[row].values() and "extra" not in rows[row].values()
        assert rows[row][0x100] == rows[row][0x101] == "ok"


def test_gfn_past_end_is_one_orange_cell_and_flushes_are_drawn():
    ev = mips_past_end()
    d, o, n = divergence(ev, "mips", "v5.12", "v5.13", "gfn-set-mismatch", "invalidate_range_start")
    assert d.shape == "one-gfn-past-end"
    svg = picture.render_svg(ev, d, "mips", o, n)
    rows = cells(svg)
    for side in ("old v5.12", "new v5.13"):
        walker = rows[f"{side} walker"]
        assert walker[0x400] == "ok" and walker[0x401] == "extra"
        assert [g for g, s in walker.items() if s == "extra"] == [0x401]
        assert rows[f"{side} zapped"][0x401] == "extra"       # the mapped page after the range is zapped too
        assert set(rows[f"{side} flush"].values()) <= {"ok", "flush"} and "ok" in rows[f"{side} flush"].values()
    assert "kvm_flush_remote_tlbs" in svg or "by " in svg


def test_hva_aliasing_is_stacked_and_both_address_spaces_drawn():
    # x86 SMM: as0 and as1 slots backed by the same hvas; the range reaches both
    ev = [slot(0, 0, 0x100, 4, HVA), slot(1, 0, 0x900, 4, HVA), host(HVA, 4, 0x5000)]
    ev += fault(0, 0x101) + fault(1, 0x901)
    ev += [InvalidateRangeStart(HVA + P, HVA + 2 * P), InvalidateRangeEnd(HVA + P, HVA + 2 * P)]
    o, n = sides("x86-shadow", "v5.12", "v5.13")
    d = Divergence("warning", "old", ev[7].op, "drawn-for-the-test", 7, "any event can be drawn")
    svg = picture.render_svg(ev, d, "x86-shadow", o, n)
    root = ET.fromstring(svg)
    bars = {el.attrib["data-slot"]: float(el.attrib["y"]) for el in root.iter(SVG_NS + "rect")
            if "data-slot" in el.attrib}
    assert set(bars) == {"as0/slot0", "as1/slot0"} and bars["as0/slot0"] != bars["as1/slot0"]
    assert "hva aliased with as1/slot0" in svg
    rows = cells(svg)
    assert rows["reference"][0x101] == "ref" and rows["reference"][0x901] == "ref"
    assert rows["new v5.13 zapped"][0x101] == "ok" and rows["new v5.13 zapped"][0x901] == "ok"


def test_long_runs_are_collapsed_but_edges_stay_single_cells():
    ev = [slot(0, 0, 0x1000, 1024, HVA), host(HVA, 1024, 0x50000)] + fault(0, 0x13ff)
    ev += [InvalidateRangeStart(HVA, HVA + 1024 * P + 0x10)]
    o, n = sides("arm64", "v5.12", "v5.13")
    d = Divergence("warning", "old", ev[-1].op, "drawn-for-the-test", len(ev) - 1, "any event can be drawn")
    svg = picture.render_svg(ev, d, "arm64", o, n)
    root = ET.fromstring(svg)
    ref = [el.attrib for el in root.iter(SVG_NS + "rect") if el.attrib.get("data-row") == "reference"]
    assert len(ref) < 20                       # 1024 gfns do not make 1024 cells
    widths = {int(a["data-gfn"], 16): int(a["data-gfns"]) for a in ref}
    assert widths[0x1000] == 1 and widths[0x13ff] == 1 and max(widths.values()) > 100
    assert sum(widths.values()) == 0x1401 - 0xfff


def test_event_index_outside_the_trace_is_a_one_line_error():
    ev = arm64_unaligned_unmap()
    d, o, n = divergence(ev, "arm64", "v5.12", "v5.13", "missed-invalidation")
    d.event_index = 99
    with pytest.raises(ValueError, match=r"event_index 99 is outside the trace of 7 events"):
        picture.render_svg(ev, d, "arm64", o, n)


def test_write_pictures_writes_svg_and_html_beside_it(tmp_path):
    ev = arm64_unaligned_unmap()
    d, o, n = divergence(ev, "arm64", "v5.12", "v5.13", "missed-invalidation")
    d.trace = ev
    job = Job("arm64", o, n, 1.0, 0, tmp_path)
    path = picture.write_pictures(d, job, tmp_path, stem="abc")
    assert path == tmp_path / "arm64" / "abc.svg"
    html = (tmp_path / "arm64" / "abc.html").read_text()
    assert path.read_text() in html and d.signature in html
    assert sorted(p.name for p in (tmp_path / "arm64").iterdir()) == ["abc.html", "abc.svg"]


# ----- sizes a person reads on a laptop screen ------------------------------------------------
MIN_CELL = (30, 22)         # px, each gfn cell as drawn
MIN_FONT = 12               # px, every text
LAPTOP_W = 1400             # CSS px of the window the page must fit (beside margins and a scrollbar)


def check_legible(svg: str) -> list[dict]:
    """Every text at least MIN_FONT px and not rotated, every gfn cell at least MIN_CELL, the
    picture no wider than a laptop window; returns the cells' attributes."""
    root = ET.fromstring(svg)
    assert float(root.attrib["width"]) <= LAPTOP_W - 50
    texts = list(root.iter(SVG_NS + "text"))
    assert texts
    for t in texts:
        assert float(t.attrib["font-size"]) >= MIN_FONT, (t.text, t.attrib["font-size"])
        assert "rotate" not in t.attrib.get("transform", ""), t.text
    assert "rotate(" not in svg
    cells_ = [el.attrib for el in root.iter(SVG_NS + "rect") if "data-row" in el.attrib]
    assert cells_
    for c in cells_:
        assert float(c["width"]) >= MIN_CELL[0] and float(c["height"]) >= MIN_CELL[1], c
    return cells_


def test_every_picture_has_legible_text_and_cells_of_a_readable_size():
    ev = arm64_unaligned_unmap()
    d, o, n = divergence(ev, "arm64", "v5.12", "v5.13", "missed-invalidation")
    for scale in picture.HVA_SCALES:
        check_legible(picture.render_svg(ev, d, "arm64", o, n, hva_scale=scale))
    ev = mips_past_end()
    d, o, n = divergence(ev, "mips", "v5.12", "v5.13", "gfn-set-mismatch", "invalidate_range_start")
    check_legible(picture.render_svg(ev, d, "mips", o, n))
    # many breakpoints: the axis labels are staggered or thinned, never rotated or shrunk
    ev = [slot(0, i, 0x100 + 0x10 * i, 3, HVA + 3 * i * P) for i in range(12)]
    ev += [host(HVA, 36, 0x5000)] + fault(0, 0x101) + fault(0, 0x1b2)
    ev += [InvalidateRangeStart(HVA + P, HVA + 35 * P)]
    o, n = sides("arm64", "v5.12", "v5.13")
    d = Divergence("warning", "old", ev[-1].op, "drawn-for-the-test", len(ev) - 1, "any event can be drawn")
    svg = picture.render_svg(ev, d, "arm64", o, n)
    check_legible(svg)
    root = ET.fromstring(svg)
    texts = [(float(t.attrib["x"]), float(t.attrib["y"]), t.text, float(t.attrib["font-size"]))
             for t in root.iter(SVG_NS + "text")]
    # no two axis labels on one baseline overlap
    labels = [t for t in texts if t[2] and t[2].startswith("0x") and len(t[2]) > 8]
    for i, (x, y, s, size) in enumerate(labels):
        for x2, y2, s2, _ in labels[i + 1:]:
            if y == y2:
                assert abs(x - x2) >= picture._tw(s, size) - 1 or abs(x - x2) >= picture._tw(s2, size) - 1, (s, s2)
    assert any(t[2] == f"{HVA + P:#x}" for t in texts) and any(t[2] == f"{HVA + 35 * P:#x}" for t in texts)


def one_byte_range_picture(scale: str):
    # a 16-page slot and a 1-byte notifier range in its middle
    ev = [slot(0, 0, 0x100, 16, HVA), host(HVA, 16, 0x5000)] + fault(0, 0x107)
    ev += [InvalidateRangeStart(HVA + 7 * P + 0x800, HVA + 7 * P + 0x801)]
    o, n = sides("arm64", "v5.12", "v5.13")
    d = Divergence("warning", "old", ev[-1].op, "drawn-for-the-test", len(ev) - 1, "any event can be drawn")
    svg = picture.render_svg(ev, d, "arm64", o, n, hva_scale=scale)
    root = ET.fromstring(svg)
    rect = {k: el.attrib for el in root.iter(SVG_NS + "rect")
            for k in (el.attrib.get("data-range"), el.attrib.get("data-slot")) if k}
    return svg, root, float(rect["notifier"]["width"]), float(rect["as0/slot0"]["width"])


def test_linear_hva_scale_draws_a_one_byte_range_as_a_hairline_and_says_so():
    svg, root, range_w, slot_w = one_byte_range_picture("linear")
    assert range_w < 3 and slot_w > 100
    assert root.attrib["data-hva-scale"] == "linear" and "hva axis: linear, to scale" in svg
    texts = [t.text for t in root.iter(SVG_NS + "text")]
    assert "notifier range, 1 byte" in texts                       # the hairline is named
    assert f"{HVA + 7 * P + 0x800:#x}" in texts and f"{HVA + 7 * P + 0x801:#x}" in texts
    check_legible(svg)


def test_compressed_hva_scale_still_shows_a_one_byte_range_and_a_slot():
    svg, root, range_w, slot_w = one_byte_range_picture("compressed")
    assert range_w >= 3 and slot_w > 100
    assert root.attrib["data-hva-scale"] == "compressed" and "hva axis: compressed, NOT to scale" in svg
    check_legible(svg)
    # the default is the compressed axis, and an unknown scale is a one-line error
    ev = arm64_unaligned_unmap()
    d, o, n = divergence(ev, "arm64", "v5.12", "v5.13", "missed-invalidation")
    assert 'data-hva-scale="compressed"' in picture.render_svg(ev, d, "arm64", o, n)
    with pytest.raises(ValueError, match="hva_scale 'log': expected one of compressed, linear"):
        picture.render_svg(ev, d, "arm64", o, n, hva_scale="log")


def test_show_html_and_render_html_take_the_hva_scale():
    ev = arm64_unaligned_unmap()
    o, n = sides("arm64", "v5.12", "v5.13")
    res = run_trace(ev, "arm64", o, n, load_known(), keep_observations=True)
    page = timeline.show_html(ev, res, "arm64", o, n, hva_scale="linear")
    assert 'data-hva-scale="linear"' in page and 'data-hva-scale="compressed"' not in page
    assert 'data-hva-scale="compressed"' in timeline.show_html(ev, res, "arm64", o, n)
    d = res.divergences[0]
    assert 'data-hva-scale="linear"' in picture.render_html(ev, d, "arm64", o, n, hva_scale="linear")


# ----- the page in a real browser ------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(html: Path, png: Path, tmp: Path, size=(1400, 1000)) -> None:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'chromium-profile'}", f"--screenshot={png}",
           f"--window-size={size[0]},{size[1]}", html.as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=90, check=False)
    assert png.is_file(), "chromium wrote no screenshot"


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """8-bit RGB/RGBA PNG -> (width, height, rows of pixel bytes), standard library only."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, hdr = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            hdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = hdr
    assert depth == 8 and ctype in (2, 6) and interlace == 0, hdr
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return w, h, [bytes(r[i:i + 3]) for r in rows for i in range(0, stride, bpp)]


def rgb(colour: str) -> bytes:
    return bytes.fromhex(colour.lstrip("#"))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_run_finds_mips_off_by_one_and_its_picture_shows_the_extra_gfn(tmp_path):
    # a real run: MIPS v5.12 vs v5.13 finds the known inclusive-end off-by-one within a second
    o, n = sides("mips", "v5.12", "v5.13")
    job = Job("mips", o, n, 1.5, 1, tmp_path / "out", GenConfig(address_space_num=1), minimize_seconds=1.0)
    res = run_job(job, load_known())
    doc = report.build([res], 1, res.seconds)
    report.validate_report(doc)
    past_end = [d for d in doc["divergences"]
                if d["class"] == "gfn-set-mismatch" and d["shape"] == "one-gfn-past-end"]
    assert past_end and all(d["known"] for d in past_end)
    d = past_end[0]
    svg = Path(d["picture"]).read_text()
    extra = [(r, g) for r, row in cells(svg).items() for g, s in row.items() if s == "extra"]
    assert extra, "the gfn past the end is drawn as an extra cell"

    html = Path(d["picture"]).with_suffix(".html")
    png = tmp_path / "shot.png"
    screenshot(html, png, tmp_path, (LAPTOP_W, 1200))
    w, h, pixels = read_png(png)
    counts = colour_counts(pixels)
    background = max(counts, key=counts.get)
    assert background == b"\xff\xff\xff"
    assert w * h - counts[background] > 20000, "the page is all background"
    check_cells_on_screen(svg, counts, ("extra", "ok", "ref", "missed", "flush"))
    assert counts.get(rgb(picture.EXTRA), 0) >= MIN_CELL[0] * MIN_CELL[1] * len(extra) * 3 // 4


def colour_counts(pixels: list[bytes]) -> dict[bytes, int]:
    counts: dict[bytes, int] = {}
    for px in pixels:
        counts[px] = counts.get(px, 0) + 1
    return counts


def check_cells_on_screen(svg: str, counts: dict[bytes, int], states) -> None:
    """The SVG's text and cells are of a legible size (check_legible), and on the screen every
    cell of each state shows at least its drawn area in its colour: (width - 2) x (height - 2)
    pixels (less its border), and at least MIN_CELL less the border."""
    cells_ = check_legible(svg)
    for state in states:
        want = 0
        for c in cells_:
            if c["data-state"] == state:
                area = (float(c["width"]) - 2) * (float(c["height"]) - 2)
                assert area >= (MIN_CELL[0] - 2) * (MIN_CELL[1] - 2)
                want += area if c["data-gfns"] == "1" else area / 2      # "…" written over a run
        got = counts.get(rgb(picture.COLOURS[state]), 0)
        assert got >= want, f"{state}: {got} pixels of {picture.COLOURS[state]} on screen, cells need {want:.0f}"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_show_html_of_a_missed_page_shows_a_red_cell(tmp_path):
    ev = arm64_unaligned_unmap()
    o, n = sides("arm64", "v5.12", "v5.13")
    res = run_trace(ev, "arm64", o, n, load_known(), keep_observations=True)
    page = tmp_path / "show.html"
    page.write_text(timeline.show_html(ev, res, "arm64", o, n))
    png = tmp_path / "show.png"
    screenshot(page, png, tmp_path, (LAPTOP_W, 900))
    _, _, pixels = read_png(png)
    counts = colour_counts(pixels)
    # the first picture is on the first screen: its cells at full size, its text legible
    first = page.read_text().split("<svg", 1)[1].split("</svg>", 1)[0]
    check_cells_on_screen("<svg" + first + "</svg>", counts, ("missed", "ok", "ref"))
    # missed 0x101 in the old walker, zapped and flush rows: three red cells of at least MIN_CELL
    red = counts.get(rgb(picture.MISSED), 0)
    assert red >= 3 * (MIN_CELL[0] - 2) * (MIN_CELL[1] - 2)

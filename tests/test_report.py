"""Reports: reachability, the JSON report and its schema, the console summary, `show`."""
import copy
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fuzz import corpus

from fuzz.reports import summary as report, timeline as show_timeline
from fuzz.engines.random_engine import Job, JobResult, save_divergence
from fuzz.minimize import minimize
from fuzz.reachability import ALIGNED, UNALIGNED_ONLY, align_event, aligned_trace, reach_and_needs, reachability
from fuzz.runner import Side, check_well_formed, run_trace
from language.trace import (ChangePte, ClearFlushYoung, FaultBegin, FaultCommit, InvalidateRangeEnd,
                        InvalidateRangeStart, TestYoung)
from language.wellformed import allowances_needed
from impls.registry import resolve
from oracles.triage import load_known
from util import HVA, P, fault, host, slot

ROOT = Path(__file__).resolve().parent.parent
KNOWN = load_known()


def sides(arch, old="v5.12", new="v5.13"):
    return Side(old, resolve(arch, old)), Side(new, resolve(arch, new))


def arm64_base():
    return [slot(0, 0, 0x100, 16, HVA), host(HVA, 16, 0x5000)] + fault(0, 0x100) + fault(0, 0x101)


MISSED_ARM64 = "missed-invalidation|arm64|v5.12|v5.13|invalidate_range_start|old|only-first-gfn"


# ----- reachability ------------------------------------------------------------------------
def test_arm64_byte_size_unmap_is_unaligned_only():
    # v5.12 arm64 unmap from an unrounded hva: [HVA+0x800, HVA+P+0x800) touches gfns 0x100 and
    # 0x101 but the (gpa, bytes) walk covers 0x100 only.  Page aligned ([HVA, HVA+2P)) it
    # covers both: the kernel's mm can never make it happen.
    ev = arm64_base() + [InvalidateRangeStart(HVA + 0x800, HVA + P + 0x800),
                         InvalidateRangeEnd(HVA + 0x800, HVA + P + 0x800)]
    o, n = sides("arm64")
    assert MISSED_ARM64 in {d.signature for d in run_trace(ev, "arm64", o, n, KNOWN).divergences}
    assert reachability(ev, "arm64", o, n, KNOWN, MISSED_ARM64) == UNALIGNED_ONLY
    aligned = aligned_trace(ev)
    assert aligned[-2] == InvalidateRangeStart(HVA, HVA + 2 * P)
    assert aligned[-1] == InvalidateRangeEnd(HVA, HVA + 2 * P)
    check_well_formed(aligned)          # start/end still pair up


def test_lock_elision_is_reachable_with_aligned_ranges():
    # v5.12 takes mmu_lock for a test_young that hits no memslot, v5.13 does not; the hva is
    # unaligned in the trace but the divergence stays when it is rounded down
    ev = [slot(0, 0, 0x100, 4, HVA), TestYoung(HVA + 64 * P + 0x123)]
    o, n = sides("x86-shadow")
    sig = "lock-without-hit|x86-shadow|v5.12|v5.13|test_young|old|no-slot-hit"
    assert sig in {d.signature for d in run_trace(ev, "x86-shadow", o, n, KNOWN).divergences}
    assert reachability(ev, "x86-shadow", o, n, KNOWN, sig) == ALIGNED


def test_needs_names_the_kernel_rules_a_trace_breaks():
    # the lock elision above: aligned, and test_young on a page the host never mapped (the mm
    # ages present ptes only); once the page is mapped a running kernel can send it
    o, n = sides("x86-shadow")
    sig = "lock-without-hit|x86-shadow|v5.12|v5.13|test_young|old|no-slot-hit"
    ev = [slot(0, 0, 0x100, 4, HVA), TestYoung(HVA + 64 * P + 0x123)]
    assert reach_and_needs(ev, "x86-shadow", o, n, KNOWN, sig) == (ALIGNED, ["unmapped-aging"])
    ev = [host(HVA + 64 * P, 1, 0x9000)] + ev
    assert reach_and_needs(ev, "x86-shadow", o, n, KNOWN, sig) == (ALIGNED, [])
    # v5.13's stale pfn after a change_pte that no invalidation covers: never from the real mm
    ev = [slot(0, 0, 0x100, 4, HVA), host(HVA, 4, 0x5000), FaultBegin(1, 0, 0x100),
          ChangePte(HVA, 0x9000, False), FaultCommit(1)]
    sig = "stale-mapping|x86-shadow|v5.12|v5.13|fault_commit|new|fault-installed-stale-pfn-after-bare-change_pte"
    assert sig in {d.signature for d in run_trace(ev, "x86-shadow", o, n, KNOWN).divergences}
    assert reach_and_needs(ev, "x86-shadow", o, n, KNOWN, sig) == (ALIGNED, ["bare-change_pte"])
    assert reach_and_needs([slot(0, 0, 0x100, 4, HVA)] + [InvalidateRangeStart(HVA + 1, HVA + 2),
                                                         InvalidateRangeEnd(HVA + 1, HVA + 2)],
                           "x86-shadow", o, n, KNOWN, "no-such-signature") == (UNALIGNED_ONLY, ["unaligned"])


def test_the_minimizer_never_adds_a_kernel_rule_the_trace_did_not_break():
    # v5.12 takes mmu_lock for a change_pte outside every memslot.  A bare change_pte (two
    # events fewer) would show that too, but the found trace is kernel-legal, so the minimizer
    # keeps the invalidation around it
    o, n = sides("x86-shadow")
    out = HVA + 64 * P
    ev = [slot(0, 0, 0x100, 4, HVA), host(out, 1, 0x5000), InvalidateRangeStart(out, out + P),
          ChangePte(out, 0x9000, False), InvalidateRangeEnd(out, out + P)]
    assert allowances_needed(ev) == set()

    def shows(cand):
        return any(d.op == "change_pte" and d.cls == "lock-without-hit"
                   for d in run_trace(cand, "x86-shadow", o, n, KNOWN).divergences)
    bare = [ev[0], ev[1], ev[3]]
    assert shows(ev) and shows(bare) and allowances_needed(bare) == {"bare-change_pte"}
    small = minimize(ev, shows, max_attempts=500)
    assert allowances_needed(small) == set()
    # (a one-task trace may end inside the invalidation: a prefix of what the kernel does)
    assert [e.op for e in small] == ["host_map", "invalidate_range_start", "change_pte"]


def test_mips_inclusive_end_is_reachable_with_aligned_ranges():
    ev = [slot(0, 2, 0x400, 16, HVA), host(HVA, 16, 0x5000)] + fault(0, 0x400) + fault(0, 0x401)
    ev += [InvalidateRangeStart(HVA, HVA + P), InvalidateRangeEnd(HVA, HVA + P)]
    o, n = sides("mips")
    sig = "gfn-set-mismatch|mips|v5.12|v5.13|invalidate_range_start|both|one-gfn-past-end"
    assert sig in {d.signature for d in run_trace(ev, "mips", o, n, KNOWN).divergences}
    assert reachability(ev, "mips", o, n, KNOWN, sig) == ALIGNED


def test_align_event_rounds_each_notifier_kind():
    assert align_event(ClearFlushYoung(0x1001, 0x1001)) == ClearFlushYoung(0x1000, 0x2000)
    assert align_event(ClearFlushYoung(0x1000, 0x3000)) == ClearFlushYoung(0x1000, 0x3000)
    assert align_event(ChangePte(0x2fff, 7, True)) == ChangePte(0x2000, 7, True)
    assert align_event(TestYoung(0x2001)) == TestYoung(0x2000)
    s = slot(0, 0, 0x100, 1, HVA)
    assert align_event(s) is s


# ----- JSON report and its schema ----------------------------------------------------------
@pytest.fixture(scope="module")
def run_doc(tmp_path_factory):
    """A report built from two hand-made traces saved as a run would save them."""
    out = tmp_path_factory.mktemp("out")
    results = []
    cases = [("arm64", arm64_base() + [InvalidateRangeStart(HVA + 0x800, HVA + P + 0x800)]),
             ("x86-shadow", [slot(0, 0, 0x100, 4, HVA), TestYoung(HVA + 64 * P)])]
    for seed, (arch, ev) in enumerate(cases):
        o, n = sides(arch)
        job = Job(arch, o, n, 1.0, seed, out)
        res = JobResult(job, events=len(ev), traces=1, seconds=0.5)
        for d in run_trace(ev, arch, o, n, KNOWN).divergences:
            d.trace = ev[:d.event_index + 1]
            res.saved[d.signature] = save_divergence(d, job, KNOWN)
            res.divergences.append(d)
        results.append(res)
    return report.build(results, 7, 1.0), out


def test_report_has_reachability_and_pictures_and_validates(run_doc):
    doc, out = run_doc
    report.validate_report(json.loads(json.dumps(doc)))
    by_sig = {d["signature"]: d for d in doc["divergences"]}
    assert by_sig[MISSED_ARM64]["reachability"] == UNALIGNED_ONLY
    assert by_sig["lock-without-hit|x86-shadow|v5.12|v5.13|test_young|old|no-slot-hit"]["reachability"] == ALIGNED
    for d in doc["divergences"]:
        pic = Path(d["picture"])
        assert pic.is_file() and pic.suffix == ".svg" and pic.with_suffix(".html").is_file()
        assert pic.parent == Path(d["saved"]).parent and pic.name.startswith(Path(d["saved"]).stem)
        assert f'data-signature="{d["signature"]}"' in pic.read_text()
    assert doc["totals"]["unaligned_only"] == sum(d["reachability"] == UNALIGNED_ONLY for d in doc["divergences"])
    assert doc["totals"]["unaligned_only"] >= 1


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["divergences"][0].pop("reachability"), r"divergences\[0\]: field reachability: missing"),
    (lambda d: d["divergences"][0].update(reachability="maybe"), r"field reachability: 'maybe' is not one of"),
    (lambda d: d["divergences"][0].update(picture=3), r"divergences\[0\]: field picture: unexpected int"),
    (lambda d: d["divergences"][0].update(known="yes"), r"field known: unexpected str"),
    (lambda d: d["divergences"][0].update(shape="other"), r"field signature: .* does not match its fields"),
    (lambda d: d["divergences"][0].update(event_index=50), r"field event_index: 50 outside the trace"),
    (lambda d: d["divergences"][0]["trace"]["events"].append({"op": "nope"}),
     r"divergences\[0\]\.trace: event \d+: field op: unknown event 'nope'"),
    (lambda d: d["runs"][0].update(events=True), r"runs\[0\]: field events: unexpected bool"),
    (lambda d: d["totals"].update(divergences=0), r"totals: field divergences: 0 but \d+ listed"),
    (lambda d: d.update(extra=1), r"field extra: not in the report schema"),
    (lambda d: d.update(schema="memslot-fuzz-report/0"), r"field schema: expected"),
    (lambda d: d["divergences"].reverse(), r"not sorted new first"),
])
def test_a_report_off_the_schema_is_one_line_naming_the_field(run_doc, mutate, message):
    doc = copy.deepcopy(run_doc[0])
    if len(doc["divergences"]) < 2 or doc["divergences"][0]["class"] == doc["divergences"][-1]["class"]:
        pytest.fail("fixture needs divergences of two classes")
    mutate(doc)
    with pytest.raises(report.ReportError, match=message) as e:
        report.validate_report(doc)
    assert "\n" not in str(e.value)


def test_every_report_field_is_documented():
    doc = (ROOT / "docs" / "REPORT.md").read_text()
    section = doc.split("## JSON report", 1)[1]
    for name in list(report.DIV_FIELDS) + list(report.RUN_FIELDS) + list(report.TOTAL_FIELDS):
        assert f'"{name}"' in section or f"`{name}`" in section, f"{name} not in docs/REPORT.md"


# ----- console summary ---------------------------------------------------------------------
def test_summary_verbose_table_paths_and_totals(run_doc):
    doc, _ = run_doc
    buf = io.StringIO()
    report.print_summary(doc, buf, verbose=True)
    text = buf.getvalue()
    lines = text.splitlines()
    assert lines[0] == lines[-1] == report.verdict(doc)
    start = next(k for k, ln in enumerate(lines) if ln.startswith("#  "))
    head = lines[start].split()
    assert head[:8] == ["#", "class", "arch", "versions", "wrong", "status", "kernel", "events"]
    rows = {}
    body = [ln for ln in lines[start + 1:] if ln[:1].isdigit()]
    for d, line in zip(doc["divergences"], body):
        cols = line.split()
        assert cols[1:6] == [d["class"], d["arch"], f"{d['old']}..{d['new']}", d["wrong_side"],
                             "known" if d["known"] else "NEW"]
        rows[d["signature"]] = cols
        assert cols[7] == str(len(d["trace"]["events"]))
        assert d["shape"].split()[0] in line            # shapes are wrapped, never cut
    assert rows[MISSED_ARM64][6].startswith("no:") and "unaligned" in rows[MISSED_ARM64][6]
    lock = next(d for d in doc["divergences"] if d["signature"] == "lock-without-hit|x86-shadow|v5.12|v5.13|test_young|old|no-slot-hit")
    assert rows[lock["signature"]][6] == ("yes" if not lock["needs"] else "no:" + "+".join(lock["needs"]))
    for i, d in enumerate(doc["divergences"], 1):
        assert re.search(rf"^#{i}\s+trace {re.escape(d['saved'])}\s+picture {re.escape(d['picture'])}$",
                         text, re.M)
    t = doc["totals"]
    assert (f"total: {t['events']} events, {t['events_per_second']:.0f} events/s, {t['seconds']:.1f}s; "
            f"{t['divergences']} distinct divergences, {t['new_divergences']} new") in text


def test_summary_leads_with_the_verdict_and_collapses_known_ones_by_class(run_doc):
    doc, _ = run_doc
    assert doc["totals"]["new_divergences"] == 0
    buf = io.StringIO()
    report.print_summary(doc, buf)
    lines = buf.getvalue().splitlines()
    n = doc["totals"]["divergences"]
    assert lines[0] == lines[-1] == f"verdict: nothing new: all {n} distinct divergences are on the known list (exit 0)"
    # one line per (arch, versions, side, class), each naming every shape of its class
    keys = {(d["arch"], d["old"], d["new"], d["wrong_side"], d["class"]) for d in doc["divergences"]}
    starts = [ln for ln in lines if ln.startswith("    only ") or ln.startswith("    both ")]
    assert len(starts) == len(keys)
    text = "\n".join(lines)
    flat = " ".join(text.split())
    for d in doc["divergences"]:
        assert f"{d['op']} {d['shape']}" in flat
    assert "trace " not in text                          # no list of paths unless --verbose
    assert max(len(ln) for ln in lines if not ln.startswith(("total:", "x86", "arm64", "mips", "ppc", "e500"))) <= report.WIDTH


def test_summary_rows_follow_the_order_the_run_ran_its_pairs(run_doc):
    # the table and the per-class lines list pairs as the progress lines and per-arch totals
    # do, whatever order the divergences are stored in
    doc, _ = run_doc
    pairs = [f"{r['arch']} {r['old']}..{r['new']}" for r in doc["runs"]]
    assert len(set(pairs)) == 2
    for runs in (doc["runs"], doc["runs"][::-1]):
        for divs in (doc["divergences"], doc["divergences"][::-1]):
            buf = io.StringIO()
            report.print_summary(dict(doc, runs=runs, divergences=divs), buf)
            lines = buf.getvalue().splitlines()
            want = [f"{r['arch']} {r['old']}..{r['new']}" for r in runs]
            top = next(i for i, ln in enumerate(lines) if ln.split()[:2] == ["total", "NEW"])
            rows = lines[top + 1:lines.index("", top)]
            assert [" ".join(ln.split()[:2]) for ln in rows] == want
            heads = [ln.strip().rpartition(":")[0] for ln in lines if re.search(r": \d+ known divergences?$", ln)]
            assert heads == want


def test_a_new_divergence_comes_first_with_the_command_that_shows_it(run_doc):
    doc, _ = run_doc
    doc = copy.deepcopy(doc)
    d = doc["divergences"][-1]
    d["known"], d["explanation"] = False, ""
    doc["totals"]["new_divergences"] = 1
    buf = io.StringIO()
    report.print_summary(doc, buf)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("verdict: 1 NEW divergence not on the known list") and "(exit 1)" in lines[0]
    assert lines[2] == "NEW (not on the known list):"
    assert lines[3].startswith(f"  1. {d['class']} on {d['arch']} {d['old']}..{d['new']}, {d['wrong_side']} wrong")
    assert f"     see:   memslot-fuzz show {d['saved']}" in lines
    assert f"     picture: {d['picture']}" in lines


def test_summary_without_divergences_still_prints_totals():
    doc = {"schema": report.REPORT_SCHEMA, "seed": 1, "runs": [], "divergences": [],
           "totals": {"events": 0, "traces": 0, "seconds": 0.0, "events_per_second": 0.0,
                      "divergences": 0, "new_divergences": 0, "unaligned_only": 0, "interrupted": False}}
    report.validate_report(doc)
    buf = io.StringIO()
    report.print_summary(doc, buf)
    text = buf.getvalue()
    assert text.startswith("verdict: nothing new: no divergence at all (exit 0)\n")
    assert "total: 0 events" in text


# ----- show: timeline ----------------------------------------------------------------------
def timeline(ev, arch, color):
    o, n = sides(arch)
    res = run_trace(ev, arch, o, n, KNOWN, keep_observations=True)
    buf = io.StringIO()
    show_timeline.print_timeline(ev, res, arch, "v5.12", "v5.13", buf, color=color)
    return buf.getvalue(), res


def test_timeline_shows_reference_and_marks_first_divergence():
    ev = arm64_base() + [InvalidateRangeStart(HVA + 0x800, HVA + P + 0x800),
                         InvalidateRangeEnd(HVA + 0x800, HVA + P + 0x800)]
    text, res = timeline(ev, "arm64", color=False)
    assert "\x1b[" not in text
    lines = text.splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith(">>"))
    assert lines[first].startswith(">>  6 invalidate_range_start")
    block = lines[first + 1:first + 6]
    assert any(ln.split()[0] == "old:" and "kvm_unmap_hva_handler" in ln for ln in block)
    assert any(ln.split()[0] == "new:" for ln in block)
    ref = next(ln for ln in block if ln.split()[0] == "ref:")
    assert "gfns as0 gfn [0x100,0x102)" in ref and "must unmap as0:0x100,as0:0x101" in ref
    assert "only with unaligned ranges" in text
    assert sum(ln.startswith(">>") for ln in lines) == 1


def test_timeline_colours_only_when_asked():
    ev = [slot(0, 0, 0x100, 4, HVA), TestYoung(HVA + 64 * P)]
    text, _ = timeline(ev, "x86-shadow", color=True)
    first = next(ln for ln in text.splitlines() if ">>" in ln)
    assert first.startswith("\x1b[1m\x1b[31m>>  1 test_young")
    plain, _ = timeline(ev, "x86-shadow", color=None)     # StringIO is not a tty
    assert "\x1b[" not in plain


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack, self.count = [], {}

    def handle_starttag(self, tag, attrs):
        self.count[tag] = self.count.get(tag, 0) + 1


def test_show_and_summary_on_every_corpus_trace(tmp_path):
    paths = corpus.entries_under([ROOT / "corpus"])
    assert len(paths) > 50
    results: dict[tuple, JobResult] = {}
    for path in paths:
        e = corpus.load(path)
        o, n = sides(e.arch, e.old, e.new)
        res = run_trace(e.events, e.arch, o, n, KNOWN, keep_observations=True)
        buf = io.StringIO()
        show_timeline.print_timeline(e.events, res, e.arch, o, n, buf)
        text = buf.getvalue()
        assert text.count("\n") >= len(e.events) + 1
        if res.divergences:
            assert sum(ln.startswith(">>") for ln in text.splitlines()) == 1, path
        page = show_timeline.show_html(e.events, res, e.arch, o, n)
        tags = _Tags()
        tags.feed(page)
        assert tags.count.get("svg", 0) == len({d.event_index for d in res.divergences}), path
        assert tags.count.get("tr", 0) == len(e.events) + 1
        # one job per (arch, old, new), every divergence of every entry, for the summary
        key = (e.arch, e.old, e.new)
        jr = results.setdefault(key, JobResult(Job(e.arch, o, n, 1.0, 0, tmp_path), traces=0))
        jr.traces += 1
        jr.events += len(e.events)
        for d in res.divergences:
            if d.signature not in jr.saved:
                d.trace = e.events
                jr.saved[d.signature] = path
                jr.divergences.append(d)
    doc = report.build(list(results.values()), 0, 1.0, pictures=False)
    report.validate_report(doc)
    buf = io.StringIO()
    report.print_summary(doc, buf)
    text = buf.getvalue()
    assert f"{doc['totals']['divergences']} distinct divergences" in text
    assert len(doc["divergences"]) > 50
    assert {d["reachability"] for d in doc["divergences"]} == {ALIGNED, UNALIGNED_ONLY}


def test_a_stale_pfn_under_a_still_open_invalidation_is_named_so_and_needs_the_huge_page_change():
    # x86 v5.13: a fault at gfn 0 of a 2 MiB host page; meanwhile the mm changes page 1 under an
    # open invalidation of that page only.  The fault's retry check asks about hva 0 alone and
    # v5.13's change_pte no longer bumps the sequence: the 2M leaf maps page 1's old pfn.  v5.12
    # retries (its change_pte bumps the sequence).  The kernel splits the pmd before that change.
    o, n = sides("x86-shadow")
    frame = [host(HVA, 512, 0x10000, 512 * P), slot(0, 0, 0, 512, HVA)]
    inv = (HVA + P, HVA + 3 * P)
    ev = frame + [InvalidateRangeStart(*inv), FaultBegin(0, 0, 0, False), ChangePte(HVA + P, 0x10400, True),
                  FaultCommit(0), InvalidateRangeEnd(*inv)]
    res = run_trace(ev, "x86-shadow", o, n, KNOWN)
    (d,) = [d for d in res.divergences if d.cls == "stale-mapping"]
    assert (d.shape, d.wrong_side, d.event_index) == ("fault-installed-stale-pfn-under-open-invalidation", "new", 5)
    assert d.known and "gfn 0x1 maps pfn 0x10001" in d.detail
    assert reach_and_needs(ev, "x86-shadow", o, n, KNOWN, d.signature) == (ALIGNED, ["change_pte-in-huge-page"])
    # once that invalidation has ended (sequence bumped) the fault retries: nothing to name
    closed = ev[:5] + [InvalidateRangeEnd(*inv), FaultCommit(0)]
    assert not [d for d in run_trace(closed, "x86-shadow", o, n, KNOWN).divergences if d.cls == "stale-mapping"]

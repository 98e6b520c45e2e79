"""The command line: list, run, candidates, replay, show, and one-line errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.cli import main

ROOT = Path(__file__).resolve().parent.parent

OFF_BY_ONE = '''
from impls.x86_shadow import X86ShadowV5_13

class OffByOne(X86ShadowV5_13):
    """A patch whose gfn handler also zaps the gfn after the range."""
    def kvm_unmap_gfn_range(self, range):
        range.end += 1
        return super().kvm_unmap_gfn_range(range)
'''


def run_cli(*args):
    return main([str(a) for a in args])


def test_list_shows_architectures_and_versions(capsys):
    assert run_cli("list") == 0
    out = capsys.readouterr().out
    for name in ("x86-shadow", "v5.12", "v5.13-rc1", "v5.13"):
        assert name in out


def test_run_x86_shadow_reports_only_known_divergences(tmp_path, capsys):
    report = tmp_path / "r.json"
    rc = run_cli("run", "--arch", "x86-shadow", "--old", "v5.12", "--new", "v5.13", "--max-time", 4,
                 "--seed", 3, "--report", report, "--out", tmp_path / "out", "--quiet")
    doc = json.loads(report.read_text())
    assert rc == 0 and doc["totals"]["new_divergences"] == 0
    assert doc["totals"]["events"] > 0 and doc["totals"]["seconds"] > 0
    assert doc["divergences"], "v5.12 vs v5.13 always differ in mmu_lock elision"
    for d in doc["divergences"]:
        assert set(d) >= {"class", "arch", "old", "new", "wrong_side", "known", "signature",
                          "event_index", "detail", "trace"}
        assert Path(d["saved"]).is_file()          # on disk before it was reported
        assert d["event_index"] < len(d["trace"]["events"])
    assert "distinct divergences" in capsys.readouterr().out


def test_candidate_with_off_by_one_is_caught_with_a_small_trace(tmp_path):
    cand = tmp_path / "my_patch.py"
    cand.write_text(OFF_BY_ONE)
    report = tmp_path / "r.json"
    rc = run_cli("run", "--arch", "x86-shadow", "--old", "v5.13", "--new", f"{cand}:OffByOne",
                 "--max-time", 8, "--seed", 1, "--report", report, "--out", tmp_path / "out", "--quiet")
    assert rc == 1
    new = [d for d in json.loads(report.read_text())["divergences"] if not d["known"]]
    over = [d for d in new if d["class"] == "over-invalidation"]
    assert over and over[0]["wrong_side"] == "new"
    assert min(len(d["trace"]["events"]) for d in over) <= 6


@pytest.mark.parametrize("args, message", [
    (["run", "--arch", "sparc"], "unknown arch 'sparc'"),
    (["run", "--arch", "x86-shadow", "--old", "v4.0"], "no model of x86-shadow at 'v4.0'"),
    (["run", "--arch", "x86-shadow", "--new", "nowhere.py:X"], "no such file nowhere.py"),
    (["run", "--arch", "x86-shadow", "--new", "os:path"], "is not a subclass of impls.kvm.Kvm"),
    (["run", "--arch", "x86-shadow", "--max-time", "0"], "--max-time must be positive"),
])
def test_bad_input_is_one_line_exit_2(capsys, args, message):
    assert run_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_broken_candidate_is_reported_not_crashed(tmp_path, capsys):
    cand = tmp_path / "broken.py"
    cand.write_text("from impls.x86_shadow import X86ShadowV5_13\nclass B(X86ShadowV5_13)\n    pass\n")
    assert run_cli("run", "--arch", "x86-shadow", "--new", f"{cand}:B", "--max-time", 1) == 2
    err = capsys.readouterr().err.strip()
    assert "failed to import: SyntaxError" in err and "\n" not in err


def test_replay_of_a_corrupt_entry_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "memslot-fuzz-trace/1", "arch": "x86-shadow", "old": "v5.12", '
                   '"new": "v5.13", "expect": [], "events": [{"op": "fault_commit"}]}')
    assert run_cli("replay", bad) == 2
    err = capsys.readouterr().err.strip()
    assert str(bad) in err and "event 0 (fault_commit): field fault: missing" in err


def test_replay_detects_an_entry_that_no_longer_shows_its_divergence(tmp_path, capsys):
    entry = tmp_path / "e.json"
    entry.write_text(json.dumps({
        "schema": "memslot-fuzz-trace/1", "arch": "x86-shadow", "old": "v5.13", "new": "v5.13",
        "expect": ["missed-invalidation|x86-shadow|v5.13|v5.13|invalidate_range_start|new|only-first-gfn"],
        "events": [{"op": "invalidate_range_start", "start": 0, "end": 4096},
                   {"op": "invalidate_range_end", "start": 0, "end": 4096}]}))
    assert run_cli("replay", entry) == 1
    assert "no longer shows missed-invalidation" in capsys.readouterr().out


def test_show_prints_a_timeline_with_the_divergence(tmp_path, capsys):
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"schema": "memslot-fuzz-trace/1", "events": [
        {"op": "set_memory_region", "as_id": 0, "slot": 0, "flags": 0, "guest_phys_addr": "0x100000",
         "memory_size": "0x4000", "userspace_addr": "0x7f0000000000"},
        {"op": "test_young", "hva": "0x7f0000100000"}]}))
    assert run_cli("show", trace) == 0
    out = capsys.readouterr().out
    assert ">>  1 test_young" in out and "lock-without-hit [old wrong, known]" in out


def test_console_script_runs_without_traceback(tmp_path):
    exe = Path(sys.executable).parent / "memslot-fuzz"
    p = subprocess.run([str(exe), "run", "--arch", "nope"], capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ})
    assert p.returncode == 2 and p.stderr.startswith("memslot-fuzz: unknown arch") and "Traceback" not in p.stderr


def test_show_html_writes_a_page_with_a_picture(tmp_path):
    entry = next(p for p in sorted((ROOT / "corpus").rglob("*.json")) if "seeds" not in p.parts)
    out = tmp_path / "page.html"
    assert run_cli("show", entry, "--html", out) in (0, 1)
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html") or page.lstrip().lower().startswith("<!doctype html")
    assert "<svg" in page


def test_aligned_only_run_sends_page_aligned_ranges_only(tmp_path):
    report = tmp_path / "r.json"
    rc = run_cli("run", "--arch", "arm64", "--max-time", 3, "--seed", 2, "--aligned-only",
                 "--report", report, "--out", tmp_path / "out", "--quiet")
    doc = json.loads(report.read_text())
    assert rc == 0 and doc["divergences"]
    assert all(d["reachability"] == "aligned" for d in doc["divergences"])


@pytest.mark.parametrize("engine", ["hypothesis", "atheris"])
def test_other_engines_catch_the_off_by_one(tmp_path, engine):
    cand = tmp_path / "my_patch.py"
    cand.write_text(OFF_BY_ONE)
    report = tmp_path / "r.json"
    rc = run_cli("run", "--arch", "x86-shadow", "--old", "v5.13", "--new", f"{cand}:OffByOne",
                 "--engine", engine, "--max-time", 12, "--seed", 1, "--report", report,
                 "--out", tmp_path / "out", "--quiet", "--minimize-seconds", 3)
    doc = json.loads(report.read_text())
    new = [d for d in doc["divergences"] if not d["known"]]
    assert rc == 1 and new and all(d["wrong_side"] == "new" for d in new)
    assert doc["runs"][0]["engine"] == engine
    assert min(len(d["trace"]["events"]) for d in new) <= 6


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["ci", "--mode", "nightly"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "invalid choice: 'nightly'" in err


def test_exhaustive_engine_finds_the_rc1_book3s_hv_bug_with_certainty(tmp_path, capsys):
    report = tmp_path / "r.json"
    rc = run_cli("run", "--engine", "exhaustive", "--arch", "ppc-hv-hash", "--old", "v5.13-rc1",
                 "--new", "v5.13", "--slots", 1, "--pages", 4, "--max-time", 60,
                 "--report", report, "--out", tmp_path / "out", "--quiet")
    doc = json.loads(report.read_text())
    sigs = {d["signature"] for d in doc["divergences"]}
    assert rc == 0     # known: the fix commits are cited in the known list
    assert "missed-invalidation|ppc-hv-hash|v5.13-rc1|v5.13|invalidate_range_start|old|only-first-gfn" in sigs
    assert "complete" in capsys.readouterr().err


def test_replay_update_rewrites_known_expectations_and_refuses_untriaged(tmp_path, capsys):
    stale = {"schema": "memslot-fuzz-trace/1", "arch": "x86-shadow", "old": "v5.12", "new": "v5.13",
             "expect": [], "events": [{"op": "test_young", "hva": "0x7f0000100000"}]}
    entry = tmp_path / "x86-shadow" / "old-name.json"
    entry.parent.mkdir()
    entry.write_text(json.dumps(stale))
    assert run_cli("replay", "--update", tmp_path) == 0
    files = list((tmp_path / "x86-shadow").glob("*.json"))
    assert len(files) == 1 and files[0].name != "old-name.json"
    assert json.loads(files[0].read_text())["expect"] == [
        "lock-without-hit|x86-shadow|v5.12|v5.13|test_young|old|no-slot-hit"]
    cand = tmp_path / "my_patch.py"
    cand.write_text(OFF_BY_ONE)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**stale, "old": "v5.13", "new": f"{cand}:OffByOne", "events": [
        {"op": "host_map", "hva": "0x7f0000000000", "size": "0x10000", "pfn": "0x1000", "page_size": "0x1000", "writable": True},
        {"op": "set_memory_region", "as_id": 0, "slot": 0, "flags": 0, "guest_phys_addr": "0x100000",
         "memory_size": "0x4000", "userspace_addr": "0x7f0000000000"},
        {"op": "invalidate_range_start", "start": "0x7f0000001000", "end": "0x7f0000002000"}]}))
    capsys.readouterr()
    assert run_cli("replay", "--update", bad) == 1
    assert "not updated" in capsys.readouterr().out and bad.exists()

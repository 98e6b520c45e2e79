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


def test_atheris_refuses_a_candidate_it_cannot_contain(tmp_path, capsys):
    cand = tmp_path / "my_patch.py"
    cand.write_text(OFF_BY_ONE)
    rc = main(["run", "--arch", "x86-shadow", "--old", "v5.13", "--new", f"{cand}:OffByOne",
               "--engine", "atheris", "--max-time", "5", "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "atheris cannot run a candidate" in err


@pytest.mark.parametrize("argv", [
    ["run", "--arch", "mips", "--engine", "atheris", "--max-time", "5", "--quiet"],
    ["ci", "--mode", "code-change", "--arch", "mips", "--seconds", "5", "--quiet"],
])
def test_the_atheris_engine_is_an_optional_extra_named_in_one_line(argv, tmp_path, capsys, monkeypatch):
    # installed without the extra (e.g. on macOS or arm64, where atheris has no wheel)
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "atheris" else real(name, *a))
    monkeypatch.chdir(tmp_path)
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "pip install 'memslot-fuzz[atheris]'" in err
    assert not (tmp_path / "memslot-fuzz-out").exists()


@pytest.mark.parametrize("engine", ["hypothesis"])
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


# ----- exact arguments --------------------------------------------------------------------------
def usage_error(capsys, *args) -> str:
    """args are refused by the parser: exit 2 and one line, no traceback."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("option, value", [
    ("--max-time", "nan"), ("--max-time", "inf"), ("--max-time", "-inf"), ("--max-time", "0"),
    ("--max-time", "-1"), ("--max-time", "soon"), ("--max-events", "0"), ("--max-events", "2"),
    ("--minimize-seconds", "0"), ("--minimize-seconds", "nan"), ("--slots", "0"), ("--slots", "9"),
    ("--pages", "0"), ("--address-spaces", "3"), ("--max-span", "0"), ("--jobs", "0"),
    ("--jobs", "65"), ("--seed", "1.5"), ("--seed", "9" * 5000),
])
def test_run_refuses_numbers_it_cannot_honour(capsys, option, value):
    err = usage_error(capsys, "run", "--arch", "arm64", option, value)
    assert err.startswith(f"memslot-fuzz run: argument {option}: ") and len(err) < 200


@pytest.mark.parametrize("option, value", [("--seconds", "nan"), ("--seconds", "inf"), ("--seconds", "0"),
                                           ("--jobs", "0")])
def test_ci_refuses_numbers_it_cannot_honour(capsys, option, value):
    err = usage_error(capsys, "ci", "--mode", "batch", option, value)
    assert err.startswith(f"memslot-fuzz ci: argument {option}: ")


def test_max_time_nan_message_says_what_is_expected(capsys):
    err = usage_error(capsys, "run", "--max-time", "nan")
    assert "must be a finite number greater than 0, got 'nan'" in err


def test_the_smallest_accepted_values_run(tmp_path):
    report = tmp_path / "r.json"
    rc = run_cli("run", "--arch", "arm64", "--max-time", "0.5", "--max-events", 3, "--minimize-seconds", "0.5",
                 "--seed", -7, "--report", report, "--out", tmp_path / "out", "--quiet")
    doc = json.loads(report.read_text())
    assert rc in (0, 1) and doc["totals"]["events"] > 0 and doc["seed"] == -7


def test_version(capsys):
    from importlib.metadata import version
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"memslot-fuzz {version('memslot-fuzz')}"


@pytest.mark.parametrize("command", [[], ["list"], ["run"], ["replay"], ["ci"], ["show"]])
def test_every_help_states_the_exit_codes_and_the_output_policy(capsys, command):
    with pytest.raises(SystemExit) as e:
        main(command + ["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0
    for text in ("exit codes: 0 nothing outside the known list", "1 a new divergence",
                 "2 usage, input or output error", "130 interrupted by SIGINT", "143 by SIGTERM",
                 "a device or FIFO is written through, never replaced; a symbolic link is refused"):
        assert text in out, text


# ----- input loaders ----------------------------------------------------------------------------
def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("content, message", [
    (b'{"schema": "memslot-fuzz-trace/1", "events": [], "note": "\xff\xfe"}', "not UTF-8: byte 0xff at offset"),
    (b"\xef\xbb\xbf\x80", "not UTF-8: byte 0x80 at offset 3"),
    (('{"schema": "memslot-fuzz-trace/1", "events": ' + nested(100_000) + "}").encode(), "nested too deeply"),
    (('{"schema": "memslot-fuzz-trace/1", "events": [{"op": "test_young", "hva": 1' + "0" * 5000 + "}]}").encode(),
     "a number with too many digits"),
    (b"[1, 2]", "a trace is a JSON object"),
    (b'"events"', "a trace is a JSON object"),
    (b'{"schema": "memslot-fuzz-trace/1", "events": [{"op": ["test_young"]}]}', "event 0: field op: unknown event"),
    (b'{"schema": "memslot-fuzz-trace/1", "events": [{"op": "test_young", "hva": 1e400}]}',
     "event 0 (test_young): field hva: expected an integer"),
])
def test_show_refuses_a_bad_trace_with_one_line(tmp_path, capsys, content, message):
    trace = tmp_path / "t.json"
    trace.write_bytes(content)
    assert run_cli("show", trace) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"memslot-fuzz: {trace}: ") and message in err
    assert "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("content, message", [
    (b"\xff", "not UTF-8"),
    (nested(50_000).encode(), "nested too deeply"),
    (b"[]", "a corpus entry is a JSON object"),
    (b'{"arch": "x86-shadow", "old": "v5.12", "new": "v5.13", "expect": [], "n": ' + b"7" * 4400 + b"}",
     "a number with too many digits"),
])
def test_replay_refuses_a_bad_entry_with_one_line(tmp_path, capsys, content, message):
    entry = tmp_path / "e.json"
    entry.write_bytes(content)
    assert run_cli("replay", entry) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"memslot-fuzz: {entry}: ") and message in err and "\n" not in err


def test_loads_names_its_source():
    from language.trace import TraceError, loads
    with pytest.raises(TraceError, match=r"^<stdin>: not a trace: JSON nested too deeply$"):
        loads(nested(100_000), "<stdin>")


def test_show_html_draws_the_hva_axis_to_scale_on_request(tmp_path):
    entry = sorted((Path(__file__).resolve().parent.parent / "corpus" / "mips").glob("*.json"))[0]
    for scale in ("compressed", "linear"):
        out = tmp_path / f"{scale}.html"
        main(["show", str(entry), "--html", str(out), "--hva-scale", scale])
        assert f'data-hva-scale="{scale}"' in out.read_text()


def test_a_reader_that_stops_reading_does_not_change_the_exit_code(tmp_path):
    # `memslot-fuzz run ... | head -1`: the summary's writes meet a closed pipe; the run has saved and reported everything and must exit with its own code,
    # without a traceback (a BrokenPipeError used to end it with exit 1, "new finding")
    import subprocess
    exe = Path(sys.executable).with_name("memslot-fuzz")
    proc = subprocess.Popen([str(exe), "run", "--arch", "mips", "--max-traces", "200", "--max-time", "60",
                             "--seed", "1", "--out", str(tmp_path / "out"), "--report", str(tmp_path / "r.json")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.close()                 # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 0, err[-2000:]
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert json.loads((tmp_path / "r.json").read_text())["totals"]["new_divergences"] == 0

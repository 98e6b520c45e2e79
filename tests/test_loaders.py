"""Robust loaders: every input under tests/data/loader_crashes/ (what fuzz/engines/loader_target.py
found, and what the audit of the loaders found) and tests/data/loader_seeds/ goes through the
trace, corpus-entry, known-list and report loaders, which may only raise their one-line input
errors (TraceError, KnownListError, ReportError)."""
from pathlib import Path

import pytest

from fuzz.engines.loader_target import check_loaders
from oracles.triage import KnownListError, load_known, loads_known

DATA = Path(__file__).resolve().parent / "data"
CRASHES = sorted(p for p in (DATA / "loader_crashes").iterdir() if p.is_file())
SEEDS = sorted(p for p in (DATA / "loader_seeds").iterdir() if p.is_file())


def test_there_are_saved_findings():
    assert len(CRASHES) >= 5


@pytest.mark.parametrize("path", CRASHES + SEEDS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_loaders_raise_only_their_one_line_input_errors(path, tmp_path):
    errors = check_loaders(path.read_bytes(), tmp_path)
    if path in CRASHES:
        assert errors, "a finding is not a valid trace, entry, known list and report all at once"
    for msg in errors:
        assert "Traceback" not in msg and "\n" not in msg


def test_the_seeds_load_as_what_they_are(tmp_path):
    from fuzz import corpus
    from fuzz.reports import summary as report
    from language import trace
    import json
    trace.load(DATA / "loader_seeds" / "plain-trace.json")
    corpus.load(DATA / "loader_seeds" / "corpus-entry.json")
    report.validate_report(json.loads((DATA / "loader_seeds" / "report.json").read_text()))
    assert loads_known((DATA / "loader_seeds" / "known-mips.toml").read_text(), "mips.toml")


def test_loads_known_reads_text_and_names_its_source():
    text = ('[[known]]\nclass = "wrong-young"\nop = "test_young"\n'
            'explanation = "why"\nsource = "where"\n')
    [entry] = loads_known(text, "arm64.toml")
    assert entry.arch == "arm64" and dict(entry.match)["op"] == frozenset({"test_young"})
    with pytest.raises(KnownListError, match=r"^arm64\.toml: entry 0: field 'source' is required"):
        loads_known(text.replace('source = "where"', "source = 5"), "arm64.toml")


@pytest.mark.parametrize("text, message", [
    ("known = 3", "field 'known' must be an array of tables"),
    ("known = [1]", "entry 0: expected a table, got int"),
    ('[[known]]\nclass = "warning"\nexplanation = 1\nsource = "s"', "field 'explanation' is required"),
    ('[[known]]\nclass = {a = 1}\nexplanation = "e"\nsource = "s"', "field 'class' must be a string"),
    ('[[known]]\nclass = ["warning", 2]\nexplanation = "e"\nsource = "s"', "field 'class' must be a string"),
    ('[[known]]\nclass = "nope"\nexplanation = "e"\nsource = "s"', "class 'nope' is not one of"),
    ("a = " + "[" * 5000 + "]" * 5000, "not valid TOML"),
])
def test_bad_known_lists_are_one_line_errors(text, message):
    with pytest.raises(KnownListError) as e:
        loads_known(text, "x.toml")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_known_list_that_is_not_utf8_is_a_one_line_error(tmp_path):
    (tmp_path / "x86-shadow.toml").write_bytes(b"# \xff\n")
    with pytest.raises(KnownListError, match=r"x86-shadow\.toml: not UTF-8 \(byte 2\)$"):
        load_known(tmp_path)

"""The corpus: every entry replays to exactly what it records; saving is atomic and
content-addressed, so the same divergence found twice leaves one file."""
from pathlib import Path

import pytest

from fuzz import corpus
from fuzz.runner import Side, check_well_formed, run_trace
from language.trace import InvalidateRangeEnd, InvalidateRangeStart
from impls import registry
from oracles.triage import load_known

CORPUS = Path(__file__).resolve().parent.parent / "corpus"
ENTRIES = corpus.entries_under([CORPUS])
KNOWN = load_known()


def test_corpus_is_not_empty():
    assert len(ENTRIES) >= 10


@pytest.mark.parametrize("path", ENTRIES, ids=[str(p.relative_to(CORPUS)) for p in ENTRIES])
def test_corpus_entry_replays(path):
    entry = corpus.load(path)
    check_well_formed(entry.events, str(path))
    res = run_trace(entry.events, entry.arch, Side(entry.old, registry.resolve(entry.arch, entry.old)),
                    Side(entry.new, registry.resolve(entry.arch, entry.new)), KNOWN)
    assert sorted(d.signature for d in res.divergences) == sorted(entry.expect)
    assert all(d.known for d in res.divergences), "a corpus entry shows an untriaged divergence"


def test_same_entry_saved_twice_is_one_file(tmp_path):
    ev = [InvalidateRangeStart(0, 4096), InvalidateRangeEnd(0, 4096)]
    a = corpus.save(corpus.CorpusEntry("x86-shadow", "v5.12", "v5.13", [], ev, note="first"), tmp_path)
    b = corpus.save(corpus.CorpusEntry("x86-shadow", "v5.12", "v5.13", [], ev, note="second"), tmp_path)
    assert a == b and [p.name for p in (tmp_path / "x86-shadow").iterdir()] == [a.name]
    assert corpus.load(a).events == ev

"""The corpus: every entry replays to exactly what it records; saving is atomic and
content-addressed, so the same divergence found twice leaves one file."""
from pathlib import Path

import pytest

from fuzz import corpus, rootcause
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
    old, new = (Side(entry.old, registry.resolve(entry.arch, entry.old)),
                Side(entry.new, registry.resolve(entry.arch, entry.new)))
    divs = run_trace(entry.events, entry.arch, old, new, KNOWN).divergences
    assert sorted(d.signature for d in divs) == sorted(entry.expect)
    # as `replay` judges it: the known list, and what follows from known divergences (fuzz/rootcause.py)
    divs = rootcause.explain_untriaged(divs, entry.events, entry.arch, old, new, KNOWN)
    assert all(d.known for d in divs), "a corpus entry shows an untriaged divergence"


def test_same_entry_saved_twice_is_one_file(tmp_path):
    ev = [InvalidateRangeStart(0, 4096), InvalidateRangeEnd(0, 4096)]
    a = corpus.save(corpus.CorpusEntry("x86-shadow", "v5.12", "v5.13", [], ev, note="first"), tmp_path)
    b = corpus.save(corpus.CorpusEntry("x86-shadow", "v5.12", "v5.13", [], ev, note="second"), tmp_path)
    assert a == b and [p.name for p in (tmp_path / "x86-shadow").iterdir()] == [a.name]
    assert corpus.load(a).events == ev

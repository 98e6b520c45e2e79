"""Corpus entries: a minimized trace plus what it must show when replayed.

    {"schema": "memslot-fuzz-trace/1", "arch": "x86-shadow", "old": "v5.12", "new": "v5.13",
     "expect": ["class|arch|old|new|op|wrong_side|shape", ...],   # [] = must show nothing
     "note": "why this entry exists",
     "events": [...]}

A divergence found by a run is saved under a name derived from its signature alone,
<arch>/<sha256(signature)[:16]>.json (`save_divergence_entry`), published with an exclusive
create (fuzz/publish.py: written to a temporary name, then hard-linked into place): of all
the workers and runs that find a signature, whoever saves first leaves the one file for it,
whatever its minimized trace, and nobody sees a partial file.  Entries saved otherwise (the
checked-in corpus/, `replay --update`) are named by a hash of what they show (`save`);
existing names stay valid either way, since loading never looks at the name.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from fuzz.publish import publish_new
from language.trace import SCHEMA, Event, TraceError, event_to_json, read_json, trace_from_json


@dataclass
class CorpusEntry:
    arch: str
    old: str
    new: str
    expect: list[str]
    events: list[Event]
    note: str = ""
    path: Path | None = None

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "arch": self.arch, "old": self.old, "new": self.new,
                "expect": sorted(self.expect), "note": self.note,
                "events": [event_to_json(e) for e in self.events]}

    def dumps(self) -> str:
        d = self.to_json()
        events = ",\n    ".join(json.dumps(e) for e in d.pop("events"))
        head = json.dumps(d, indent=2)[:-2]
        return head + ',\n  "events": [\n    ' + events + "\n  ]\n}\n"

    def content_hash(self) -> str:
        """Hash of what the entry shows; an entry that must show nothing is named by its events."""
        d = self.to_json()
        d.pop("note")
        if d["expect"]:
            d.pop("events")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def save(entry: CorpusEntry, directory: Path, by_arch: bool = True) -> Path:
    """Write the entry atomically as directory/<arch>/<hash>.json (directory/<hash>.json when
    by_arch is false), named by what it shows; an entry already there under that name is
    left alone.  Returns its path."""
    target_dir = Path(directory) / entry.arch if by_arch else Path(directory)
    path = target_dir / f"{entry.content_hash()}.json"
    publish_new(path, entry.dumps())
    return path


def signature_note(source: str, signature: str) -> str:
    """The note of an entry an engine saves for one signature: "<source>: <signature>"
    ("found by memslot-fuzz run (seed 7): SIG").  `source` holds no ": ", so noted_signature
    reads the signature back whole even when its shape holds one."""
    if ": " in source:
        raise ValueError(f"note source {source!r} holds ': '")
    return f"{source}: {signature}"


def noted_signature(note: str) -> str:
    """The signature of a note signature_note wrote: everything after its first ": " (a
    shape may hold one of its own: "BUG() in __handle_changed_spte: ...")."""
    return note.partition(": ")[2]


def signature_name(signature: str) -> str:
    """The file name of the one entry a run saves for a divergence signature."""
    return hashlib.sha256(signature.encode()).hexdigest()[:16] + ".json"


def path_for(directory: Path, arch: str, signature: str) -> Path:
    """Where the entry for `signature` is (or will be) under an output directory."""
    return Path(directory) / arch / signature_name(signature)


def save_divergence_entry(entry: CorpusEntry, directory: Path, signature: str) -> tuple[Path, bool]:
    """Save `entry` as the one file for `signature` under directory/<arch>/, unless a file
    for it is there already (saved by another worker or an earlier run: that one stays).
    Returns (path, True if this call created it)."""
    path = path_for(directory, entry.arch, signature)
    return path, publish_new(path, entry.dumps())


def load(path: Path) -> CorpusEntry:
    path = Path(path)
    doc = read_json(path)       # one-line TraceError: unreadable, not UTF-8, not JSON, too deep
    if not isinstance(doc, dict):
        raise TraceError(f"{path}: a corpus entry is a JSON object")
    for name in ("arch", "old", "new"):
        if not isinstance(doc.get(name), str) or not doc[name]:
            raise TraceError(f"{path}: field {name}: missing or not a string")
    expect = doc.get("expect")
    if not isinstance(expect, list) or not all(isinstance(x, str) and x.count("|") == 6 for x in expect):
        raise TraceError(f"{path}: field expect: expected a list of divergence signatures "
                         "(class|arch|old|new|op|wrong_side|shape)")
    events = trace_from_json(doc, str(path))
    return CorpusEntry(doc["arch"], doc["old"], doc["new"], list(expect), events,
                       str(doc.get("note", "")), path)


def entries_under(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(x for x in p.rglob("*.json") if not x.name.startswith("."))
        elif p.exists():
            out.append(p)
        else:
            raise TraceError(f"{p}: no such file or directory")
    return out

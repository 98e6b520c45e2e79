"""Triage: the known-divergence list and deduplication by signature.

The known list is data: oracles/known/<arch>.toml, plus oracles/known/all.toml for entries
that hold on every architecture.  Each entry names the fields it matches (class, op, old,
new, wrong_side, shape; a field left out matches anything, a list matches any of its
values; `versions` matches when every side blamed runs one of the listed versions, whether it
is the pair's old or new side) and says why the divergence is real kernel behaviour, with its
source.  Known divergences are still reported, marked known.

What one version does wrong is written with `versions`: every finding judges one side against
the reference, so it does not depend on which side runs the version, and a patch modelled on
that version, wrong alike on both sides, inherits it (tests/test_oracle.py checks the list).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from impls.registry import canonical_version

from .compare import CLASSES, Divergence

KNOWN_DIR = Path(__file__).parent / "known"
MATCH_FIELDS = ("class", "op", "old", "new", "wrong_side", "shape", "versions")


class KnownListError(Exception):
    pass


@dataclass(frozen=True)
class KnownEntry:
    arch: str
    match: tuple[tuple[str, frozenset[str]], ...]
    explanation: str
    source: str
    where: str

    def matches(self, d: Divergence) -> bool:
        # `mainline` and v6.19 are one model: an entry names the version, a run may use the alias
        values = {"class": d.cls, "op": d.op, "old": canonical_version(d.old), "new": canonical_version(d.new),
                  "wrong_side": d.wrong_side, "shape": d.shape}
        if self.arch not in ("all", d.arch):
            return False
        for k, v in self.match:
            if k == "versions":
                # the behaviour of these versions, whichever side of the pair runs them: every
                # side blamed runs one of them (a candidate blamed beside one inherits it)
                blamed = {"old": [values["old"]], "new": [values["new"]],
                          "both": [values["old"], values["new"]]}[d.wrong_side]
                ours = [name for name in blamed if not is_candidate(name)]
                if not ours or not all(name in v for name in ours):
                    return False
            elif values[k] not in v:
                return False
        return True


def load_known(directory: Path = KNOWN_DIR) -> list[KnownEntry]:
    """Every entry of directory/*.toml (the file's stem is the arch, or "all")."""
    entries: list[KnownEntry] = []
    for path in sorted(Path(directory).glob("*.toml")):
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as e:
            raise KnownListError(f"{path}: cannot read: {e.strerror}") from None
        except UnicodeDecodeError as e:
            raise KnownListError(f"{path}: not UTF-8 (byte {e.start})") from None
        entries += loads_known(text, path)
    return entries


def loads_known(text: str, path: Path | str = "<known>") -> list[KnownEntry]:
    """The entries of one known-list file's TOML text; `path` names it in errors, and its
    stem is the arch the entries hold on ("all": every arch).  Raises KnownListError, one line."""
    path = Path(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise KnownListError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:
        raise KnownListError(f"{path}: not valid TOML: nested too deeply") from None
    known = doc.get("known", [])
    if not isinstance(known, list):
        raise KnownListError(f"{path}: field 'known' must be an array of tables ([[known]])")
    entries: list[KnownEntry] = []
    for i, raw in enumerate(known):
        where = f"{path.name} entry {i}"
        if not isinstance(raw, dict):
            raise KnownListError(f"{path}: entry {i}: expected a table, got {type(raw).__name__}")
        for need in ("explanation", "source"):
            if not isinstance(raw.get(need), str) or not raw[need].strip():
                raise KnownListError(f"{path}: entry {i}: field {need!r} is required (a non-empty string)")
        if "class" not in raw:
            raise KnownListError(f"{path}: entry {i}: field 'class' is required")
        unknown = set(raw) - set(MATCH_FIELDS) - {"explanation", "source"}
        if unknown:
            raise KnownListError(f"{path}: entry {i}: unknown field {sorted(unknown)[0]!r}")
        match = []
        for k in MATCH_FIELDS:
            if k in raw:
                v = raw[k]
                vals = v if isinstance(v, list) else [v]
                if not vals or not all(isinstance(x, str) and x for x in vals):
                    raise KnownListError(f"{path}: entry {i}: field {k!r} must be a string or a list of strings")
                match.append((k, frozenset(vals)))
        for c in dict(match)["class"]:
            if c not in CLASSES:
                raise KnownListError(f"{path}: entry {i}: class {c!r} is not one of {', '.join(CLASSES)}")
        entries.append(KnownEntry(path.stem, tuple(match), raw["explanation"].strip(),
                                  raw["source"].strip(), where))
    return entries


def is_candidate(side_name: str) -> bool:
    """A user's model (file.py:Class or module:Class), not one of our kernel versions."""
    return ":" in side_name


# mark_known's answers per known list: the entries (kept, so their ids stay theirs) and, per
# divergence key (every field matches() reads), the explanation or None
_MARKS: dict[tuple[int, ...], tuple[tuple[KnownEntry, ...], dict]] = {}


def mark_known(divergences: list[Divergence], known: list[KnownEntry]) -> None:
    """Mark divergences the known list explains.  The list describes kernel behaviour, so a
    divergence that blames only a candidate side is never excused by it; what a candidate
    inherits from our model shows on both sides and is.

    The answer depends only on the divergence's class, arch, versions, op, side, shape and
    sides_differ, and on the entries (frozen): it is remembered per list of entries."""
    ids = tuple(map(id, known))
    cached = _MARKS.get(ids)
    if cached is None:
        if len(_MARKS) > 16:
            _MARKS.clear()
        cached = _MARKS[ids] = (tuple(known), {})
    answers = cached[1]
    for d in divergences:
        key = (d.cls, d.arch, d.old, d.new, d.op, d.wrong_side, d.shape, d.sides_differ)
        if key not in answers:
            probe = Divergence(d.cls, d.wrong_side, d.op, d.shape, d.event_index, "", d.arch, d.old, d.new,
                               sides_differ=d.sides_differ)
            _mark_one(probe, known)
            answers[key] = probe.explanation if probe.known else None
        if answers[key] is not None:
            d.known = True
            d.explanation = answers[key]


def _mark_one(d: Divergence, known: list[KnownEntry]) -> None:
    blamed = {"old": [d.old], "new": [d.new], "both": [d.old, d.new]}[d.wrong_side]
    if all(is_candidate(name) for name in blamed):
        return
    for k in known:
        if k.matches(d):
            d.known = True
            d.explanation = f"{k.explanation} (source: {k.source}; {k.where})"
            return
        if d.sides_differ and d.wrong_side != "both" and k.matches(replace(d, wrong_side="both")):
            # only this side got into the state where both versions are known to do this
            d.known = True
            d.explanation = (f"{k.explanation} (source: {k.source}; {k.where}; known on both sides, "
                             f"shown by {d.wrong_side} alone because the other side's schedule "
                             f"reached this event in another order)")
            return

"""Layout rules the import system enforces only at run time."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
# the data flow of ../shared/DESIGN.md section 2, as the packages that each layer may import:
# language (the trace vocabulary) -> impls (models) -> oracles -> fuzz (runner, minimizer,
# corpus) -> fuzz.engines / fuzz.reports -> fuzz.cli
BELOW = {
    "language": {"language"},
    "impls": {"language", "impls"},
    "oracles": {"language", "impls", "oracles"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_fuzz_module_shadows_the_standard_library():
    # the atheris and loader targets run as scripts from fuzz/engines/, so that directory is
    # first on sys.path there: fuzz/bisect.py once hid the standard library's bisect from
    # impls/machine.py
    clashes = sorted(p for p in FUZZ.rglob("*.py") if p.stem in sys.stdlib_module_names)
    assert not clashes


def test_lower_layers_never_import_upper_ones():
    ours = {"language", "impls", "oracles", "fuzz", "corpus"}
    bad = []
    for layer, allowed in BELOW.items():
        for path in (ROOT / layer).rglob("*.py"):
            for name in _imports(path):
                top = name.split(".")[0]
                if top in ours and top not in allowed:
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, bad


def test_engines_and_reports_do_not_import_each_other_or_the_cli():
    # engines make traces and hand divergences to fuzz/ (minimize, corpus); reports read what
    # was saved; only the CLI sees both.  The loader target is the one engine aimed at the tool
    # itself: it fuzzes every file the tool reads, the report reader among them.
    exempt = {FUZZ / "engines" / "loader_target.py"}
    bad = []
    for pkg, other in (("engines", "fuzz.reports"), ("reports", "fuzz.engines")):
        for path in set((FUZZ / pkg).rglob("*.py")) - exempt:
            for name in _imports(path):
                if name.startswith(other) or name == "fuzz.cli":
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, bad

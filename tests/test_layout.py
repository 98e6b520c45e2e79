"""Layout rules the import system enforces only at run time."""
from __future__ import annotations

import sys
from pathlib import Path

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
# fuzz/trace.py re-exports language/trace.py for older imports; nothing the atheris or loader
# targets load imports the standard library's `trace` (the profiler), so it shadows nothing used
ALLOWED = {"trace"}


def test_no_fuzz_module_shadows_the_standard_library():
    # the atheris and loader targets run as scripts from fuzz/, so fuzz/ is first on sys.path
    # there: fuzz/bisect.py once hid the standard library's bisect from impls/machine.py
    clashes = {p.stem for p in FUZZ.glob("*.py")} & set(sys.stdlib_module_names)
    assert clashes <= ALLOWED, sorted(clashes - ALLOWED)

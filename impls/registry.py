"""(version, arch) -> model class, plus user-supplied candidate models.

A candidate is named `path/to/file.py:ClassName` or `package.module:ClassName`; it must be a
subclass of impls.kvm.Kvm (usually of one of ours, overriding the functions a patch changes).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from .kvm import Kvm
from .x86_shadow import X86ShadowV5_12, X86ShadowV5_13

ARCHES = ["x86-shadow", "x86-tdp", "arm64", "mips", "ppc-hv-hash", "ppc-hv-radix", "ppc-pr", "e500"]
VERSIONS = ["v5.12", "v5.13-rc1", "v5.13"]
DEFAULT_OLD, DEFAULT_NEW = "v5.12", "v5.13"

# (arch, version) -> (class, note).  Where two versions share a class the note says why.
MODELS: dict[tuple[str, str], tuple[type[Kvm], str]] = {
    ("x86-shadow", "v5.12"): (X86ShadowV5_12, ""),
    ("x86-shadow", "v5.13-rc1"): (X86ShadowV5_13, "no x86 legacy-MMU or kvm_main.c notifier change between v5.13-rc1 and v5.13"),
    ("x86-shadow", "v5.13"): (X86ShadowV5_13, ""),
}


class ModelLoadError(Exception):
    """A model name that names nothing, or a candidate that cannot be loaded."""


def implemented_arches() -> list[str]:
    return [a for a in ARCHES if any((a, v) in MODELS for v in VERSIONS)]


def versions_for(arch: str) -> list[str]:
    return [v for v in VERSIONS if (arch, v) in MODELS]


def check_arch(arch: str) -> str:
    if arch not in ARCHES:
        raise ModelLoadError(f"unknown arch {arch!r}; known: {', '.join(ARCHES)}")
    if arch not in implemented_arches():
        raise ModelLoadError(f"arch {arch!r} has no model yet; implemented: {', '.join(implemented_arches())}")
    return arch


def resolve(arch: str, spec: str) -> type[Kvm]:
    """A version name for `arch`, or a candidate `file.py:Name` / `module:Name`."""
    if ":" in spec:
        return load_candidate(spec)
    check_arch(arch)
    if (arch, spec) not in MODELS:
        raise ModelLoadError(f"no model of {arch} at {spec!r}; versions: {', '.join(versions_for(arch))}")
    return MODELS[(arch, spec)][0]


def load_candidate(spec: str) -> type[Kvm]:
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise ModelLoadError(f"candidate {spec!r}: expected path/to/file.py:ClassName or module:ClassName")
    try:
        if where.endswith(".py") or "/" in where:
            path = Path(where)
            if not path.is_file():
                raise ModelLoadError(f"candidate {spec!r}: no such file {where}")
            modname = f"memslot_fuzz_candidate_{abs(hash(str(path.resolve())))}"
            module = sys.modules.get(modname)
            if module is None:
                loader_spec = importlib.util.spec_from_file_location(modname, path)
                module = importlib.util.module_from_spec(loader_spec)
                sys.modules[modname] = module
                loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ModelLoadError:
        raise
    except Exception as e:  # the candidate's own code failed: say so, not a tool crash
        sys.modules.pop(locals().get("modname", ""), None)
        raise ModelLoadError(f"candidate {spec!r} failed to import: {type(e).__name__}: {e}") from None
    cls = getattr(module, name, None)
    if cls is None:
        raise ModelLoadError(f"candidate {spec!r}: {where} has no {name}")
    if not (isinstance(cls, type) and issubclass(cls, Kvm)):
        raise ModelLoadError(f"candidate {spec!r}: {name} is not a subclass of impls.kvm.Kvm")
    return cls


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

ARCHES = ["x86-shadow", "x86-tdp", "arm64", "mips", "ppc-hv-hash", "ppc-hv-radix", "ppc-pr", "e500"]
VERSIONS = ["v5.12", "v5.13-rc1", "v5.13"]
DEFAULT_OLD, DEFAULT_NEW = "v5.12", "v5.13"

# arch -> the module holding its models.  Each module defines
#   MODELS = {arch: {version: (class, note)}}
# where the note says why two versions share a class ("" when they do not).
ARCH_MODULES = {
    "x86-shadow": "impls.x86_shadow",
    "x86-tdp": "impls.x86_tdp",
    "arm64": "impls.arm64",
    "mips": "impls.mips",
    "ppc-hv-hash": "impls.ppc_book3s_hv",
    "ppc-hv-radix": "impls.ppc_book3s_hv",
    "ppc-pr": "impls.ppc_book3s_pr",
    "e500": "impls.ppc_e500",
}


def _arch_models(arch: str) -> dict[str, tuple[type[Kvm], str]]:
    try:
        module = importlib.import_module(ARCH_MODULES[arch])
    except ModuleNotFoundError as e:
        if e.name == ARCH_MODULES[arch]:
            return {}
        raise
    return module.MODELS.get(arch, {})


def models() -> dict[tuple[str, str], tuple[type[Kvm], str]]:
    """(arch, version) -> (class, note) for every implemented model."""
    return {(a, v): m for a in ARCHES for v, m in _arch_models(a).items()}


class ModelLoadError(Exception):
    """A model name that names nothing, or a candidate that cannot be loaded."""


def implemented_arches() -> list[str]:
    return [a for a in ARCHES if _arch_models(a)]


def versions_for(arch: str) -> list[str]:
    have = _arch_models(arch)
    return [v for v in VERSIONS if v in have]


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
    have = _arch_models(arch)
    if spec not in have:
        raise ModelLoadError(f"no model of {arch} at {spec!r}; versions: {', '.join(versions_for(arch))}")
    return have[spec][0]


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


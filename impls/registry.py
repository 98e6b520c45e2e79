"""(version, arch) -> model class, plus user-supplied candidate models.

A candidate is named `path/to/file.py:ClassName` or `package.module:ClassName`; it must be a
subclass of impls.kvm.Kvm (usually of one of ours, overriding the functions a patch changes).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

from .kvm import Kvm

ARCHES = ["x86-shadow", "x86-tdp", "arm64", "mips", "ppc-hv-hash", "ppc-hv-radix", "ppc-pr", "e500"]
# in kernel order; series-v1 (the series' first posting, with patch 16) came before v5.13-rc1
VERSIONS = ["v5.12", "series-v1", "v5.13-rc1", "v5.13", "v5.15", "v5.17", "v6.8", "v6.10", "v6.19"]
# other names --old/--new accept: the newest kernel we model is current mainline
ALIASES = {"mainline": "v6.19"}
DEFAULT_OLD, DEFAULT_NEW = "v5.12", "v5.13"

# Later generic layers (kvm_main_*.py), each applied on top of an arch's v5.13 gfn handlers:
# version -> (module, class); each layer subclasses the one before (v5.15 < v5.17 < v6.8 <
# v6.10 < v6.19).  An arch module may list commits after v5.13 that change its own handlers as
# LATER_OVERRIDES = [(release that merged it, mixin class), ...]; the release need not be one
# of VERSIONS (arm64's v6.5 fix): a mixin applies to every listed version at or after it.
GENERIC_LAYERS = {
    "series-v1": ("impls.kvm_main_series_v1", "KvmMainSeriesV1"),
    "v5.15": ("impls.kvm_main_v5_15", "KvmMainV5_15"),
    "v5.17": ("impls.kvm_main_v5_17", "KvmMainV5_17"),
    "v6.8": ("impls.kvm_main_v6_8", "KvmMainV6_8"),
    "v6.10": ("impls.kvm_main_v6_10", "KvmMainV6_10"),
    "v6.19": ("impls.kvm_main_v6_19", "KvmMainV6_19"),
}


def canonical_version(name: str) -> str:
    """A version name with aliases resolved (`mainline` -> v6.19); anything else unchanged."""
    return ALIASES.get(name, name)


def release_key(version: str) -> tuple[int, int, int, int]:
    """Sort key of a kernel release name in kernel order: v5.13-rc1 < v5.13 < v6.5; series-v1
    (posted April 2021) sorts just before v5.13-rc1."""
    version = canonical_version(version)
    if version == "series-v1":
        return (5, 13, 0, 0)
    body, _, rc = version.removeprefix("v").partition("-rc")
    major, minor = (int(x) for x in body.split(".")[:2])
    return (major, minor, 0, int(rc)) if rc else (major, minor, 1, 0)


_layered_cache: dict[tuple[str, str], type[Kvm]] = {}

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
    have = dict(module.MODELS.get(arch, {}))
    if "v5.13" in have:
        for version in GENERIC_LAYERS:
            if version not in have:
                aliases = [a for a, v in ALIASES.items() if v == version]
                have[version] = (_layered(arch, version, have["v5.13"][0], module),
                                 f"also named {', '.join(aliases)}" if aliases else "")
    return have


def _layered(arch: str, version: str, base: type[Kvm], module) -> type[Kvm]:
    """The arch's v5.13 handlers under a later generic layer, plus the arch's own later commits."""
    key = (arch, version)
    if key not in _layered_cache:
        modname, clsname = GENERIC_LAYERS[version]
        layer = getattr(importlib.import_module(modname), clsname)
        extra = [m for first, m in getattr(module, "LATER_OVERRIDES", [])
                 if release_key(first) <= release_key(version) and version != "series-v1"]
        name = base.__name__.replace("V5_13", "") + "V" + version.replace("v", "").replace(".", "_").replace("-", "_")
        cls = type(name, (*extra, layer, base), {
            "version": version, "__module__": base.__module__,
            "__doc__": f"{arch} at {version}: {layer.__name__} over {base.__name__}"
                       + (f" with {', '.join(m.__name__ for m in extra)}" if extra else "")})
        _layered_cache[key] = cls
    return _layered_cache[key]


def model(arch: str, version: str) -> type[Kvm]:
    """The model class of `arch` at `version`: subclass it to describe a patch."""
    return resolve(arch, version)


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
    spec = canonical_version(spec)
    have = _arch_models(arch)
    if spec not in have:
        raise ModelLoadError(f"no model of {arch} at {spec!r}; versions: {', '.join(versions_for(arch))}")
    return have[spec][0]


def candidate_location(spec: str) -> tuple[str, str]:
    """(module file or module name, class name) of a candidate spec, checked without importing
    anything: a malformed spec or a file that does not exist is a ModelLoadError."""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise ModelLoadError(f"candidate {spec!r}: expected path/to/file.py:ClassName or module:ClassName")
    if _is_path(where) and not Path(where).is_file():
        raise ModelLoadError(f"candidate {spec!r}: no such file {where}")
    return where, name


def _is_path(where: str) -> bool:
    return where.endswith(".py") or "/" in where


class CandidateImportError(ModelLoadError):
    """The candidate's own code raised while it was imported: a finding about the candidate
    (fuzz/contain.py reports it as a model-crash), not a usage error.  `raised`: what it
    raised, where."""

    def __init__(self, spec: str, e: BaseException):
        self.raised = _raised(e)
        super().__init__(f"candidate {spec!r} failed to import: {self.raised}")


def load_candidate(spec: str) -> type[Kvm]:
    """Import a candidate and return its class.  This executes the candidate's code: the tool
    calls it only in the candidate's worker process (fuzz/contain.py).  A missing file, module
    or class, or a file that is not valid Python, is a ModelLoadError; an exception raised by the
    candidate's code while it is imported is a CandidateImportError (any other BaseException,
    such as SystemExit, propagates)."""
    where, name = candidate_location(spec)
    modname = ""
    try:
        if _is_path(where):
            path = Path(where)
            modname = f"memslot_fuzz_candidate_{abs(hash(str(path.resolve())))}"
            module = sys.modules.get(modname)
            if module is None:
                loader_spec = importlib.util.spec_from_file_location(modname, path)
                module = importlib.util.module_from_spec(loader_spec)
                sys.modules[modname] = module
                loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except SyntaxError as e:
        sys.modules.pop(modname, None)
        if e.filename and Path(e.filename).resolve() == Path(where).resolve():
            raise ModelLoadError(f"candidate {spec!r} failed to import: SyntaxError: {e}") from None
        raise CandidateImportError(spec, e) from None
    except ModuleNotFoundError as e:
        sys.modules.pop(modname, None)
        if e.name and (where == e.name or where.startswith(e.name + ".")):
            raise ModelLoadError(f"candidate {spec!r}: no module named {e.name}") from None
        raise CandidateImportError(spec, e) from None
    except Exception as e:  # the candidate's own code failed: a finding, not a tool crash
        sys.modules.pop(modname, None)
        raise CandidateImportError(spec, e) from None
    cls = getattr(module, name, None)
    if cls is None:
        raise ModelLoadError(f"candidate {spec!r}: {where} has no {name}")
    if not (isinstance(cls, type) and issubclass(cls, Kvm)):
        raise ModelLoadError(f"candidate {spec!r}: {name} is not a subclass of impls.kvm.Kvm")
    return cls


def _raised(e: BaseException) -> str:
    """`Type: message at file:line`, at the deepest frame (the candidate's line)."""
    frames = traceback.extract_tb(e.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return f"{type(e).__name__}: {e}{where}"

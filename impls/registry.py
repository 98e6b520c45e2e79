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

ARCHES = ["x86-shadow", "x86-tdp", "arm64", "mips", "ppc-hv-hash", "ppc-hv-radix", "ppc-pr", "e500",
          "riscv-sv39", "riscv-sv48"]
# in kernel order; series-v1 (the series' first posting, with patch 16) came before v5.13-rc1
VERSIONS = ["v5.12", "series-v1", "v5.13-rc1", "v5.13", "v5.15", "v5.17", "v6.8", "v6.10", "v6.19"]
# other names --old/--new accept: the newest kernel we model is current mainline
ALIASES = {"mainline": "v6.19"}
DEFAULT_OLD, DEFAULT_NEW = "v5.12", "v5.13"

# Later generic layers (kvm_main_*.py), each applied on top of an arch's base gfn handlers
# (its v5.13 class, or the class an arch that came later names in BASE_HANDLERS, see
# base_handlers): version -> (module, class); each layer subclasses the one before (v5.15 <
# v5.17 < v6.8 < v6.10 < v6.19).  An arch module may list commits after v5.13 that change its own handlers as
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
    "riscv-sv39": "impls.riscv",
    "riscv-sv48": "impls.riscv",
}


def _arch_models(arch: str) -> dict[str, tuple[type[Kvm], str]]:
    try:
        module = importlib.import_module(ARCH_MODULES[arch])
    except ModuleNotFoundError as e:
        if e.name == ARCH_MODULES[arch]:
            return {}
        raise
    have = dict(module.MODELS.get(arch, {}))
    base = base_handlers(arch, module, have)
    if base is not None:
        first, cls = base
        for version in GENERIC_LAYERS:
            if version not in have and _layer_applies(version, first):
                aliases = [a for a, v in ALIASES.items() if v == version]
                have[version] = (_layered(arch, version, cls, module, first),
                                 f"also named {', '.join(aliases)}" if aliases else "")
    return have


def base_handlers(arch: str, module, have: dict) -> tuple[str, type[Kvm]] | None:
    """(first release, class) of the gfn handlers the later generic layers go over.

    Every arch of the v5.13 series has its v5.13 class, from v5.13.  An arch that reached
    mainline later, with the gfn handlers from its first release (RISC-V, v5.16), names its
    class in the module's BASE_HANDLERS = {arch: (release, class)}: it has no v5.12 or v5.13
    model, and only the layers of releases at or after its first get composed over it.  Why a
    separate table rather than a fake "v5.13" entry: a v5.13 entry would make the registry
    claim RISC-V models of v5.13 (and of series-v1 and v5.15), which never existed; and the v5.13
    arches keep exactly the classes, names and layers they had."""
    own = getattr(module, "BASE_HANDLERS", {}).get(arch)
    if own is not None:
        return own
    if "v5.13" in have:
        return "v5.13", have["v5.13"][0]
    return None


def _layer_applies(version: str, first: str) -> bool:
    """Whether the generic layer of `version` goes over handlers first released in `first`:
    series-v1 is a posting against v5.13's handlers, not a release, so it goes over v5.13
    handlers only; a release layer goes over handlers released at or before it."""
    if version == "series-v1":
        return first == "v5.13"
    return release_key(first) <= release_key(version)


def _layered(arch: str, version: str, base: type[Kvm], module, first: str = "v5.13") -> type[Kvm]:
    """The arch's base handlers under a later generic layer, plus the arch's own later commits."""
    key = (arch, version)
    if key not in _layered_cache:
        modname, clsname = GENERIC_LAYERS[version]
        layer = getattr(importlib.import_module(modname), clsname)
        extra = [m for first, m in getattr(module, "LATER_OVERRIDES", [])
                 if release_key(first) <= release_key(version) and version != "series-v1"]
        token = "V" + first.replace("v", "").replace(".", "_")
        name = base.__name__.replace(token, "") + "V" + version.replace("v", "").replace(".", "_").replace("-", "_")
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


def implemented_arches(*versions: str) -> list[str]:
    """The arches with a model at every version named (a candidate `file.py:Class` counts as
    present everywhere).  With no version named: at the default pair DEFAULT_OLD, DEFAULT_NEW,
    which is what `run --arch all` runs by default; an arch that has no model there (RISC-V
    starts at v5.16) is left out, see lacking() and default_pair()."""
    versions = versions or (DEFAULT_OLD, DEFAULT_NEW)
    return [a for a in ARCHES if _arch_models(a) and all(has(a, v) for v in versions)]


def modelled_arches() -> list[str]:
    """Every arch with a model at any version."""
    return [a for a in ARCHES if _arch_models(a)]


def has(arch: str, version: str) -> bool:
    """Whether `arch` has a model at `version` (aliases accepted; a candidate spec: True, its
    class is checked when it is loaded)."""
    if ":" in version:
        return True
    return canonical_version(version) in _arch_models(arch)


def lacking(*versions: str) -> list[tuple[str, str]]:
    """(arch, first version named that it has no model of) for every modelled arch that
    implemented_arches(*versions) leaves out: what `run --arch all` skips, one note each."""
    versions = versions or (DEFAULT_OLD, DEFAULT_NEW)
    return [(a, next(v for v in versions if not has(a, v))) for a in modelled_arches()
            if not all(has(a, v) for v in versions)]


def default_pair(arch: str) -> tuple[str, str]:
    """The versions to fuzz `arch` on when none are given: DEFAULT_OLD and DEFAULT_NEW where
    the arch has both, else its first and its newest listed version (RISC-V: v5.17, v6.19)."""
    if has(arch, DEFAULT_OLD) and has(arch, DEFAULT_NEW):
        return DEFAULT_OLD, DEFAULT_NEW
    vs = versions_for(arch)
    return vs[0], vs[-1]


def versions_for(arch: str) -> list[str]:
    have = _arch_models(arch)
    return [v for v in VERSIONS if v in have]


def check_arch(arch: str) -> str:
    if arch not in ARCHES:
        raise ModelLoadError(f"unknown arch {arch!r}; known: {', '.join(ARCHES)}")
    if arch not in modelled_arches():
        raise ModelLoadError(f"arch {arch!r} has no model yet; implemented: {', '.join(modelled_arches())}")
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

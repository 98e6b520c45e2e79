"""The atheris (libFuzzer) engine: bytes -> Trace, the target's configuration, and a launcher.

Bytes become a trace in one of two ways (`decode`):

* an input that is a JSON trace (`memslot-fuzz-trace/1`, a corpus entry too: extra fields are
  ignored) and is well formed decodes to exactly those events, so corpus directories can hold
  readable traces and seeds (corpus/seeds/, corpus/<arch>/);
* anything else drives the one domain-aware generator (fuzz.engines.generate.generate) through
  `BytesSource`, a `Source` that reads its choices from the bytes.  No hypothesis in between:
  libFuzzer's byte mutations map to local changes of choices, and the trace is the same kind of
  `list[Event]` every other engine makes.  Once the bytes run out every choice is its lowest
  value, so decoding is total and deterministic and always ends in a well-formed trace.

The target (fuzz/engines/atheris_target.py, an executable script because libFuzzer re-executes argv[0]
for -jobs/-workers/-fork/-minimize_crash) is configured by environment variables, read by
`TargetConfig.from_env`:

    MEMSLOT_FUZZ_ARCH      architecture (default x86-shadow)
    MEMSLOT_FUZZ_OLD       old side: version or file.py:Class / module:Class (default v5.12)
    MEMSLOT_FUZZ_NEW       new side (default v5.13)
    MEMSLOT_FUZZ_OUT       output directory for divergence traces (default memslot-fuzz-out)
    MEMSLOT_FUZZ_MAX_EVENTS        longest trace decoded from raw bytes (default 40)
    MEMSLOT_FUZZ_ALIGNED_ONLY      1: page-aligned notifier ranges only (default 0)
    MEMSLOT_FUZZ_KERNEL_ONLY       1: only traces a running kernel sends (check_well_formed strict=True):
                                   generated ones, and JSON inputs only if they pass it (default 0)
    MEMSLOT_FUZZ_MINIMIZE_SECONDS  minimize a divergence before saving it (default 5; 0: off)
    MEMSLOT_FUZZ_SAVE_KNOWN        1: also save the first trace of each known signature (no crash)
    MEMSLOT_FUZZ_SKIP_SAVED        1: a new signature already saved under OUT is not a crash again
    MEMSLOT_FUZZ_MANIFEST          append "path<TAB>signature" per saved divergence to this file
    MEMSLOT_FUZZ_INSTRUMENT        models (default) | imports | all | none: coverage instrumentation
                                   (INSTRUMENT_PACKAGES, instrument_exclude)
    MEMSLOT_FUZZ_MUTATOR           1 (default): the trace-level custom mutator; 0: libFuzzer's own
    MEMSLOT_FUZZ_TRACE_CMP         1 (default): instrument comparisons too (atheris' dataflow
                                   tracing: libFuzzer's compare dictionary, -use_value_profile);
                                   0: branches only, faster (TargetConfig.trace_cmp says how much);
                                   INSTRUMENT=all always traces them (atheris.instrument_all)

`run_atheris` launches the target with libFuzzer flags and returns the divergence files it
wrote; `run_atheris_stats` returns the same plus execution figures.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from fuzz.engines.generate import GenConfig, Source, generate
from language.wellformed import check_well_formed
from language.trace import SCHEMA, Event, TraceError, trace_from_json, trace_to_json

TARGET = Path(__file__).resolve().parent / "atheris_target.py"
REPO = Path(__file__).resolve().parent.parent.parent


# ----- bytes -> trace ---------------------------------------------------------------------
class BytesSource(Source):
    """Choices read from a byte string, front to back: a choice among n values takes as many
    bytes as n needs (none when n is 1).  Exhausted input yields the lowest value."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def int(self, lo: int, hi: int) -> int:
        if hi <= lo:
            return lo
        span = hi - lo
        nbytes = (span.bit_length() + 7) // 8
        chunk = self.data[self.pos:self.pos + nbytes]
        self.pos += nbytes
        if not chunk:
            return lo
        return lo + int.from_bytes(chunk, "big") % (span + 1)


def json_trace(data: bytes, strict: bool = False) -> list[Event] | None:
    """The events of `data` if it is a well-formed JSON trace (strict: one that breaks no
    allowance either, language.wellformed.ALLOWANCES), else None."""
    if not data.lstrip()[:1] == b"{":
        return None
    try:
        doc = json.loads(data)
        events = trace_from_json(doc)
        check_well_formed(events, strict=strict)
    except (ValueError, TraceError, RecursionError):     # JSONDecodeError, UnicodeDecodeError
        return None
    return events


# Decoded inputs, per configuration object: in the target the mutator decodes each input it
# mutates and the target then decodes the mutant, and libFuzzer picks the same corpus inputs
# again and again; parsing a JSON trace and checking it cost more than running it.  Events are
# frozen, and every caller gets a list of its own.
DECODE_CACHE = 4096
_DECODED: OrderedDict = OrderedDict()       # (bytes, id(cfg)) -> (cfg, tuple of events, read as JSON)


def remember(data: bytes, cfg: GenConfig, events: list[Event]) -> None:
    """Record what decode(data, cfg) returns for `data`, a JSON trace of `events` (the caller
    knows it: the mutator encoded it)."""
    _remember(data, cfg, events, True)


def _remember(data: bytes, cfg: GenConfig, events: list[Event], as_json: bool) -> None:
    _DECODED[(data, id(cfg))] = (cfg, tuple(events), as_json)
    if len(_DECODED) > DECODE_CACHE:
        _DECODED.popitem(last=False)


def decoded(data: bytes, cfg: GenConfig | None = None) -> tuple[list[Event], bool]:
    """decode(data, cfg), and whether data was read as a JSON trace (True) or drove the
    generator (False)."""
    if cfg is not None:
        hit = _DECODED.get((data, id(cfg)))
        if hit is not None and hit[0] is cfg:
            _DECODED.move_to_end((data, id(cfg)))
            return list(hit[1]), hit[2]
    use = cfg or GenConfig()
    events = json_trace(data, strict=use.kernel_only)
    as_json = events is not None
    if events is None:
        events = generate(BytesSource(data), use)
    if cfg is not None:
        _remember(data, cfg, events, as_json)
    return events, as_json


def decode(data: bytes, cfg: GenConfig | None = None) -> list[Event]:
    """Bytes to a well-formed trace: a JSON trace as itself, anything else via the generator.
    With cfg.kernel_only a JSON trace that breaks an allowance (a corpus seed, or a mutant:
    fuzz.engines.mutator checks only the rules) is not itself: its bytes drive the generator.
    Remembered per cfg object (DECODE_CACHE inputs)."""
    return decoded(data, cfg)[0]


_COMPACT = json.JSONEncoder(separators=(",", ":"))


def encode(events: list[Event]) -> bytes:
    """A trace as the JSON bytes `decode` reads back to the same events: the trace file format
    without its whitespace (language.trace.dumps lays it out for people; libFuzzer's inputs
    are not read by people, and the mutator encodes every mutant: this takes half the time)."""
    return _COMPACT.encode(trace_to_json(events)).encode()


# ----- the target's configuration ---------------------------------------------------------
class TargetConfigError(ValueError):
    """A bad MEMSLOT_FUZZ_* variable: the message names it."""


def _env_int(env: Mapping[str, str], name: str, default: int, lo: int = 0) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw, 0)
    except ValueError:
        raise TargetConfigError(f"environment {name}={raw!r}: not an integer") from None
    if value < lo:
        raise TargetConfigError(f"environment {name}={raw!r}: must be >= {lo}")
    return value


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise TargetConfigError(f"environment {name}={raw!r}: not a number") from None
    if value < 0:
        raise TargetConfigError(f"environment {name}={raw!r}: must be >= 0")
    return value


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise TargetConfigError(f"environment {name}={raw!r}: expected 0 or 1")


# coverage instrumentation of the target, by what it instruments: the packages whose branches
# are kernel behaviour (models) and verdicts (oracles); every package of ours, the harness
# (decoder, generator, mutator, runner) included; everything loaded; nothing
INSTRUMENT_PACKAGES = {"models": ["impls", "oracles"], "imports": ["language", "impls", "oracles", "fuzz"]}
# what "models" leaves out: data structures and bookkeeping, whose branches say how a lookup
# or a record went, not what a version of the kernel did (the host page table and memslot
# index, the TDP MMU's paging-structure reads and iterator, the primitives every model shares
# in impls/kvm.py, observations, the task scheduler, gfn sets, the reference's expectations,
# the known-list matcher).  Left in: the generic layer
# of each version (impls/kvm_main_*), the arch handlers, and the comparison's classes and
# shapes, whose new branches are new kinds of divergence
INSTRUMENT_EXCLUDE = {"models": ["impls.machine", "impls.tdp_iter", "impls.kvm", "impls.observation", "impls.tasks",
                                 "impls.registry", "oracles.gfnset", "oracles.reference", "oracles.triage"]}
# and per architecture in "models" mode: x86-tdp's models run x86-shadow's legacy rmap pass
# first in every notifier hook, and in a TDP-only VM every rmap head it visits is empty
# (impls/x86_tdp.py rmap_head), so its branches in impls/x86_shadow.py (the v5.12 hva walk
# that feeds it included: the TDP MMU's own walk in impls/x86_tdp.py has the same clamps and
# stays instrumented) vary with no x86-tdp input.  Instrumented, they cost about a tenth of the
# x86-tdp target's events/s (19,128 in an all-arch run of bench/atheris_speed.py, 21,544 without
# them in an x86-tdp run right after: two runs, not one; the bench has no switch for this)
INSTRUMENT_EXCLUDE_BY_ARCH = {"models": {"x86-tdp": ["impls.x86_shadow"]}}
INSTRUMENT_MODES = ("models", "imports", "all", "none")


def instrument_exclude(mode: str, arch: str) -> list[str]:
    """The modules the import hook leaves uninstrumented in `mode` for `arch`'s target."""
    return INSTRUMENT_EXCLUDE.get(mode, []) + INSTRUMENT_EXCLUDE_BY_ARCH.get(mode, {}).get(arch, [])


@dataclass
class TargetConfig:
    arch: str = "x86-shadow"
    old: str = "v5.12"
    new: str = "v5.13"
    out_dir: Path = Path("memslot-fuzz-out")
    max_events: int = 40
    aligned_only: bool = False
    minimize_seconds: float = 5.0
    save_known: bool = False
    skip_saved: bool = False
    manifest: Path | None = None
    instrument: str = "models"
    mutator: bool = True
    kernel_only: bool = False
    pending_dir: Path | None = None     # known divergences go here unminimized (the launcher minimizes)
    # Comparisons are traced by default, as atheris.instrument_imports does.  The input reaches
    # the models only through the generator or a JSON trace, so a compared value copied from
    # libFuzzer's compare dictionary seldom meets its comparison again.  Off, the loop ran
    # 1.5-14% more events/s per arch in a quiet 30 s run of every arch; the distinct signatures
    # found differed by a few either way between runs, except on ppc-hv-hash, where tracing
    # found more in three pairs of runs out of four (30/23, 22/23, 26/19, 22/21; bench/
    # atheris_speed.py --trace-cmp both).  Finding things is the point, so on it stays.
    trace_cmp: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, argv0: str = "") -> "TargetConfig":
        """The configuration from MEMSLOT_FUZZ_* variables.  Without MEMSLOT_FUZZ_ARCH, a
        program named memslot_<arch> (dashes as underscores, e.g. memslot_ppc_hv_hash, as
        .clusterfuzzlite/build.sh names one fuzzer per arch) fuzzes that arch."""
        env = os.environ if env is None else env
        arch = env.get("MEMSLOT_FUZZ_ARCH", "")
        stem = Path(argv0).name.removesuffix(".pkg").removesuffix(".py")
        if not arch and stem.startswith("memslot_") and stem != "memslot_fuzz":
            arch = stem[len("memslot_"):].replace("_", "-")
        instrument = env.get("MEMSLOT_FUZZ_INSTRUMENT", "") or "models"
        if instrument not in INSTRUMENT_MODES:
            raise TargetConfigError(f"environment MEMSLOT_FUZZ_INSTRUMENT={instrument!r}: "
                                    f"expected {', '.join(INSTRUMENT_MODES)}")
        manifest = env.get("MEMSLOT_FUZZ_MANIFEST", "")
        pending = env.get("MEMSLOT_FUZZ_PENDING", "")
        return cls(arch=arch or "x86-shadow",
                   old=env.get("MEMSLOT_FUZZ_OLD", "") or "v5.12",
                   new=env.get("MEMSLOT_FUZZ_NEW", "") or "v5.13",
                   out_dir=Path(env.get("MEMSLOT_FUZZ_OUT", "") or "memslot-fuzz-out"),
                   max_events=_env_int(env, "MEMSLOT_FUZZ_MAX_EVENTS", 40, lo=3),
                   aligned_only=_env_bool(env, "MEMSLOT_FUZZ_ALIGNED_ONLY", False),
                   minimize_seconds=_env_float(env, "MEMSLOT_FUZZ_MINIMIZE_SECONDS", 5.0),
                   save_known=_env_bool(env, "MEMSLOT_FUZZ_SAVE_KNOWN", False),
                   skip_saved=_env_bool(env, "MEMSLOT_FUZZ_SKIP_SAVED", False),
                   manifest=Path(manifest) if manifest else None,
                   instrument=instrument,
                   mutator=_env_bool(env, "MEMSLOT_FUZZ_MUTATOR", True),
                   kernel_only=_env_bool(env, "MEMSLOT_FUZZ_KERNEL_ONLY", False),
                   trace_cmp=_env_bool(env, "MEMSLOT_FUZZ_TRACE_CMP", True),
                   pending_dir=Path(pending) if pending else None)

    def to_env(self) -> dict[str, str]:
        env = {"MEMSLOT_FUZZ_ARCH": self.arch, "MEMSLOT_FUZZ_OLD": self.old,
               "MEMSLOT_FUZZ_NEW": self.new, "MEMSLOT_FUZZ_OUT": str(self.out_dir),
               "MEMSLOT_FUZZ_MAX_EVENTS": str(self.max_events),
               "MEMSLOT_FUZZ_ALIGNED_ONLY": str(int(self.aligned_only)),
               "MEMSLOT_FUZZ_MINIMIZE_SECONDS": repr(self.minimize_seconds),
               "MEMSLOT_FUZZ_SAVE_KNOWN": str(int(self.save_known)),
               "MEMSLOT_FUZZ_SKIP_SAVED": str(int(self.skip_saved)),
               "MEMSLOT_FUZZ_INSTRUMENT": self.instrument,
               "MEMSLOT_FUZZ_MUTATOR": str(int(self.mutator)),
               "MEMSLOT_FUZZ_KERNEL_ONLY": str(int(self.kernel_only)),
               "MEMSLOT_FUZZ_TRACE_CMP": str(int(self.trace_cmp))}
        if self.manifest:
            env["MEMSLOT_FUZZ_MANIFEST"] = str(self.manifest)
        if self.pending_dir:
            env["MEMSLOT_FUZZ_PENDING"] = str(self.pending_dir)
        return env

    def gen_config(self, address_space_num: int) -> GenConfig:
        return GenConfig(address_space_num=address_space_num, max_events=self.max_events,
                         aligned_only=self.aligned_only, kernel_only=self.kernel_only,
                         x86_shadow_paging=self.arch.startswith("x86"))


def saved_signatures(out_dir: Path, arch: str, old: str, new: str) -> set[str]:
    """Signatures already shown by corpus entries of (arch, old, new) under out_dir/arch."""
    sigs: set[str] = set()
    d = Path(out_dir) / arch
    if not d.is_dir():
        return sigs
    for p in d.glob("*.json"):
        if p.name.startswith("."):
            continue
        try:
            doc = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and (doc.get("arch"), doc.get("old"), doc.get("new")) == (arch, old, new):
            sigs.update(x for x in doc.get("expect", []) if isinstance(x, str))
    return sigs


# ----- the launcher -----------------------------------------------------------------------
@dataclass
class AtherisRun:
    paths: list[Path] = field(default_factory=list)      # divergence files written (new first)
    signatures: dict[Path, str] = field(default_factory=dict)   # file -> signature that crashed
    execs: int = 0                  # libFuzzer executions (traces run), last status line
    events: int = 0                 # events run, from the target's stats lines (not in fork mode)
    events_per_second: float = 0.0
    corpus_size: int = 0            # inputs in libFuzzer's corpus, last status line
    seconds: float = 0.0
    launches: int = 0
    # known divergences met, unminimized (save_known): (events up to the diverging one, signature)
    pending: list[tuple[list[Event], str]] = field(default_factory=list)
    interrupted: bool = False
    returncodes: list[int] = field(default_factory=list)
    log_tail: list[str] = field(default_factory=list)    # last lines of libFuzzer output


_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s.*?corp: (\d+)/")
_DONE = re.compile(r"^Done (\d+) runs")
_FORK = re.compile(r"^#(\d+): cov: \d+ ft: \d+ corp: (\d+) exec/s")
_STATS = re.compile(r"^memslot-fuzz-atheris: stats (\d+) events in (\d+) traces, [\d.]+s \((\d+) events/s\)")

Progress = Callable[[AtherisRun, str], None]


def target_env(cfg: TargetConfig, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the target: cfg's variables, the repository importable, and this
    Python first on PATH (libFuzzer re-executes the script through its #! line)."""
    env = dict(os.environ if base is None else base)
    env.update(cfg.to_env())
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _read_manifest(manifest: Path) -> list[tuple[Path, str]]:
    out = []
    if manifest.exists():
        for line in manifest.read_text().splitlines():
            path, _, sig = line.partition("\t")
            if path:
                out.append((Path(path), sig))
    return out


def run_atheris_stats(arch: str, old: str, new: str, max_time: float, out_dir: Path,
                      corpus_dir: Path | None = None, jobs: int = 1,
                      extra_args: list[str] | tuple[str, ...] = (),
                      seed_dirs: list[Path] | tuple[Path, ...] = (),
                      max_events: int = 40, aligned_only: bool = False,
                      minimize_seconds: float = 5.0, save_known: bool = False,
                      runs: int | None = None, progress: Progress | None = None,
                      max_len: int = 65536, kernel_only: bool = False,
                      instrument: str = "models", trace_cmp: bool = TargetConfig.trace_cmp) -> AtherisRun:
    """Fuzz (arch, old, new) with atheris for max_time seconds (or `runs` executions).

    corpus_dir: libFuzzer's writable corpus (created; kept between runs; None: a temporary
    one); seed_dirs: read-only corpus directories (e.g. corpus/seeds, corpus/<arch>).
    jobs > 1 uses libFuzzer's fork mode (-fork=jobs -ignore_crashes=1) so one divergence does
    not end the run; with jobs == 1 the target is relaunched after each new divergence while
    time remains.  Either way a signature already saved under out_dir is not a crash again
    (MEMSLOT_FUZZ_SKIP_SAVED), so each launch finds something else, but it is listed in
    `paths` whenever this run meets it, saved by this run or an earlier one.  Crash artifacts
    and libFuzzer logs go to a temporary directory that is removed.  SIGINT or SIGTERM
    (a KeyboardInterrupt here) stops the target and returns what was saved (interrupted=True).
    The target and its fork-mode workers die with this process, however it dies.
    """
    out_dir = Path(out_dir)
    res = AtherisRun()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="memslot-atheris-") as work:
        work_p = Path(work)
        manifest = work_p / "manifest.tsv"
        pending = work_p / "pending"
        pending.mkdir()
        cfg = TargetConfig(arch, old, new, out_dir.resolve(), max_events, aligned_only,
                           minimize_seconds, save_known, True, manifest, kernel_only=kernel_only,
                           pending_dir=pending.resolve() if save_known else None, instrument=instrument,
                           trace_cmp=trace_cmp)
        env = target_env(cfg)
        writable = Path(corpus_dir) if corpus_dir is not None else work_p / "corpus"
        writable.mkdir(parents=True, exist_ok=True)
        dirs = [str(writable.resolve())] + [str(Path(d).resolve()) for d in seed_dirs if Path(d).is_dir()]
        (work_p / "artifacts").mkdir()
        base_args = [f"-artifact_prefix={work_p / 'artifacts'}/", f"-max_len={max_len}",
                     "-print_final_stats=1"]
        if jobs > 1:
            base_args += [f"-fork={jobs}", "-ignore_crashes=1"]
        while True:
            left = max_time - (time.monotonic() - started)
            if left < 1 and res.launches:
                break
            args = base_args + [f"-max_total_time={max(1, int(left))}"]
            if runs is not None:
                args.append(f"-runs={runs}")
            cmd = [sys.executable, str(TARGET), *args, *extra_args, *dirs]
            res.launches += 1
            rc = _launch(cmd, env, work_p, res, progress, manifest)
            res.returncodes.append(rc)
            _collect(manifest, res)
            if res.interrupted or rc in (0, 2) or runs is not None or jobs > 1:
                break      # clean end, bad config, or a mode where libFuzzer keeps going itself
            if len(_read_manifest(manifest)) == 0:
                break      # a crash that is not a divergence (the target's own bug): stop
        res.pending = _read_pending(pending, res)
    res.seconds = time.monotonic() - started
    return res


def _read_pending(pending: Path, res: AtherisRun) -> list[tuple[list[Event], str]]:
    """The known divergences the target met and left for the launcher, in the order it met
    them, without those this run saved anyway (a NEW one is minimized in the target)."""
    from fuzz import corpus
    saved = set(res.signatures.values())
    out = []
    for p in sorted(pending.glob("*.json"), key=lambda q: q.stat().st_mtime_ns):
        try:
            entry = corpus.load(p)
        except TraceError:
            continue
        sig = corpus.noted_signature(entry.note)
        if sig and sig not in saved:
            out.append((entry.events, sig))
    return out


def _collect(manifest: Path, res: AtherisRun) -> None:
    for path, sig in _read_manifest(manifest):
        if path not in res.signatures:
            res.paths.append(path)
            res.signatures[path] = sig


def _launch(cmd: list[str], env: dict, cwd: Path, res: AtherisRun, progress: Progress | None,
            manifest: Path) -> int:
    base_events, base_execs = res.events, res.execs     # figures of earlier launches of this run
    from fuzz.lifetime import Lifeline, preexec_die_with_parent
    # the target dies with us (parent death signal), and so do its fork-mode workers, which
    # libFuzzer starts through `sh -c` (the lifeline: a pipe only we can keep open)
    lifeline = Lifeline()
    try:
        proc = subprocess.Popen(cmd, env={**env, **lifeline.env()}, cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace",
                                start_new_session=True, pass_fds=(lifeline.read_fd,),
                                preexec_fn=preexec_die_with_parent(os.getpid()))
    except BaseException:
        lifeline.close()
        raise
    lifeline.started()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            res.log_tail = (res.log_tail + [line])[-60:]
            m = _STATUS.match(line) or _FORK.match(line)
            if m:
                _collect(manifest, res)
                res.execs = base_execs + int(m.group(1))
                res.corpus_size = int(m.group(3) if m.re is _STATUS else m.group(2))
                if progress:
                    progress(res, "tick")
            elif (d := _DONE.match(line)):
                res.execs = base_execs + int(d.group(1))
            elif (st := _STATS.match(line)):
                res.events = base_events + int(st.group(1))
                res.events_per_second = float(st.group(3))
                if progress:
                    progress(res, "tick")
            elif line.startswith("memslot-fuzz-atheris: NEW") and progress:
                progress(res, "found:" + line)
        return proc.wait()
    except KeyboardInterrupt:          # SIGINT or SIGTERM (fuzz.lifetime.Interrupted)
        res.interrupted = True
        _stop(proc)
        return proc.returncode if proc.returncode is not None else -signal.SIGINT
    finally:
        if proc.poll() is None:
            _stop(proc)
        lifeline.close()


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT to the target's process group (libFuzzer ends its workers), then SIGKILL."""
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def console_progress(label: str, every: float = 5.0, stream=None) -> Progress:
    """A progress callback for run_atheris_stats: a status line at most every `every` seconds
    (traces/s, events/s, corpus size, divergences) and one line per divergence found."""
    start = time.monotonic()
    last = [start - every]

    def show(res: AtherisRun, what: str) -> None:
        out = stream or sys.stderr
        now = time.monotonic()
        if what.startswith("found:"):
            print(f"  [{label}] {what[len('found:memslot-fuzz-atheris: '):]}", file=out, flush=True)
            return
        if now - last[0] < every:
            return
        last[0] = now
        secs = max(now - start, 1e-9)
        events = f", {res.events} events ({res.events_per_second:.0f}/s)" if res.events else ""
        print(f"  [{label}] {secs:5.1f}s {res.execs} traces ({res.execs / secs:.0f}/s){events}, "
              f"corpus {res.corpus_size}, divergences saved {len(res.paths)}", file=out, flush=True)
    return show


def run_atheris(arch: str, old: str, new: str, max_time: float, out_dir: Path,
                corpus_dir: Path | None = None, jobs: int = 1,
                extra_args: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """Launch the atheris target for (arch, old, new) and return the divergence files it
    wrote under out_dir/<arch>/ (corpus entries, minimized, saved before they were raised).
    See run_atheris_stats for the details and the figures."""
    return run_atheris_stats(arch, old, new, max_time, out_dir, corpus_dir, jobs, extra_args).paths


def finish_pending(run: AtherisRun, job, known, budget: float) -> list[tuple[object, Path]]:
    """Minimize and save the known divergences the target left unminimized, on the launcher's
    own clock: each at most job.minimize_seconds, all together at most `budget` seconds (then
    saved as found), as the random engine does; a file already saved for a signature is kept.
    Returns (Divergence, file) like load_results."""
    from fuzz import corpus
    from fuzz.engines.random_engine import minimized, reproduce, save_divergence
    out = []
    spent = 0.0
    for events, sig in run.pending:
        path = corpus.path_for(job.out_dir, job.arch, sig)
        if path.is_file():
            out += load_results([path], known, {path: sig})
            continue
        d = reproduce(events, job, known, sig)
        if d is None:
            continue
        t0 = time.monotonic()
        left = min(job.minimize_seconds, budget - spent)
        if left > 0:
            d = minimized(events, job, known, d, left)
        else:
            d.trace = events
        spent += time.monotonic() - t0
        out.append((d, save_divergence(d, job, known)))
    return out


def load_results(paths: list[Path], known, signatures: Mapping[Path, str] | None = None
                 ) -> list[tuple[object, Path]]:
    """(Divergence, file) for each saved file, as the report wants them: each file's trace is
    replayed and the divergence it was saved for (signatures[file], else the note's
    signature, else its first new one) is returned with `trace` set."""
    from impls import registry

    from fuzz import corpus
    from fuzz.runner import Side, run_trace
    out = []
    for p in paths:
        entry = corpus.load(p)
        divs = run_trace(entry.events, entry.arch, Side(entry.old, registry.resolve(entry.arch, entry.old)),
                         Side(entry.new, registry.resolve(entry.arch, entry.new)), known).divergences
        if not divs:
            continue
        want = (signatures or {}).get(p) or corpus.noted_signature(entry.note)
        d = next((x for x in divs if x.signature == want), None) or \
            next((x for x in divs if not x.known), divs[0])
        d.trace = entry.events
        out.append((d, p))
    return out


__all__ = ["BytesSource", "decode", "encode", "json_trace", "TargetConfig", "TargetConfigError",
           "run_atheris", "run_atheris_stats", "AtherisRun", "load_results", "finish_pending", "saved_signatures",
           "target_env", "console_progress", "instrument_exclude", "SCHEMA"]

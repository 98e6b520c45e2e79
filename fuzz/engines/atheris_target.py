#!/usr/bin/env python3
"""memslot-fuzz atheris target: libFuzzer owns argv, MEMSLOT_FUZZ_* variables configure it.

    MEMSLOT_FUZZ_ARCH=x86-shadow MEMSLOT_FUZZ_OLD=v5.12 MEMSLOT_FUZZ_NEW=v5.13 \\
    MEMSLOT_FUZZ_OUT=out fuzz/engines/atheris_target.py -max_total_time=60 CORPUS_DIR corpus/seeds

Each input is decoded to a trace (fuzz.engines.atheris_engine.decode: a JSON trace as itself, other
bytes through the domain-aware generator), run on both sides against the reference oracle.  A
divergence that is not on the known list is minimized (MEMSLOT_FUZZ_MINIMIZE_SECONDS), saved
atomically as a corpus entry under $MEMSLOT_FUZZ_OUT/<arch>/, and only then raised, so libFuzzer
sees a crash.  The variables are listed in fuzz/engines/atheris_engine.py.  Bad configuration: one
line on stderr, exit 2.
"""
import contextlib
import io
import os
import sys
from pathlib import Path

PARENT = os.getppid()      # before anything slow: a parent that dies from here on is noticed

if not getattr(sys, "frozen", False):          # run from a checkout: make the packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

import atheris  # noqa: E402


class DivergenceFound(Exception):
    """A divergence not on the known list: libFuzzer's crash."""


def _instrument_candidate(cls, trace_cmp: bool) -> None:
    """Candidates loaded from a file bypass the import hook: instrument their own functions,
    as the hook instruments ours."""
    import inspect
    from atheris.instrument_bytecode import patch_code
    for klass in cls.__mro__:
        if klass.__module__.startswith(("impls.", "oracles.", "fuzz.", "builtins")):
            continue
        for value in vars(klass).values():
            if inspect.isfunction(value):
                value.__code__ = patch_code(value.__code__, trace_dataflow=trace_cmp)


def _instrument_imports(include: list[str], exclude: list[str], trace_cmp: bool):
    """atheris.instrument_imports, with comparison tracing as configured (atheris' own always
    traces them; this is its import hook, HookManager, as it builds one, atheris==3.0.0)."""
    from atheris.import_hook import HookManager
    return HookManager({name.split(".")[0] for name in include}, set(exclude),
                       enable_loader_override=True, trace_dataflow=trace_cmp)


def _setup():
    # Instrument first: a module must be imported for the first time inside instrument_imports,
    # or it is not instrumented ("imports": every package of ours; "models": impls and oracles
    # only, which fuzz.engines.atheris_engine does not import).
    instrument = os.environ.get("MEMSLOT_FUZZ_INSTRUMENT", "") or "models"
    # as TargetConfig.from_env reads it below (which also refuses a bad value)
    trace_cmp = os.environ.get("MEMSLOT_FUZZ_TRACE_CMP", "").strip().lower() not in ("0", "false", "no", "off")
    if instrument == "imports":
        with contextlib.redirect_stderr(io.StringIO()):       # "INFO: Instrumenting <module>"
            with _instrument_imports(["language", "impls", "oracles", "fuzz"], [], trace_cmp):
                import fuzz.engines.atheris_engine  # noqa: F401
    elif instrument == "models":                              # the harness stays uninstrumented
        import fuzz.engines.atheris_engine  # noqa: F401
    from fuzz.engines.atheris_engine import TargetConfig, TargetConfigError
    try:
        cfg = TargetConfig.from_env(argv0=sys.argv[0])
    except TargetConfigError as e:
        print(f"memslot-fuzz-atheris: {e}", file=sys.stderr)
        sys.exit(2)

    def load():
        from fuzz import corpus, minimize, runner  # noqa: F401
        from fuzz.engines import atheris_engine, random_engine  # noqa: F401
        from language import trace, wellformed  # noqa: F401
        from fuzz.runner import Side
        from impls import registry
        from oracles import compare, reference, triage  # noqa: F401
        old = Side(cfg.old, registry.resolve(cfg.arch, cfg.old))
        new = Side(cfg.new, registry.resolve(cfg.arch, cfg.new))
        return old, new, triage.load_known()

    from fuzz.engines.atheris_engine import INSTRUMENT_PACKAGES, instrument_exclude
    try:
        if cfg.instrument in INSTRUMENT_PACKAGES:
            with contextlib.redirect_stderr(io.StringIO()):
                with _instrument_imports(INSTRUMENT_PACKAGES[cfg.instrument],
                                         instrument_exclude(cfg.instrument, cfg.arch), cfg.trace_cmp):
                    old, new, known = load()
        else:
            old, new, known = load()
        for side in (old, new):
            side.make()                       # a constructor that raises is a config error
            if cfg.instrument in INSTRUMENT_PACKAGES:
                _instrument_candidate(side.cls, cfg.trace_cmp)
        if cfg.instrument == "all":
            atheris.instrument_all()
    except Exception as e:                    # ModelLoadError, CandidateError, KnownListError
        print(f"memslot-fuzz-atheris: {cfg.arch} {cfg.old} vs {cfg.new}: {e}", file=sys.stderr)
        sys.exit(2)
    return cfg, old, new, known


def main() -> None:
    cfg, old, new, known = _setup()
    from fuzz import corpus, lifetime
    from fuzz.engines.atheris_engine import decode
    from fuzz.publish import publish_new
    # never outlive the launcher, nor (fork mode) the libFuzzer process that started this one
    lifetime.die_with_parent(PARENT)
    lifetime.watch_lifeline()
    from fuzz.engines.random_engine import Job, minimized
    from fuzz.engines.mutator import mutate
    from fuzz.runner import run_trace
    from language.trace import repro_prefix

    gen = cfg.gen_config(old.cls.address_space_num)
    job = Job(cfg.arch, old, new, 0.0, 0, cfg.out_dir, gen, minimize_seconds=cfg.minimize_seconds)
    handled: set[str] = set()

    def save(d, events) -> tuple[Path, bool]:
        """The one file for d's signature, saved now (True) or found saved already by an
        earlier run or another fork-mode worker (False); in the manifest either way, so the
        run reports everything it met."""
        if d.known and cfg.pending_dir is not None:
            # a known one: left unminimized for the launcher, which minimizes on its own clock,
            # so the fuzzing loop's time is fuzzing (one file per signature, first one wins)
            entry = corpus.CorpusEntry(cfg.arch, cfg.old, cfg.new, [d.signature], repro_prefix(events, d.event_index),
                                       note=corpus.signature_note("met by memslot-fuzz atheris", d.signature))
            publish_new(cfg.pending_dir / corpus.signature_name(d.signature), entry.dumps())
            return cfg.pending_dir, False
        path = corpus.path_for(cfg.out_dir, cfg.arch, d.signature)
        created = False
        if not path.is_file():
            if cfg.minimize_seconds > 0:
                d = minimized(repro_prefix(events, d.event_index), job, known, d, cfg.minimize_seconds)
            else:
                d.trace = repro_prefix(events, d.event_index)
            shown = [x.signature for x in run_trace(d.trace, cfg.arch, old, new, known).divergences]
            entry = corpus.CorpusEntry(cfg.arch, cfg.old, cfg.new, shown, d.trace,
                                       note=corpus.signature_note("found by memslot-fuzz atheris", d.signature))
            path, created = corpus.save_divergence_entry(entry, cfg.out_dir, d.signature)
        if cfg.manifest:
            fd = os.open(cfg.manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{path.resolve()}\t{d.signature}\n".encode())
            finally:
                os.close(fd)
        return path, created

    import time
    stats = {"events": 0, "traces": 0, "start": time.monotonic(), "tick": time.monotonic()}

    def test_one_input(data: bytes) -> None:
        events = decode(data, gen)
        res = run_trace(events, cfg.arch, old, new, known)
        stats["events"] += res.events
        stats["traces"] += 1
        now = time.monotonic()
        if now - stats["tick"] >= 5.0:
            stats["tick"] = now
            secs = now - stats["start"]
            print(f"memslot-fuzz-atheris: stats {stats['events']} events in {stats['traces']} traces, "
                  f"{secs:.1f}s ({stats['events'] / secs:.0f} events/s)", file=sys.stderr, flush=True)
        for d in res.divergences:
            if d.signature in handled:
                continue
            if d.known:
                if cfg.save_known:
                    handled.add(d.signature)
                    save(d, events)
                continue
            path, created = save(d, events)     # on disk before libFuzzer hears of it
            if cfg.skip_saved:
                handled.add(d.signature)
                if not created:
                    continue        # saved before: in the manifest, but not a crash again
            print(f"memslot-fuzz-atheris: NEW {d.signature} ({d.wrong_side} wrong, "
                  f"event {d.event_index}: {d.detail}) -> {path}", file=sys.stderr, flush=True)
            raise DivergenceFound(f"{d.signature}: saved to {path}")

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        return mutate(data, max_size, seed, gen, byte_mutate=atheris.Mutate)

    kwargs = {"custom_mutator": custom_mutator} if cfg.mutator else {}
    atheris.Setup(sys.argv, test_one_input, **kwargs)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

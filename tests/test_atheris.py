"""The atheris engine: bytes decode to well-formed traces, JSON traces decode to themselves,
the trace mutator keeps traces well formed, and a real libFuzzer run of the target script
finds a seeded off-by-one and leaves its trace on disk."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz import corpus
from fuzz.engines.atheris_engine import (TARGET, BytesSource, TargetConfig, TargetConfigError, decode,
                                 encode, json_trace, run_atheris_stats, target_env)
from fuzz.engines.ci_modes import CiError, ci_mode
from fuzz.engines.generate import GenConfig, RandomSource, generate
from fuzz.engines.mutator import MUTATIONS, mutate, mutate_events, slots_of
from fuzz.runner import Side, check_well_formed, run_trace
from language.trace import InvalidateRangeEnd, InvalidateRangeStart
from impls import registry
from oracles.triage import load_known

atheris = pytest.importorskip("atheris")

REPO = Path(__file__).resolve().parent.parent
SEEDS = sorted((REPO / "corpus" / "seeds").glob("*.json"))
OFF_BY_ONE = '''
from impls.x86_shadow import X86ShadowV5_13

class OffByOne(X86ShadowV5_13):
    """A patch whose gfn handler also zaps the gfn after the range."""
    def kvm_unmap_gfn_range(self, range):
        range.end += 1
        return super().kvm_unmap_gfn_range(range)
'''


# ----- decoder ----------------------------------------------------------------------------
@settings(max_examples=150)
@given(st.binary(max_size=400))
def test_any_bytes_decode_to_a_well_formed_trace(data):
    events = decode(data)
    check_well_formed(events)
    assert events and events[0].op == "host_map"       # the generator maps host memory first
    assert decode(data) == events                       # deterministic


def test_bytes_source_reads_choices_in_range_and_bottoms_out():
    src = BytesSource(bytes([0xff, 0x12, 0x34]))
    assert src.int(0, 9) == 0xff % 10                   # one byte for ten values
    assert src.int(0, 0xffff) == 0x1234                 # two bytes for 65536
    assert src.int(5, 5) == 5                           # no byte for one value
    assert src.int(3, 7) == 3                           # exhausted: the lowest value
    different = {tuple(decode(bytes([i]) * 64)) for i in range(0, 256, 17)}
    assert len(different) > 5                           # the bytes steer the generator


@pytest.mark.parametrize("seed", range(25))
def test_json_traces_decode_to_themselves(seed):
    events = generate(RandomSource(random.Random(seed)), GenConfig())
    assert decode(encode(events)) == events
    assert json_trace(encode(events)) == events


@pytest.mark.parametrize("path", SEEDS, ids=[p.stem for p in SEEDS])
def test_seeds_decode_as_their_traces_and_replay(path):
    entry = corpus.load(path)                           # a corpus entry too
    assert decode(path.read_bytes()) == entry.events
    res = run_trace(entry.events, entry.arch, Side(entry.old, registry.resolve(entry.arch, entry.old)),
                    Side(entry.new, registry.resolve(entry.arch, entry.new)), load_known())
    assert sorted(d.signature for d in res.divergences) == sorted(entry.expect)
    assert path.name in (path.parent / "README.md").read_text()


def test_ill_formed_json_falls_back_to_the_generator():
    bad = {"schema": "memslot-fuzz-trace/1", "events": [
        {"op": "invalidate_range_end", "start": "0x0", "end": "0x1000"}]}
    data = json.dumps(bad).encode()
    assert json_trace(data) is None
    events = decode(data)
    check_well_formed(events)
    assert events != [InvalidateRangeEnd(0, 0x1000)]


# ----- mutator ------------------------------------------------------------------------------
def _inputs():
    yield from (p.read_bytes() for p in SEEDS)
    for seed in range(6):
        yield encode(generate(RandomSource(random.Random(seed)), GenConfig()))
        yield random.Random(seed).randbytes(200)


def test_mutator_output_is_a_well_formed_json_trace():
    changed = 0
    for n, data in enumerate(_inputs()):
        for seed in range(20):
            out = mutate(data, 1 << 16, seed + 1000 * n)
            events = json_trace(out)
            assert events is not None, f"input {n} seed {seed}: not a well-formed JSON trace"
            changed += events != decode(data)
    assert changed > 200                                  # it does mutate


@pytest.mark.parametrize("kind", MUTATIONS)
def test_each_mutation_changes_a_seed_and_stays_well_formed(kind):
    events = corpus.load(REPO / "corpus" / "seeds" / "move-delete-in-use.json").events
    rng = random.Random(7)
    outs = [mutate_events(events, rng, kind) for _ in range(30)]
    for out in outs:
        check_well_formed(out)
    assert any(out != events for out in outs)
    if kind == "split":
        assert any(len(slots_of(out)) > len(slots_of(events)) for out in outs)

        def crossed(evs):       # one-page slots, hva-adjacent, the later hva one page lower in gpa
            ones = [x for x in slots_of(evs) if x.size == 4096]
            return {(a.hva, b.hva) for a in ones for b in ones
                    if a.as_id == b.as_id and b.hva == a.hva + 4096 and b.gpa == a.gpa - 4096}
        assert any(crossed(out) - crossed(events) for out in outs)
    if kind == "alias":
        def aliased(evs):
            slots = slots_of(evs)
            return len(slots) - len({x.hva for x in slots})
        assert any(aliased(out) > aliased(events) for out in outs)
    if kind == "beside":
        # the pages the seed faults on or touches, by hva (through every slot holding the gfn)
        pages = {s.hva + (e.gfn - s.gpa // 4096) * 4096 for e in events if hasattr(e, "gfn") and hasattr(e, "as_id")
                 for s in slots_of(events) if s.as_id == e.as_id and 0 <= e.gfn - s.gpa // 4096 < s.size // 4096}
        assert pages
        ends, starts = {h + d for h in pages for d in (0, 1)}, {h + 4096 - d for h in pages for d in (0, 1)}
        before = {h - 4096 + d for h in pages for d in (1, 2048, 4095)}

        def aimed(evs):
            return ({getattr(x, "end", None) for x in evs} & ends, {getattr(x, "start", None) for x in evs} & starts,
                    {getattr(x, "hva", None) for x in evs} & before)
        new = [tuple(a - b for a, b in zip(aimed(out), aimed(events))) for out in outs]
        assert any(n[0] for n in new) and any(n[1] for n in new) and any(n[2] for n in new)
    if kind == "snap":
        edges = {e for s in slots_of(events) for base in (s.hva, s.hva + s.size)
                 for e in (base, base + 1, base - 1, base + 4096, base - 4096)}
        assert any({getattr(x, "start", None) for x in out} & edges - {getattr(x, "start", None) for x in events}
                   or {getattr(x, "end", None) for x in out} & edges - {getattr(x, "end", None) for x in events}
                   or {getattr(x, "hva", None) for x in out} & edges - {getattr(x, "hva", None) for x in events}
                   for out in outs)


def test_mutator_respects_max_size_and_falls_back():
    data = (REPO / "corpus" / "seeds" / "many-small-slots.json").read_bytes()
    out = mutate(data, 100, 1)                 # no mutated JSON trace fits in 100 bytes
    assert len(out) <= 100
    raw = bytes(range(50))
    out = mutate(raw, 64, 3, byte_mutate=lambda d, n: b"X" * min(n, 10))
    assert json_trace(out) is not None or out == b"X" * 10


def test_duplicate_keeps_pairs_paired():
    events = [InvalidateRangeStart(0, 4096), InvalidateRangeEnd(0, 4096)]
    out = mutate_events(events, random.Random(0), "duplicate")
    check_well_formed(out)
    assert out.count(InvalidateRangeStart(0, 4096)) == out.count(InvalidateRangeEnd(0, 4096)) == 2


# ----- the target -----------------------------------------------------------------------------
def test_config_from_env_and_arch_from_program_name():
    cfg = TargetConfig.from_env({"MEMSLOT_FUZZ_OLD": "v5.13-rc1", "MEMSLOT_FUZZ_MINIMIZE_SECONDS": "0"},
                                argv0="/out/memslot_ppc_hv_hash.pkg")
    assert (cfg.arch, cfg.old, cfg.new, cfg.minimize_seconds) == ("ppc-hv-hash", "v5.13-rc1", "v5.13", 0.0)
    assert TargetConfig.from_env(cfg.to_env()) == cfg
    with pytest.raises(TargetConfigError, match="MEMSLOT_FUZZ_MAX_EVENTS='many': not an integer"):
        TargetConfig.from_env({"MEMSLOT_FUZZ_MAX_EVENTS": "many"})


def test_target_is_an_executable_script_and_rejects_bad_config_in_one_line(tmp_path):
    assert os.access(TARGET, os.X_OK) and TARGET.read_text().startswith("#!/usr/bin/env python3\n")
    cfg = TargetConfig(arch="sparc", out_dir=tmp_path / "out")
    p = subprocess.run([str(TARGET), "-runs=1"], env=target_env(cfg), cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    err = p.stderr.strip()
    assert "unknown arch 'sparc'" in err and "\n" not in err and "Traceback" not in err


def test_atheris_run_finds_off_by_one_and_saves_it(tmp_path, monkeypatch):
    cand = tmp_path / "cand.py"
    cand.write_text(OFF_BY_ONE)
    monkeypatch.chdir(tmp_path)
    # bounded by executions, not seconds, so a loaded machine finds the same (the time is a
    # safety limit only): libFuzzer stops at the first divergence it raises
    paths = run_atheris_stats("x86-shadow", "v5.13", f"{cand}:OffByOne", 300, tmp_path / "out",
                              tmp_path / "fuzz-corpus", 1, ["-seed=1"], runs=5000).paths
    assert paths, "no divergence found"
    for p in paths:
        assert p.is_file() and p.parent == tmp_path / "out" / "x86-shadow"
        entry = corpus.load(p)
        check_well_formed(entry.events)
        assert len(entry.events) <= 8                   # minimized in the target before saving
        got = run_trace(entry.events, "x86-shadow", Side("v5.13", registry.resolve("x86-shadow", "v5.13")),
                        Side(entry.new, registry.resolve("x86-shadow", entry.new)), load_known()).divergences
        new = [d for d in got if not d.known]
        assert new and all(d.wrong_side == "new" for d in new)
        assert sorted(d.signature for d in got) == sorted(entry.expect)
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("fuzz-*.log"))


def test_atheris_keeps_its_corpus_between_runs(tmp_path, monkeypatch):
    # our own versions against each other: nothing NEW ends the run, so libFuzzer adds the
    # inputs that reach new coverage to the writable corpus directory, which outlives the run
    monkeypatch.chdir(tmp_path)
    run = run_atheris_stats("mips", "v5.12", "v5.13", 300, tmp_path / "out", tmp_path / "fuzz-corpus", 1,
                            ["-seed=1"], runs=300)
    assert run.returncodes == [0] and run.execs >= 300
    assert any((tmp_path / "fuzz-corpus").iterdir())
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("fuzz-*.log"))


# ----- CI modes -------------------------------------------------------------------------------
def test_prune_keeps_one_of_identical_inputs(tmp_path):
    mine = tmp_path / "ci" / "corpus" / "x86-shadow"
    mine.mkdir(parents=True)
    seed = (REPO / "corpus" / "seeds" / "aliased-host-range.json").read_bytes()
    for i in range(4):
        (mine / f"copy{i}").write_bytes(seed)
    res = ci_mode("prune", 30, arches=["x86-shadow"], state_dir=tmp_path / "ci",
                  out_dir=tmp_path / "out", quiet=True)
    assert res.runs[0].corpus_before == 4
    left = list(mine.iterdir())
    assert len(left) == 1 and left[0].read_bytes() == seed
    assert not res.paths


@pytest.mark.parametrize("args, message", [
    (("nightly",), "--mode 'nightly'"),
    (("batch", 0), "--seconds 0: must be positive"),
    (("batch", 5, 0), "--jobs 0: must be at least 1"),
])
def test_ci_mode_rejects_bad_arguments(args, message):
    with pytest.raises(CiError, match=message.replace("(", r"\(")):
        ci_mode(*args)


def test_the_decode_cache_returns_what_decoding_returns():
    # the mutator records each mutant it encodes; the target's decode of those bytes must be
    # exactly what parsing them gives, for mutations and regenerated traces alike
    from fuzz.engines import atheris_engine
    cfg = GenConfig(address_space_num=2, x86_shadow_paging=True)
    rng = random.Random(3)
    data = b"\x01\x02\x03" * 40
    for i in range(200):
        out = mutate(data, 65536, rng.randrange(1 << 30), cfg)
        cached = decode(out, cfg)
        atheris_engine._DECODED.clear()
        assert decode(out, cfg) == cached
        data = out if rng.random() < 0.7 else data
    # another configuration object never reads this one's entries
    assert decode(out, GenConfig(address_space_num=2, x86_shadow_paging=True)) == cached


def test_decoded_says_whether_the_bytes_were_read_as_a_json_trace():
    # the mutator hands raw-bytes inputs (not JSON traces) to libFuzzer's byte mutation half
    # the time; the flag must be the same from the cache as from parsing
    from fuzz.engines import atheris_engine
    from fuzz.engines.atheris_engine import decoded, encode
    cfg = GenConfig(address_space_num=2, x86_shadow_paging=True)
    raw = bytes(range(1, 200))
    events, as_json = decoded(raw, cfg)
    assert not as_json and events == generate(BytesSource(raw), cfg)
    text = encode(events)
    for _ in range(2):                          # parsed, then from the cache
        got, as_json = decoded(text, cfg)
        assert as_json and got == events
    assert decoded(raw, cfg) == (events, False)
    broken = text[:-3]                          # starts like JSON, is not a trace
    atheris_engine._DECODED.clear()
    assert decoded(broken, cfg) == (generate(BytesSource(broken), cfg), False)
    # a raw-bytes input goes to the byte mutator about half the time, a JSON trace never
    calls = []

    def byte_mutate(data, max_size):
        calls.append(data)
        return data[::-1]
    for seed in range(200):
        mutate(text, 65536, seed, cfg, byte_mutate=byte_mutate)
    assert calls == []
    for seed in range(200):
        mutate(raw, 65536, seed, cfg, byte_mutate=byte_mutate)
    assert 20 < len(calls) < 80                 # half of the non-regenerating half


def test_known_divergences_are_left_to_the_launcher_and_minimized_there(tmp_path, monkeypatch):
    from fuzz.engines.atheris_engine import finish_pending
    from fuzz.engines.random_engine import Job
    monkeypatch.chdir(tmp_path)
    run = run_atheris_stats("mips", "v5.12", "v5.13", 300, tmp_path / "out", None, 1, ["-seed=1"],
                            runs=400, save_known=True, minimize_seconds=0.0)
    assert run.pending, "no known divergence met in 400 runs"
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.json"))   # none saved in the loop
    sigs = [s for _, s in run.pending]
    assert len(sigs) == len(set(sigs))          # one per signature
    arch = "mips"
    job = Job(arch, Side("v5.12", registry.resolve(arch, "v5.12")), Side("v5.13", registry.resolve(arch, "v5.13")),
              0.0, 0, tmp_path / "out", minimize_seconds=2.0)
    met = finish_pending(run, job, load_known(), budget=60.0)
    assert {d.signature for d, _ in met} == set(sigs)
    for d, path in met:
        entry = corpus.load(path)
        assert d.signature in entry.expect and len(entry.events) <= len(next(e for e, s in run.pending if s == d.signature))


def test_a_known_divergence_whose_shape_holds_a_colon_survives_the_launcher(tmp_path):
    """The target leaves a known divergence in the pending directory with a note ending in its
    signature; x86-tdp's BUG() shape has ": " inside, and cutting the note at its last ": "
    lost the signature, so finish_pending could not reproduce it and the run dropped it."""
    from fuzz.engines.atheris_engine import AtherisRun, _read_pending, finish_pending
    from fuzz.engines.random_engine import Job
    src = corpus.load(Path(__file__).resolve().parent.parent / "corpus" / "x86-tdp" / "d4880f05ba3f66fb.json")
    sig = next(s for s in src.expect if "BUG() in __handle_changed_spte: " in s)
    pending = tmp_path / "pending"
    pending.mkdir()
    entry = corpus.CorpusEntry(src.arch, src.old, src.new, [sig], src.events,
                               note=corpus.signature_note("met by memslot-fuzz atheris", sig))
    (pending / corpus.signature_name(sig)).write_text(entry.dumps())
    run = AtherisRun()
    run.pending = _read_pending(pending, run)
    assert [s for _, s in run.pending] == [sig]
    job = Job(src.arch, Side(src.old, registry.resolve(src.arch, src.old)),
              Side(src.new, registry.resolve(src.arch, src.new)), 0.0, 0, tmp_path / "out", minimize_seconds=0.0)
    met = finish_pending(run, job, load_known(), budget=0.0)
    assert [d.signature for d, _ in met] == [sig]
    assert corpus.noted_signature(corpus.load(met[0][1]).note) == sig
    with pytest.raises(ValueError, match="holds ': '"):      # a source that would hide the signature
        corpus.signature_note("seed: 7", sig)


def test_comparisons_are_traced_unless_configured_off(tmp_path, monkeypatch):
    """MEMSLOT_FUZZ_TRACE_CMP: branches are always instrumented, comparisons unless it is 0,
    for our modules (the import hook) and a candidate's own methods alike."""
    assert TargetConfig().trace_cmp is True and TargetConfig.from_env({}).trace_cmp is True
    off = TargetConfig.from_env({"MEMSLOT_FUZZ_TRACE_CMP": "0"})
    assert not off.trace_cmp and TargetConfig.from_env(off.to_env()) == off
    with pytest.raises(TargetConfigError, match="MEMSLOT_FUZZ_TRACE_CMP='maybe'"):
        TargetConfig.from_env({"MEMSLOT_FUZZ_TRACE_CMP": "maybe"})
    import importlib.util
    spec = importlib.util.spec_from_file_location("memslot_atheris_target", TARGET)
    target = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(target)

    from impls.x86_shadow import X86ShadowV5_13

    def names(trace_cmp: bool) -> tuple[str, ...]:
        class Candidate(X86ShadowV5_13):
            def kvm_unmap_gfn_range(self, rng):
                return rng.start < rng.end
        Candidate.__module__ = "my_patch"
        target._instrument_candidate(Candidate, trace_cmp)
        return Candidate.kvm_unmap_gfn_range.__code__.co_names
    assert "_trace_branch" in names(False) and "_trace_cmp" not in names(False)
    assert {"_trace_branch", "_trace_cmp"} <= set(names(True))
    pkg = tmp_path / "cmp_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("def less(a, b):\n    if a < b:\n        return 1\n    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for trace_cmp in (False, True):
        monkeypatch.delitem(sys.modules, "cmp_probe", raising=False)
        with target._instrument_imports(["cmp_probe"], [], trace_cmp):
            import cmp_probe
        assert "_trace_branch" in cmp_probe.less.__code__.co_names
        assert ("_trace_cmp" in cmp_probe.less.__code__.co_names) is trace_cmp


def test_the_x86_tdp_target_leaves_the_empty_legacy_rmap_pass_uninstrumented():
    # x86-tdp's models run x86-shadow's rmap pass over heads that are always empty; that target
    # leaves impls/x86_shadow.py out, every other target instruments it.  Run as the target
    # does (its import hook over a fresh interpreter, the models imported inside it)
    from fuzz.engines.atheris_engine import INSTRUMENT_EXCLUDE, INSTRUMENT_PACKAGES, instrument_exclude
    assert instrument_exclude("models", "x86-tdp") == INSTRUMENT_EXCLUDE["models"] + ["impls.x86_shadow"]
    assert "impls.x86_shadow" not in instrument_exclude("models", "x86-shadow")
    assert instrument_exclude("imports", "x86-tdp") == []
    probe = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('t', {str(TARGET)!r}); t = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(t)\n"
        "from fuzz.engines.atheris_engine import INSTRUMENT_PACKAGES, instrument_exclude\n"
        "with t._instrument_imports(INSTRUMENT_PACKAGES['models'], instrument_exclude('models', sys.argv[1]), True):\n"
        "    from impls import x86_tdp, x86_shadow\n"
        "print('_trace_branch' in x86_shadow.X86ShadowMmu.walk_rmaps.__code__.co_names,\n"
        "      '_trace_branch' in x86_tdp.X86TdpMmu.zap_walk.__code__.co_names)\n")
    got = {arch: subprocess.run([sys.executable, "-c", probe, arch], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.split()
           for arch in ("x86-tdp", "x86-shadow")}
    assert got == {"x86-tdp": ["False", "True"], "x86-shadow": ["True", "True"]}

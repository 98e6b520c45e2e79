"""`run --kernel-only`: the generator sends only what a running kernel's mm sends, i.e. every
trace passes check_well_formed(strict=True) (no language.wellformed.ALLOWANCES), for every
arch and both profiles, through every engine's way of driving the generator; the minimizer
keeps it so; a run reports only divergences that need no broken rule; and the restriction
still reaches every kind of event."""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from fuzz.cli import main
from fuzz.engines.atheris_engine import BytesSource, TargetConfig, decode, encode, json_trace
from fuzz.engines.generate import GenConfig, RandomSource, generate, profile_config, traces
from fuzz.minimize import minimize
from impls import registry
from language.trace import (ChangePte, ClearFlushYoung, ClearYoung, HostMap, InvalidateRangeEnd,
                            InvalidateRangeStart, Release, TestYoung, trace_from_json)
from language.wellformed import allowances_needed, check_well_formed, well_formed

P = 4096
AGING = (ClearFlushYoung, ClearYoung)
ARCHES = registry.modelled_arches()


def arch_config(arch: str, profile: str, tasks: bool = False, **kw) -> GenConfig:
    """The GenConfig `run --kernel-only` builds for arch (fuzz/cli.py cmd_run)."""
    old, _ = registry.default_pair(arch)
    cls = registry.resolve(arch, old)
    return profile_config(profile, address_space_num=cls.address_space_num, kernel_only=True,
                          x86_shadow_paging=arch.startswith("x86"), tasks=tasks,
                          max_slots=getattr(cls, "user_mem_slots", 32) or 32, **kw)


def strict(events, source="<trace>"):
    check_well_formed(events, source, strict=True)


# ----- every generated trace is kernel-legal -----------------------------------------------
@pytest.mark.parametrize("arch", ARCHES)
def test_default_profile_traces_pass_the_strict_check(arch):
    for tasks in (False, True):
        cfg = arch_config(arch, "default", tasks=tasks, max_events=60)
        for seed in range(150):
            events = generate(RandomSource(random.Random(seed)), cfg)
            strict(events, f"{arch} seed {seed} tasks={tasks}")
            assert allowances_needed(events) == set()


@pytest.mark.parametrize("arch", ARCHES)
def test_large_vm_traces_pass_the_strict_check(arch):
    for seed in range(2):
        for tasks, max_events in ((False, 10_000), (True, 1_500)):
            events = generate(RandomSource(random.Random(seed)), arch_config(arch, "large-vm", tasks, max_events=max_events))
            strict(events, f"{arch} large-vm seed {seed} tasks={tasks}")


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(traces(arch_config("x86-shadow", "default", tasks=False)))
def test_hypothesis_driven_traces_pass_the_strict_check(events):
    strict(events)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(traces(arch_config("arm64", "default", tasks=True)))
def test_hypothesis_driven_task_traces_pass_the_strict_check(events):
    strict(events)


def test_byte_driven_traces_pass_the_strict_check():
    # the atheris engine: raw bytes drive the generator, exhausted input gives the lowest choices
    rng = random.Random(3)
    cfg = GenConfig(kernel_only=True)
    strict(decode(b"", cfg))
    strict(generate(BytesSource(b"\xff" * 64), cfg))
    for _ in range(300):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600)))
        strict(decode(data, cfg))


def test_kernel_only_implies_aligned_only_which_stays_as_it_was():
    assert GenConfig(kernel_only=True).aligned_only
    assert profile_config("large-vm", kernel_only=True).aligned_only
    # --aligned-only alone still lets the other allowances through (a subset of the restriction)
    used = set()
    for seed in range(300):
        used |= allowances_needed(generate(RandomSource(random.Random(seed)), GenConfig(aligned_only=True)))
    assert "unaligned" not in used and used >= {"empty-range", "bare-change_pte", "wide-aging-range"}


# ----- the restriction keeps every kind of event --------------------------------------------
@pytest.mark.parametrize("profile", ["default", "large-vm"])
def test_every_event_kind_is_still_generated(profile):
    n, max_events = (300, 40) if profile == "default" else (3, 3000)
    counts: dict[bool, Counter] = {}
    sizes: Counter = Counter()
    for kernel_only in (False, True):
        c: Counter = Counter()
        for seed in range(n):
            cfg = profile_config(profile, max_events=max_events, kernel_only=kernel_only)
            events = generate(RandomSource(random.Random(seed)), cfg)
            c.update(e.op for e in events)
            if kernel_only:
                sizes.update(e.end - e.start for e in events if isinstance(e, AGING))
        counts[kernel_only] = c
    assert set(counts[True]) == set(counts[False])      # no kind dropped (release, sync_page included)
    for op, m in counts[False].items():
        # the restriction reshapes events, it does not starve a kind: within a factor of two
        assert counts[True][op] >= m / 2, (op, counts[True][op], m)
    assert sizes[P] and sizes[2 << 20]                   # a pte and a pmd per aging call
    if profile == "large-vm":
        assert sizes[1 << 30]                            # a whole 1 GiB hugetlb page
    assert set(sizes) <= {P, 2 << 20, 1 << 30}


def test_change_pte_is_wrapped_in_an_invalidation_of_its_page():
    wrapped = 0
    for seed in range(200):
        events = generate(RandomSource(random.Random(seed)), GenConfig(kernel_only=True))
        for i, ev in enumerate(events):
            if isinstance(ev, ChangePte):
                page = ev.hva - ev.hva % P
                assert events[i - 1] == InvalidateRangeStart(page, page + P, True)
                assert events[i + 1] == InvalidateRangeEnd(page, page + P, True)
                wrapped += 1
    assert wrapped > 50


# ----- the atheris engine: configuration and decoding ---------------------------------------
def test_atheris_target_config_carries_kernel_only():
    cfg = TargetConfig.from_env({"MEMSLOT_FUZZ_KERNEL_ONLY": "1"})
    assert cfg.kernel_only and cfg.gen_config(2).kernel_only and cfg.gen_config(2).aligned_only
    assert cfg.to_env()["MEMSLOT_FUZZ_KERNEL_ONLY"] == "1"
    assert TargetConfig.from_env(cfg.to_env()) == cfg
    assert not TargetConfig.from_env({}).kernel_only


def test_atheris_decodes_a_json_trace_as_itself_only_when_it_is_kernel_legal():
    legal = next(t for t in (generate(RandomSource(random.Random(seed)), GenConfig(kernel_only=True))
                             for seed in range(50)) if not any(isinstance(e, Release) for e in t))
    hva = next(e.hva for e in legal if isinstance(e, HostMap))
    bare = legal + [TestYoung(hva + 1)]                  # unaligned: well formed, not kernel-legal
    cfg = GenConfig(kernel_only=True)
    assert decode(encode(legal), cfg) == legal
    assert json_trace(encode(bare)) == bare and decode(encode(bare)) == bare
    got = decode(encode(bare), cfg)
    assert got != bare
    strict(got)


# ----- the minimizer keeps a kernel-legal trace kernel-legal --------------------------------
@pytest.mark.parametrize("keep", [ChangePte, ClearYoung, TestYoung])
def test_minimizing_a_kernel_legal_trace_breaks_no_rule(keep):
    # the predicate would be as happy with a bare change_pte, an unaligned or empty range or
    # aging an unmapped page: each of those is a smaller trace the minimizer must not take
    for seed in range(40):
        events = generate(RandomSource(random.Random(seed)), GenConfig(kernel_only=True))
        if any(isinstance(e, keep) for e in events):
            break
    small = minimize(events, lambda c: any(isinstance(e, keep) for e in c), max_attempts=3000)
    strict(small)
    assert any(isinstance(e, keep) for e in small) and len(small) < len(events)
    if keep is ChangePte:
        # the test has teeth: without its invalidation the change_pte would be smaller and
        # still well formed, but bare (what the minimizer of a kernel-legal trace refuses)
        bare = [e for e in small if not isinstance(e, (InvalidateRangeStart, InvalidateRangeEnd))]
        assert well_formed(bare) and allowances_needed(bare) == {"bare-change_pte"}


# ----- a whole run --------------------------------------------------------------------------
def _run(tmp_path, *args) -> tuple[int, dict]:
    report = tmp_path / "r.json"
    rc = main([str(a) for a in ("run", *args, "--kernel-only", "--seed", 1, "--max-time", 120,
                                "--report", report, "--out", tmp_path / "out", "--quiet")])
    return rc, json.loads(report.read_text())


@pytest.mark.parametrize("args", [
    ("--arch", "arm64", "--max-traces", 200),
    ("--arch", "mips", "--old", "v5.13", "--new", "v5.15", "--max-traces", 60),      # task mode
    ("--arch", "x86-tdp", "--profile", "large-vm", "--max-traces", 2),
], ids=["arm64", "mips-tasks", "x86-tdp-large-vm"])
def test_a_kernel_only_run_reports_only_kernel_legal_divergences(tmp_path, args):
    rc, doc = _run(tmp_path, *args)
    assert rc in (0, 1) and doc["divergences"]
    assert all(r["aligned_only"] for r in doc["runs"])
    for d in doc["divergences"]:
        # the JSON report's kernel column: needs no rule broken, shows with aligned ranges
        assert d["needs"] == [] and d["reachability"] == "aligned", d["signature"]
        strict(trace_from_json(d["trace"]), d["signature"])
        strict(trace_from_json(json.loads(Path(d["saved"]).read_text())), d["saved"])


def test_the_summary_counts_every_divergence_as_kernel_legal(tmp_path, capsys):
    rc, doc = _run(tmp_path, "--arch", "ppc-hv-hash", "--max-traces", 150)
    text = capsys.readouterr().out
    groups = re.findall(r"x(\d+), (\d+) by a kernel-legal trace", text)
    assert rc in (0, 1) and doc["divergences"] and groups
    assert all(n == legal for n, legal in groups)
    assert sum(int(n) for n, _ in groups) == len(doc["divergences"])


def test_the_atheris_mutator_makes_only_kernel_legal_mutants_for_a_kernel_only_target():
    # beside and snap often aim an unaligned edge, insert a bare change_pte: fine by the rules,
    # not for --kernel-only, whose target would read such a mutant's bytes as generator input
    from fuzz.engines import atheris_engine
    from fuzz.engines.mutator import mutate
    cfg = GenConfig(kernel_only=True)
    mutants = 0
    for seed in range(40):
        data = encode(generate(RandomSource(random.Random(seed)), cfg))
        for k in range(10):
            out = mutate(data, 1 << 16, 1000 * seed + k, cfg)
            if out == data:
                continue
            mutants += 1
            events = json_trace(out, strict=True)
            assert events is not None, f"seed {seed} call {k}: a mutant that breaks an allowance"
            atheris_engine._DECODED.clear()
            assert decode(out, cfg) == events               # read as itself, not as generator bytes
    assert mutants > 300

"""memslot-fuzz command line.

    memslot-fuzz list
    memslot-fuzz run --arch NAME|all --old V --new V --max-time S --seed N --report FILE.json
    memslot-fuzz replay PATH... [--update]
    memslot-fuzz ci --mode code-change|batch|prune --seconds N --jobs K
    memslot-fuzz show TRACE.json [--arch NAME --old V --new V] [--html OUT.html]
    memslot-fuzz explore TRACE.json [--arch NAME --old V --new V] --preemptions K [--skipped-yields K] [--max-schedules N]

Exit codes: 0 nothing outside the known list (or replay matched), 1 a new divergence (or a
replay mismatch), 2 usage or input error (one line on stderr, no traceback).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path

from impls import registry
from impls.registry import ModelLoadError
from oracles.compare import Divergence
from oracles.triage import KnownListError, is_candidate, load_known

from fuzz import argtypes, contain, corpus, history, lifetime, output, rootcause

from fuzz.reports import summary as report, timeline
from fuzz.publish import publish_new
from fuzz.engines.random_engine import Job, JobResult, console_progress, found, run_job, save_divergence
from fuzz.engines.explore import ExploreError, explore, program_tasks, strip_schedule
from fuzz.engines.hypothesis_engine import run_hypothesis
from fuzz.engines.generate import GenConfig, PROFILES, profile_config
from fuzz.engines.parallel import run_parallel
from fuzz.runner import CandidateError, Side, run_trace
from language.trace import TraceError, event_to_json
from language.wellformed import check_well_formed
from language.trace import load as load_trace


class UsageError(Exception):
    pass


MAX_JOBS = 64
DEFAULT_PREEMPTIONS = 2
DEFAULT_RUN_SCHEDULES = 200          # per generated program (run --schedules exhaustive)
DEFAULT_EXPLORE_SCHEDULES = 10_000   # explore


def _side(arch: str, spec: str, timeout: float = contain.DEFAULT_TRACE_TIMEOUT) -> Side:
    """Our model of `arch` at version `spec`, or a candidate (run only in its worker)."""
    return contain.side(arch, spec, timeout)


def cmd_list_commits(args) -> int:
    arches = registry.modelled_arches() if args.arch == "all" else [registry.check_arch(args.arch)]
    for arch in arches:
        print(f"{arch}:")
        for p in history.history(arch):
            commits = list(p.commits)
            print(f"  {p.name:24s} {commits[0][0]} {commits[0][1]}")
            for c, subject in commits[1:]:
                print(f"  {'':24s} {c} {subject}")
    return 0


def cmd_bisect(args) -> int:
    path = Path(args.trace)
    events, arch, _, _, expected = load_trace_arg(args)
    if arch is None:
        raise UsageError(f"bisect {path}: a plain trace needs --arch")
    arch = registry.check_arch(arch)
    check_well_formed(events, str(path))
    if args.finding:
        parts = args.finding.split("/", 2)
        if len(parts) != 3 or not all(parts):
            raise UsageError(f"--finding {args.finding!r}: expected CLASS/OP/SHAPE")
        findings = [tuple(parts)]
    else:
        findings = list(dict.fromkeys((sig.split("|")[0], sig.split("|")[4], sig.split("|", 6)[6])
                                      for sig in expected))
        if not findings:
            raise UsageError(f"bisect {path}: the trace records no divergence; name one with --finding")
    shown = 0
    for finding in findings:
        try:
            res = history.bisect(events, arch, finding, args.good, args.bad)
        except history.BisectError as e:
            if args.good or args.bad or len(findings) == 1:
                raise UsageError(f"bisect {path}: {e}") from None
            print(f"{finding[0]} at {finding[1]}: {finding[2]}: {e}")
            continue
        shown += 1
        print(f"{finding[0]} at {finding[1]}: {finding[2]}  ({arch}, {len(res.points)} points)")
        for p, present in zip(res.points, res.present):
            c, subject = p.commits[0]
            print(f"  {'shows' if present else '-':6s} {p.name:24s} {c} {subject}")
        for what, p in res.transitions():
            c, subject = p.commits[0]
            word = "first bad" if what == "appears" else "gone at"
            print(f"  {word}: {c} \"{subject}\" ({p.name})")
    if not shown:
        raise UsageError(f"bisect {path}: none of its divergences shows at any point of {arch}'s history")
    return 0


def cmd_list(args) -> int:
    if args.commits:
        return cmd_list_commits(args)
    print("architectures and versions (old -> new defaults: "
          f"{registry.DEFAULT_OLD} -> {registry.DEFAULT_NEW}):")
    all_models = registry.models()
    for arch in registry.ARCHES:
        vs = registry.versions_for(arch)
        if not vs:
            print(f"  {arch:13s} (no model yet)")
            continue
        parts = []
        for v in vs:
            cls, note = all_models[(arch, v)]
            parts.append(f"{v} ({cls.__name__}{'; ' + note if note else ''})")
        print(f"  {arch:13s} " + "\n                ".join(parts))
    return 0


def _user_mem_slots(*sides: Side) -> int:
    """The fewest memslots either side's arch takes (KVM_USER_MEM_SLOTS); a candidate that runs
    in its worker only is taken to allow as many as KVM's generic default."""
    return min(getattr(getattr(s, "cls", None), "user_mem_slots", 32) or 32 for s in sides)


def run_pairs(args) -> list[tuple[str, str, str]]:
    """(arch, old, new) for each job.  --matrix: every adjacent pair.  No --old/--new: each
    arch's default pair (v5.12 vs v5.13, or an arch's first and newest version when it has no
    v5.12, RISC-V).  --old/--new given with --arch all: every arch that has both, one note per
    arch skipped."""
    arches = [registry.check_arch(args.arch)] if args.arch != "all" else registry.modelled_arches()
    if args.matrix:
        return matrix_pairs(arches)
    if args.old is None and args.new is None:
        return [(arch, *registry.default_pair(arch)) for arch in arches]
    old, new = args.old or registry.DEFAULT_OLD, args.new or registry.DEFAULT_NEW
    if args.arch != "all":
        return [(arches[0], old, new)]
    for arch, v in registry.lacking(old, new):
        print(f"memslot-fuzz: {arch}: no model at {v}, skipped", file=sys.stderr)
    return [(arch, old, new) for arch in registry.implemented_arches(old, new)]


def cmd_run(args) -> int:
    known = load_known()
    jobs = []
    check_run_options(args)
    check_candidate_engine(args)
    load_failures: dict[str, Divergence] = {}
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    pairs = run_pairs(args)
    if not pairs:
        raise UsageError(f"no architecture has both {args.old} and {args.new}")
    arches = list(dict.fromkeys(a for a, _, _ in pairs))
    per_arch = args.max_time / len(pairs)
    for i, (arch, old_name, new_name) in enumerate(pairs):
        old, new = _side(arch, old_name, args.trace_timeout), _side(arch, new_name, args.trace_timeout)
        probe = contain.probe(arch, old, new, known)     # a candidate loads in its worker, never here
        if probe.failure:                                # it crashed or hung at import/construction
            load_failures[arch] = probe.failure
        gen = profile_config(args.profile, address_space_num=probe.address_space_num,
                             max_events=args.max_events, aligned_only=args.aligned_only,
                             kernel_only=args.kernel_only,
                             x86_shadow_paging=arch.startswith("x86"),
                             tasks=args.tasks or probe.needs_tasks or args.schedules == "exhaustive",
                             max_slots=_user_mem_slots(old, new))
        jobs.append(Job(arch, old, new, per_arch, seed + i, Path(args.out), gen,
                        minimize_seconds=args.minimize_seconds, stop_on_new=args.stop_on_new,
                        max_traces=args.max_traces,
                        minimize_attempts=args.minimize_attempts if args.max_traces else None,
                        schedules=args.schedules, preemptions=args.preemptions,
                        skipped_yields=args.skipped_yields or 0,
                        max_schedules=args.max_schedules,
                        minimize_budget=per_arch if args.minimize_budget is None else args.minimize_budget))
    versions = list(dict.fromkeys((o, n) for _, o, n in pairs))
    what = (f"every adjacent pair of versions ({len(pairs)} pairs)" if args.matrix
            else "; ".join(f"{o} vs {n}" + (f" ({', '.join(a for a, oo, nn in pairs if (oo, nn) == (o, n))})"
                                            if len(versions) > 1 else "") for o, n in versions))
    print(f"memslot-fuzz: {', '.join(arches)}: {what}, {args.max_time:g}s, "
          f"seed {seed}, saving to {args.out}/", file=sys.stderr)
    results = []
    started = time.monotonic()
    seen: set[str] = set()
    failed: output.OutputError | None = None    # disk full, read-only: exit 2 after the summary
    latest: list[JobResult] = []                # the running job as its progress last showed it

    def progress(res: JobResult, what: str) -> None:
        latest[:] = [res]
        if not args.quiet:
            console_progress(res, what)

    for job in jobs:
        job.engine = args.engine
        latest.clear()
        try:
            if job.arch in load_failures:
                res = load_failure_result(job, load_failures[job.arch], known, args.quiet)
            elif args.engine == "atheris":
                res = run_with_atheris(job, args, known)
            elif args.engine == "exhaustive":
                res = run_with_exhaustive(job, args, known)
            elif args.engine == "hypothesis":
                res = run_hypothesis(job, known, progress, seen)
            elif args.jobs > 1:
                res = run_parallel(job, args.jobs, known, args.quiet)
            else:
                res = run_job(job, known, progress, seen)
        except output.OutputError as e:
            failed = e
            results += latest       # what the job had saved before a write failed
            break
        except KeyboardInterrupt:   # a stop signal outside an engine's loop: keep what it showed
            results += latest
            for r in latest:
                r.interrupted = True
            print("memslot-fuzz: interrupted; what was found is saved", file=sys.stderr)
            break
        results.append(res)
        if args.schedules == "exhaustive":
            print(f"exhaustive schedules {job.arch}: {res.explored} programs of several tasks, "
                  f"{res.schedules} schedules, {res.explored_complete} explored completely up to "
                  f"{args.preemptions} preemption(s), {res.explored - res.explored_complete} cut at "
                  f"--max-schedules {args.max_schedules} or by --max-time", file=sys.stderr)
        res.interrupted |= lifetime.stop_signal() is not None
        if res.interrupted:
            print("memslot-fuzz: interrupted; what was found is saved", file=sys.stderr)
            break
    lifetime.hold()                 # from here on a stop signal cannot cost the summary or report
    interrupted = lifetime.stop_signal() is not None or any(r.interrupted for r in results)
    cut = [r.job.arch for r in results if r.job.max_traces and r.stopped_by == "max-time"]
    if cut:
        print(f"memslot-fuzz: --max-time ended {', '.join(cut)} before --max-traces {args.max_traces}: "
              "these findings depend on the machine's speed, not on the seed alone", file=sys.stderr)
    try:
        doc = report.build(results, seed, time.monotonic() - started,
                           pictures=failed is None and not load_failures, reach=not load_failures)
    except output.OutputError as e:     # a picture could not be written: report without pictures
        failed = e
        doc = report.build(results, seed, time.monotonic() - started, pictures=False, reach=not load_failures)
    report.validate_report(doc)
    if args.report:
        try:
            write_report(args, json.dumps(doc, indent=2) + "\n")
        except output.OutputError as e:
            failed = failed or e
    report.print_summary(doc, sys.stdout, verbose=args.verbose, files=failed is not None or interrupted)
    if failed is not None:
        print(f"memslot-fuzz: {failed}", file=sys.stderr)
        return 2
    if interrupted:
        return lifetime.exit_code()     # 130 SIGINT, 143 SIGTERM: summary and report are written
    return 1 if doc["totals"]["new_divergences"] else 0


ATHERIS_MISSING = ("needs the atheris package, which is not installed: pip install 'memslot-fuzz[atheris]' "
                   "(libFuzzer wheels exist for Linux); the random, hypothesis and exhaustive engines "
                   "need nothing more")


def matrix_pairs(arches: list[str]) -> list[tuple[str, str, str]]:
    """run --matrix: each adjacent pair of an arch's versions along mainline (series-v1, a
    posting that never merged, is left out: compare it with --old v5.13 --new series-v1)."""
    out = []
    for arch in arches:
        vs = [v for v in registry.versions_for(arch) if v not in history.OFF_MAINLINE]
        out += [(arch, a, b) for a, b in zip(vs, vs[1:])]
    return out


def check_atheris(what: str) -> None:
    """The coverage-guided engine is an optional extra: say so in one line when it is missing."""
    if importlib.util.find_spec("atheris") is None:
        raise UsageError(f"{what} {ATHERIS_MISSING}")


def check_candidate_engine(args) -> None:
    """Engines that would have to run a candidate in this process are refused with one."""
    if not (is_candidate(args.old or "") or is_candidate(args.new or "")):
        return
    why = {"atheris": "libFuzzer needs the model in its own process for coverage, where a candidate "
                      "could end or stall the run",
           "exhaustive": "it restores models from in-process snapshots, where a candidate could end "
                         "or stall the run"}.get(args.engine)
    if why:
        raise UsageError(f"--engine {args.engine} cannot run a candidate ({why}); use --engine random "
                         "or hypothesis, which run it contained")


def load_failure_result(job: Job, d: Divergence, known, quiet: bool) -> JobResult:
    """A candidate that crashed or hung while it was imported or constructed: that is the
    job's one finding (nothing can be fuzzed), saved with a one-event trace that replays it."""
    res = JobResult(job, divergences=[d], stopped_by="candidate failed to load")
    res.saved[d.signature] = save_divergence(d, job, known)
    if not quiet:
        tag = "known" if d.known else "NEW"
        print(f"  [{job.arch} {job.old.name}..{job.new.name}] {tag} {d.cls} ({d.wrong_side} wrong) "
              f"at {d.op}: {d.detail} -> {res.saved[d.signature]}", file=sys.stderr, flush=True)
    return res


def check_run_options(args) -> None:
    """Before the run: options that cannot be honoured together, and one report per run."""
    if args.schedules == "exhaustive":
        if args.engine != "random":
            raise UsageError(f"--schedules exhaustive: only with --engine random (not {args.engine})")
    else:
        for opt, value in (("--preemptions", args.preemptions), ("--max-schedules", args.max_schedules),
                           ("--skipped-yields", args.skipped_yields)):
            if value is not None:
                raise UsageError(f"{opt}: only with --schedules exhaustive")
    if args.preemptions is None:
        args.preemptions = DEFAULT_PREEMPTIONS
    if args.max_schedules is None:
        args.max_schedules = DEFAULT_RUN_SCHEDULES
    if args.matrix and (args.old is not None or args.new is not None):
        raise UsageError("--matrix fuzzes every adjacent pair of versions itself: drop --old/--new")
    if args.profile != "default" and args.engine != "random":
        raise UsageError(f"--profile {args.profile}: only with --engine random (not {args.engine}): "
                         "hypothesis's choice buffer is far smaller than a large-vm trace's choices")
    if args.max_events is None:
        args.max_events = profile_config(args.profile).max_events
    if args.engine == "exhaustive" and (args.kernel_only or args.aligned_only):
        raise UsageError(f"--{'kernel' if args.kernel_only else 'aligned'}-only: not with --engine exhaustive, "
                         "which enumerates every range of its small layouts (unaligned and empty ones "
                         "included) rather than generating them")
    if args.max_traces is not None and args.engine != "random":
        raise UsageError(f"--max-traces: only with --engine random (not {args.engine}): "
                         "the other engines' budgets are time or coverage based")
    path = Path(args.report) if args.report else None
    if path is not None and not args.force_report and path.is_file() and not path.is_symlink():
        raise UsageError(f"--report {path}: exists (another run's report); name a new file, "
                         "or pass --force-report to replace it")


def write_report(args, text: str) -> None:
    """This run's report: onto a name nobody took since the run started (an exclusive create:
    a run that started alongside this one and finished first keeps its report, and this one
    goes next to it, said on stderr), or with --force-report over whatever is there (and
    through a device or FIFO, by fuzz/output.py's rules)."""
    path = Path(args.report)
    if args.force_report or (path.exists() and not path.is_file()):
        output.write_text(path, text, "--report")
        return
    with output.errors(path, "--report"):
        if publish_new(path, text):
            return
        for n in range(2, 1000):
            other = path.with_name(f"{path.stem}.{n}{path.suffix}")
            if publish_new(other, text):
                print(f"memslot-fuzz: --report {path}: written by another run meanwhile; "
                      f"this run's report is {other}", file=sys.stderr)
                return
    raise output.OutputError(f"--report {path}: every alternative name is taken")


def run_with_atheris(job: Job, args, known) -> JobResult:
    """One architecture under libFuzzer: warm-started from corpus/seeds and corpus/<arch>."""
    from fuzz.engines import atheris_engine
    root = Path(__file__).resolve().parent.parent / "corpus"
    label = f"{job.arch} {job.old.name}..{job.new.name}"
    run = atheris_engine.run_atheris_stats(
        job.arch, job.old.name, job.new.name, job.max_time, job.out_dir, jobs=args.jobs,
        seed_dirs=[root / "seeds", root / job.arch], max_events=args.max_events,
        aligned_only=args.aligned_only, kernel_only=args.kernel_only,
        minimize_seconds=args.minimize_seconds, save_known=True,
        progress=None if args.quiet else atheris_engine.console_progress(label))
    res = JobResult(job, events=run.events, traces=run.execs, seconds=run.seconds,
                    interrupted=run.interrupted)
    # everything this run met, whether this run or an earlier one saved it (run.paths lists both)
    # and the known ones the target left unminimized, minimized here on the arch's minimization
    # budget (the fuzzing loop's time is fuzzing, as with the random engine)
    with lifetime.deferred():
        t0 = time.monotonic()
        budget = job.minimize_budget if job.minimize_budget is not None else job.max_time
        met = (atheris_engine.load_results(run.paths, known, run.signatures)
               + atheris_engine.finish_pending(run, job, known, budget))
        for d, path in met:
            d = rootcause.attribute(d, job.arch, job.old, job.new, known)
            if d.signature not in res.saved:
                res.saved[d.signature] = path
                res.divergences.append(d)
        res.minimize_seconds = time.monotonic() - t0
    res.fuzz_seconds = run.seconds
    res.seconds = run.seconds + res.minimize_seconds
    res.interrupted |= lifetime.stop_signal() is not None
    return res


def run_with_exhaustive(job: Job, args, known) -> JobResult:
    """Every small layout against every range, within --max-time (the report says how far)."""
    from fuzz.engines import exhaustive
    divs, stats = exhaustive.run_exhaustive(
        job.arch, job.old, job.new, known, max_slots=args.slots, max_pages=args.pages,
        max_as=args.address_spaces, deadline=time.monotonic() + job.max_time,
        progress=None if args.quiet else exhaustive.console_progress, max_span=args.max_span,
        reduce_ranges=not args.all_ranges, jobs=args.jobs, minimize_seconds=args.minimize_seconds)
    res = JobResult(job, events=stats.events, traces=stats.checks, seconds=stats.seconds,
                    interrupted=stats.interrupted)
    for d in divs:
        d = rootcause.attribute(d, job.arch, job.old, job.new, known)
        res.saved[d.signature] = save_divergence(d, job, known)
        res.divergences.append(d)
    done = "complete" if stats.complete else f"complete through {stats.complete_through_slots} slot(s)"
    print(f"exhaustive {job.arch}: {stats.layouts_done}/{stats.layouts_total} layouts, {stats.checks} checks, "
          f"{stats.refused} refused by KVM, {done}", file=sys.stderr)
    return res


def cmd_ci(args) -> int:
    from fuzz.engines import atheris_engine, ci_modes
    arches = None if args.arch == "all" else [registry.check_arch(args.arch)]
    if is_candidate(args.old) or is_candidate(args.new):
        raise UsageError("ci runs the atheris engine, which cannot run a candidate (libFuzzer needs the "
                         "model in its own process for coverage); use run --engine random or hypothesis")
    try:
        res = ci_modes.ci_mode(args.mode, args.seconds, args.jobs, arches, args.old, args.new,
                               Path(args.state), Path(args.out), quiet=args.quiet)
    except (ci_modes.CiError, atheris_engine.TargetConfigError) as e:
        raise UsageError(str(e)) from None
    ci_modes.print_summary(res)
    return 1 if res.failed else 0


def cmd_replay(args) -> int:
    """Each entry passes, or fails with one line and the replay goes on (exit 1 at the end):
    an entry that cannot be loaded, is not a kernel-possible trace (language.wellformed), names a
    model that does not load, shows something else than it records, or shows a divergence the
    known list does not explain (recorded or not) unless one of its versions is a candidate.
    Exit 2 (input error, one line on stderr after the summary) when an entry is not a corpus
    entry at all (unreadable, not JSON, a bad field) or names a model that does not load, and
    for the whole call: no entries under the paths, a missing path, a bad known list."""
    known = load_known()
    paths = corpus.entries_under([Path(p) for p in args.paths])
    if not paths:
        raise UsageError("replay: no corpus entries under " + " ".join(args.paths))
    bad = 0
    unusable: list[str] = []           # entries that are input errors
    for path in paths:
        try:
            entry = corpus.load(path)
            sides = (_side(entry.arch, entry.old, args.trace_timeout),
                     _side(entry.arch, entry.new, args.trace_timeout))
        except (TraceError, ModelLoadError, CandidateError) as e:
            bad += 1
            unusable.append(str(e) if str(e).startswith(str(path)) else f"{path}: {e}")
            print(f"FAIL {unusable[-1]}")
            continue
        try:
            check_well_formed(entry.events, str(path))
        except TraceError as e:         # loads, but the kernel could not have sent it
            bad += 1
            print(f"FAIL {e}")
            continue
        try:
            got = rootcause.explain_untriaged(run_trace(entry.events, entry.arch, *sides, known).divergences,
                                              entry.events, entry.arch, *sides, known)
        except (CandidateError, ModelLoadError) as e:     # a candidate's class is looked up in its worker
            bad += 1
            unusable.append(f"{path}: {e}")
            print(f"FAIL {unusable[-1]}")
            continue
        shown = sorted(d.signature for d in got)
        untriaged = sorted(d.signature for d in got if not d.known)
        if untriaged and not (is_candidate(entry.old) or is_candidate(entry.new)):
            bad += 1
            more = f" (and {len(untriaged) - 1} more)" if len(untriaged) > 1 else ""
            print(f"FAIL {path}: shows a divergence the known list does not explain: {untriaged[0]}{more}")
            continue
        if args.update and shown != sorted(entry.expect):
            untriaged = [d.signature for d in got if not d.known]
            if untriaged:
                bad += 1
                print(f"FAIL {path}: not updated, shows what the known list does not explain: {untriaged[0]}")
                continue
            new_path = corpus.save(corpus.CorpusEntry(entry.arch, entry.old, entry.new, shown, entry.events,
                                                      entry.note), path.parent, by_arch=False)
            if new_path != path:
                path.unlink()
            print(f"upd  {path} -> {new_path}")
            continue
        if shown == sorted(entry.expect):
            print(f"ok   {path} ({len(shown)} divergence{'s' if len(shown) != 1 else ''})")
        else:
            bad += 1
            missing = sorted(set(entry.expect) - set(shown))
            extra = sorted(set(shown) - set(entry.expect))
            print(f"FAIL {path}: " + "; ".join(
                [f"no longer shows {m}" for m in missing] + [f"now also shows {x}" for x in extra]))
    print(f"replay: {len(paths) - bad} passed, {bad} failed")
    if unusable:
        more = f" (and {len(unusable) - 1} more unusable entries)" if len(unusable) > 1 else ""
        print(f"memslot-fuzz: {unusable[0]}{more}", file=sys.stderr)
        return 2
    return 1 if bad else 0


def load_trace_arg(args) -> tuple[list, str | None, str, str, list[str]]:
    """The TRACE argument of show, explore and bisect: a corpus entry (its arch, versions and
    recorded signatures) or a plain trace (no arch, the default versions, nothing recorded),
    then --arch/--old/--new where the command has them and they were given."""
    path = Path(args.trace)
    try:
        entry = corpus.load(path)
        events, arch, old, new, expect = entry.events, entry.arch, entry.old, entry.new, list(entry.expect)
    except TraceError:
        events = load_trace(path)       # a plain trace: raises its own one-line error
        arch, old, new, expect = None, registry.DEFAULT_OLD, registry.DEFAULT_NEW, []
    return (events, getattr(args, "arch", None) or arch, getattr(args, "old", None) or old,
            getattr(args, "new", None) or new, expect)


def cmd_show(args) -> int:
    path = Path(args.trace)
    events, arch, old, new, _ = load_trace_arg(args)
    arch = arch or "x86-shadow"         # a plain trace names no arch
    check_well_formed(events, str(path))
    old, new = _side(arch, old, args.trace_timeout), _side(arch, new, args.trace_timeout)   # Sides: a candidate
    known = load_known()
    res = run_trace(events, arch, old, new, known, keep_observations=True)         # runs contained
    for d in res.divergences:           # which is the root, which an echo, what a fix uncovers
        d.trace = events
        rootcause.attribute(d, arch, old, new, known)
    if args.html:
        output.write_text(args.html, timeline.show_html(events, res, arch, old, new, args.hva_scale), "--html")
        print(f"memslot-fuzz: wrote {args.html}", file=sys.stderr)
    else:
        timeline.print_timeline(events, res, arch, old, new, sys.stdout)
    return 1 if any(not d.known for d in res.divergences) else 0


def cmd_explore(args) -> int:
    """Every schedule of a saved trace's program up to --preemptions (its own schedule directive
    is replaced): how many ran, whether the bound was covered, each distinct divergence with the
    directive that shows it; a new one is minimized and saved as `run` saves it."""
    path = Path(args.trace)
    events, arch, old, new, _ = load_trace_arg(args)
    arch = arch or "x86-shadow"         # a plain trace names no arch
    check_well_formed(events, str(path))
    tasks = program_tasks(events)
    if len(tasks) < 2 and not (tasks and args.skipped_yields):
        print(f"explore {path}: one task ({', '.join(tasks) or 'no events'}): nothing to explore "
              "(--skipped-yields K explores where its walks yield)")
        return 0
    sides = _side(arch, old), _side(arch, new)
    known = load_known()
    tick = {"at": time.monotonic(), "runs": 0}

    def progress(ex) -> None:          # a line every 2 s on stderr
        tick["runs"] += 1
        if time.monotonic() - tick["at"] >= 2.0:
            tick["at"] = time.monotonic()
            print(f"  explore: {tick['runs']} schedules, now at {len(ex.key)} departure(s) from the "
                  "default schedule", file=sys.stderr, flush=True)
    ex = explore(events, arch, *sides, known, args.preemptions, args.max_schedules, args.seed,
                 on_schedule=progress, skipped_yields=args.skipped_yields)
    skipped = f"{args.skipped_yields} skipped yield{'s' if args.skipped_yields != 1 else ''}"
    preempt = f"{args.preemptions} preemption{'s' if args.preemptions != 1 else ''}"
    bounds = (f"events in trace order, up to {skipped}" if len(tasks) == 1
              else f"up to {preempt}" + (f" and {skipped}" if args.skipped_yields else ""))
    print(f"explore {path}: {arch} {old}..{new}, {len(tasks)} task{'s' if len(tasks) != 1 else ''} "
          f"({', '.join(tasks)}), {bounds}: {len(ex.schedules)} schedules, {ex.status} ({ex.seconds:.1f} s)")
    job = Job(arch, sides[0], sides[1], 0.0, args.seed or 0, Path(args.out),
              minimize_attempts=args.minimize_attempts, engine="explore")
    res = JobResult(job)
    program = strip_schedule(events)
    findings = ex.findings()
    for d, sched in findings:
        tag = "known" if d.known else "NEW"
        print(f"  {tag} {d.cls} ({d.wrong_side} wrong) at event {d.event_index} {d.op}: "
              f"{d.signature.split('|', 6)[6]}")
        print(f"      schedule {json.dumps(event_to_json(sched))}")
        if not d.known:
            small = found([sched] + program, d, job, known, res)
            print(f"      saved {res.saved[small.signature]} ({len(small.trace)} events, minimized)")
    new_ones = sum(not d.known for d, _ in findings)
    print(f"explore: {len(findings)} distinct divergence{'s' if len(findings) != 1 else ''}, {new_ones} new")
    return 1 if new_ones else 0


class Parser(argparse.ArgumentParser):
    """Usage errors as one line naming what is wrong (argparse prints the whole usage); every
    --help ends with the exit codes and the output-file policy."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("epilog", argtypes.EXIT_CODES)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog.split()[0]} --help)\n")


def _trace_timeout_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace-timeout", type=argtypes.positive_float, default=contain.DEFAULT_TRACE_TIMEOUT,
                   metavar="S", help="a candidate model (file.py:Class) runs in a worker process; a trace "
                   f"(or its import) that takes longer than S seconds is a model-hang (default "
                   f"{contain.DEFAULT_TRACE_TIMEOUT:g})")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="memslot-fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"%(prog)s {argtypes.version()}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    ls = sub.add_parser("list", help="architectures and versions")
    ls.add_argument("--commits", action="store_true",
                    help="each arch's modelled history, oldest first: every point bisect walks and the "
                         "commits it brings, with their subjects")
    ls.add_argument("--arch", default="all", help="with --commits: one architecture (default all)")
    b = sub.add_parser("bisect", help="where along the modelled history a trace's divergence appears "
                                      "and disappears, by commit")
    b.add_argument("trace", help="a corpus entry or a plain trace")
    b.add_argument("--arch", default=None, help="default: the entry's (required for a plain trace)")
    b.add_argument("--good", default=None, help="a point that does not show it (older than --bad)")
    b.add_argument("--bad", default=None, help="a point that shows it")
    b.add_argument("--finding", default=None, metavar="CLASS/OP/SHAPE",
                   help="the divergence to follow (default: every one the entry records)")
    r = sub.add_parser("run", help="fuzz old against new")
    r.add_argument("--arch", default="all", help="architecture name, or all (default)")
    r.add_argument("--old", default=None, help="version or candidate file.py:Class / module:Class "
                   f"(default {registry.DEFAULT_OLD}, or an arch's first version when it has none)")
    r.add_argument("--new", default=None, help="version or candidate file.py:Class / module:Class "
                   f"(default {registry.DEFAULT_NEW}, or an arch's newest version when it has no "
                   f"{registry.DEFAULT_OLD})")
    r.add_argument("--max-time", type=argtypes.positive_float, default=60.0,
                   help="seconds in all (split over arches)")
    r.add_argument("--seed", type=argtypes.seed, default=None, help="random seed (default: random, printed)")
    r.add_argument("--report", default=None,
                   help="write the JSON report here (checked before the run; a symlink is refused, "
                        "a device or FIFO is written through)")
    r.add_argument("--out", default="memslot-fuzz-out",
                   help="directory for minimized divergences (created if needed; checked before the run)")
    r.add_argument("--max-events", type=argtypes.int_range(3, why="the shortest generated trace"), default=None,
                   help="longest generated trace (at least 3; default 40, 10000 with --profile large-vm)")
    r.add_argument("--profile", choices=list(PROFILES), default="default",
                   help="generator profile: default (small layouts, dense edge cases) or large-vm "
                        "(hundreds of memslots over a 1 TiB guest in 1 GiB host pages, hundreds of "
                        "faults, traces of up to 10,000 events)")
    r.add_argument("--matrix", action="store_true",
                   help="fuzz each adjacent pair of versions along each arch's history (v5.12..v5.13-rc1, "
                        "v5.13-rc1..v5.13, ... up to mainline), --max-time split over the pairs; the "
                        "summary shows what every step changed")
    r.add_argument("--verbose", action="store_true",
                   help="the summary lists every known divergence with its files (by default one line "
                        "per class; NEW ones are always shown in full)")
    r.add_argument("--tasks", action="store_true",
                   help="generate traces of several kernel tasks with schedules (on by default when a "
                        "version needs real locks: series-v1 and v5.15 onwards)")
    r.add_argument("--aligned-only", action="store_true", help="page-aligned notifier ranges only")
    r.add_argument("--kernel-only", action="store_true",
                   help="generate only what a running kernel's mm sends: no allowance (aligned, "
                        "non-empty ranges; change_pte inside an invalidation of its page; aging of "
                        "present pages, one pte or pmd per call), so every divergence found needs "
                        "no broken rule (random, hypothesis and atheris engines; implies --aligned-only)")
    r.add_argument("--minimize-seconds", type=argtypes.positive_float, default=10.0,
                   help="time limit per minimization")
    r.add_argument("--minimize-budget", type=argtypes.positive_float, default=None, metavar="S",
                   help="seconds of minimization per architecture, on top of its fuzzing share of "
                        "--max-time (default: that share); a signature met after it is spent is "
                        "saved unminimized. --max-traces bounds minimization by attempts instead")
    r.add_argument("--engine", choices=["random", "hypothesis", "atheris", "exhaustive"], default="random",
                   help="random (default: seeded generator + trace minimizer), hypothesis (its "
                        "shrinker minimizes), atheris (coverage-guided libFuzzer, for long runs), "
                        "exhaustive (every small layout against every range, with certainty)")
    r.add_argument("--slots", type=argtypes.int_range(1, 8), default=3,
                   help="exhaustive: most slots in a layout (1-8)")
    r.add_argument("--pages", type=argtypes.int_range(1, 64), default=4,
                   help="exhaustive: most pages in a slot (1-64)")
    r.add_argument("--address-spaces", type=argtypes.int_range(1, 2), default=2,
                   help="exhaustive: most address spaces (1-2)")
    r.add_argument("--max-span", type=argtypes.int_range(1), default=None,
                   help="exhaustive: hva window in pages")
    r.add_argument("--all-ranges", action="store_true",
                   help="exhaustive: do not merge ranges that touch every slot in the same bytes")
    r.add_argument("--jobs", type=argtypes.int_range(1, MAX_JOBS), default=1,
                   help=f"worker processes per architecture (1-{MAX_JOBS})")
    r.add_argument("--stop-on-new", action="store_true",
                   help="stop an architecture's run at its first divergence not on the known list")
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    r.add_argument("--max-traces", type=argtypes.int_range(1), default=None, metavar="N",
                   help="random engine: stop each architecture after N generated traces and bound "
                        "minimization by --minimize-attempts, so the findings depend on the seed "
                        "alone (--max-time stays a safety limit)")
    r.add_argument("--minimize-attempts", type=argtypes.int_range(1), default=2000, metavar="N",
                   help="with --max-traces: candidate traces tried per minimization (default 2000)")
    r.add_argument("--schedules", choices=["pct", "exhaustive"], default="pct",
                   help="task traces: pct (default: each generated program runs its one generated "
                        "schedule: preempt, PCT or the default) or exhaustive (every schedule of each "
                        "program up to --preemptions, at most --max-schedules of them; implies --tasks; "
                        "--engine random only)")
    r.add_argument("--preemptions", type=argtypes.int_range(0), default=None, metavar="K",
                   help=f"--schedules exhaustive: the preemption bound (default {DEFAULT_PREEMPTIONS})")
    r.add_argument("--skipped-yields", type=argtypes.int_range(0), default=None, metavar="K",
                   help="--schedules exhaustive: most yields a schedule skips (need_resched() answered "
                        "no where a walk that may block asks; default 0)")
    r.add_argument("--max-schedules", type=argtypes.int_range(1), default=None, metavar="N",
                   help="--schedules exhaustive: schedules per generated program at most (default "
                        f"{DEFAULT_RUN_SCHEDULES}; a program cut there is explored in a seeded order)")
    _trace_timeout_option(r)
    r.add_argument("--force-report", action="store_true",
                   help="replace an existing --report file (by default a run never overwrites "
                        "another run's report)")
    c = sub.add_parser("ci", help="CI slices without Docker: code-change, batch, prune (atheris)")
    c.add_argument("--mode", required=True, choices=["code-change", "batch", "prune"])
    c.add_argument("--seconds", type=argtypes.positive_float, default=None, help="in all (default per mode)")
    c.add_argument("--jobs", type=argtypes.int_range(1, MAX_JOBS), default=1)
    c.add_argument("--arch", default="all")
    c.add_argument("--old", default=registry.DEFAULT_OLD)
    c.add_argument("--new", default=registry.DEFAULT_NEW)
    c.add_argument("--state", default="memslot-fuzz-out/ci", help="libFuzzer corpora kept between CI runs")
    c.add_argument("--out", default="memslot-fuzz-out", help="directory for divergence traces")
    c.add_argument("--quiet", action="store_true")
    rp = sub.add_parser("replay", help="replay corpus entries; fail if one shows something else")
    rp.add_argument("paths", nargs="+")
    rp.add_argument("--update", action="store_true",
                    help="rewrite each entry's expectation to what it shows now (after an oracle or "
                         "known-list change); refused for an entry that shows something untriaged")
    _trace_timeout_option(rp)
    s = sub.add_parser("show", help="a trace as a timeline of both sides against the reference")
    s.add_argument("trace")
    _trace_timeout_option(s)
    s.add_argument("--arch", default=None, help="default: the entry's, or x86-shadow for a plain trace")
    s.add_argument("--old", default=None)
    s.add_argument("--new", default=None)
    s.add_argument("--hva-scale", choices=("compressed", "linear"), default="compressed",
                   help="hva axis of the pictures: compressed (log, not to scale; the default) or linear "
                        "(to scale: a 1-byte range is a hairline)")
    s.add_argument("--html", default=None, metavar="OUT.html",
                   help="write the timeline with a picture of each divergence as one HTML page "
                        "(a symlink is refused, a device or FIFO is written through)")
    e = sub.add_parser("explore", help="every schedule of a trace's program up to a preemption bound")
    e.add_argument("trace")
    e.add_argument("--arch", default=None, help="default: the entry's, or x86-shadow for a plain trace")
    e.add_argument("--old", default=None,
                   help="a version or a candidate file.py:Class (default: the entry's, else v5.12)")
    e.add_argument("--new", default=None,
                   help="a version or a candidate file.py:Class (default: the entry's, else v5.13)")
    e.add_argument("--preemptions", type=argtypes.int_range(0), default=DEFAULT_PREEMPTIONS, metavar="K",
                   help="most preemptions per schedule (a switch away from a task inside an event; "
                        f"switches at event ends or when a task blocks are free); default {DEFAULT_PREEMPTIONS}")
    e.add_argument("--skipped-yields", type=argtypes.int_range(0), default=0, metavar="K",
                   help="most yields a schedule skips: points where a walk that may block asks "
                        "need_resched() and, told no, keeps mmu_lock and flushes nothing there; "
                        "default 0 (every such walk yields wherever it may)")
    e.add_argument("--max-schedules", type=argtypes.int_range(1), default=DEFAULT_EXPLORE_SCHEDULES,
                   metavar="N", help=f"stop after N schedules (default {DEFAULT_EXPLORE_SCHEDULES}); the "
                   "output says \"complete\" or \"cut at N\"")
    e.add_argument("--seed", type=argtypes.seed, default=None,
                   help="shuffles the order of schedules of equal rank (departures, preemptions), which "
                        "matters only when --max-schedules cuts the exploration short (default: the "
                        "fixed order)")
    e.add_argument("--out", default="memslot-fuzz-out",
                   help="directory for new divergences (minimized, saved as run saves them)")
    e.add_argument("--minimize-attempts", type=argtypes.int_range(1), default=2000, metavar="N",
                   help="candidate traces tried per minimization (default 2000)")
    return p


def check_outputs(args) -> None:
    """Every output path, before any work: exit 2 with one line naming the option and path."""
    if args.cmd in ("run", "ci", "explore"):
        output.prepare_dir(args.out, "--out")
    if args.cmd == "ci":
        output.prepare_dir(args.state, "--state")
    if args.cmd == "run" and args.report:
        output.check_file(args.report, "--report")
    if args.cmd == "show" and args.html:
        output.check_file(args.html, "--html")


class _StdoutReaderGone:
    """sys.stdout for a command whose output may go to a reader that stops reading (`| head`):
    once a write or flush meets a closed pipe, the rest of the output goes to /dev/null and the
    command carries on, so it still writes what it saves and exits with its own code (a
    BrokenPipeError used to end a finished run with a traceback and exit 1, "new finding")."""

    def __init__(self, stream):
        self._stream = stream

    def _gone(self) -> None:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, self._stream.fileno())
        os.close(null)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()

    def __getattr__(self, name):
        return getattr(self._stream, name)


@lifetime.with_stop_handlers      # SIGINT/SIGTERM: stop, save, summarize, report, exit 130/143
def main(argv: list[str] | None = None) -> int:
    if not isinstance(sys.stdout, _StdoutReaderGone) and sys.stdout is not None:
        sys.stdout = _StdoutReaderGone(sys.stdout)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if (args.cmd == "run" and args.engine == "atheris") or args.cmd == "ci":
            if not (is_candidate(args.old or "") or is_candidate(args.new or "")):   # that refusal says more
                check_atheris("--engine atheris" if args.cmd == "run" else "ci")
        check_outputs(args)     # numbers are checked by their argparse types
        code = {"list": cmd_list, "run": cmd_run, "replay": cmd_replay, "show": cmd_show,
                "ci": cmd_ci, "explore": cmd_explore, "bisect": cmd_bisect}[args.cmd](args)
        # a command that stopped on SIGINT/SIGTERM and wound up by itself (ci) still says so
        return lifetime.exit_code() if code != 2 and lifetime.stop_signal() is not None else code
    except (ModelLoadError, CandidateError, TraceError, KnownListError, UsageError, report.ReportError,
            output.OutputError, ExploreError) as e:
        print(f"memslot-fuzz: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("memslot-fuzz: interrupted", file=sys.stderr)
        return lifetime.exit_code()


if __name__ == "__main__":
    sys.exit(main())

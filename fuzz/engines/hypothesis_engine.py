"""`memslot-fuzz run --engine hypothesis`: the same generator driven by hypothesis, whose own
shrinker minimizes each finding (then the trace-level minimizer, as for every engine).  Each round asks `hypothesis.find` for a trace that shows a
signature not seen yet; the smallest such trace comes back, its divergences are saved and
reported, and the next round looks for something else, until the time is up.
"""
from __future__ import annotations

import time

from hypothesis import HealthCheck, Phase, find, settings
from hypothesis.errors import NoSuchExample

from oracles.triage import KnownEntry

from fuzz import lifetime

from fuzz.engines.random_engine import Job, JobResult, Progress, found
from fuzz.engines.generate import traces
from fuzz.runner import run_trace

ROUND_EXAMPLES = 300       # a round lasts about a second; time is checked between rounds


class _OutOfTime(BaseException):
    """Ends a hypothesis.find round at max_time (not an Exception: hypothesis lets it through)."""


def run_hypothesis(job: Job, known: list[KnownEntry], progress: Progress | None = None,
                   seen: set[str] | None = None) -> JobResult:
    res = JobResult(job)
    seen = set() if seen is None else seen
    start = time.monotonic()
    stats = {"events": 0, "traces": 0}

    answers: dict[tuple, bool] = {}
    best: list[list] = []          # the shortest trace of this round that showed something new

    def shows_something_new(events) -> bool:
        # pure in `events` (seen only changes between rounds): hypothesis needs a stable predicate.
        # Past max_time the round ends with the best trace so far: a contained candidate can
        # cost --trace-timeout per trace, and the shrinker knows no time limit.
        key = tuple(events)
        if key in answers:
            return answers[key]
        if time.monotonic() - start >= job.max_time or lifetime.stop_signal() is not None:
            # a stop signal raises Interrupted once only (fuzz/lifetime.py): should hypothesis's
            # own code catch that one, the run still ends here, as at --max-time
            raise _OutOfTime
        r = run_trace(events, job.arch, job.old, job.new, known)
        stats["events"] += r.events
        stats["traces"] += 1
        answers[key] = any(d.signature not in seen for d in r.divergences)
        if answers[key] and (not best or len(events) <= len(best[0])):
            best[:] = [list(events)]
        return answers[key]

    try:
        while time.monotonic() - start < job.max_time and lifetime.stop_signal() is None:
            answers.clear()
            best.clear()
            try:
                small = find(traces(job.gen), shows_something_new,
                             settings=settings(max_examples=ROUND_EXAMPLES, deadline=None, database=None,
                                               phases=[Phase.generate, Phase.shrink],
                                               suppress_health_check=list(HealthCheck)))
            except NoSuchExample:
                res.events, res.traces = stats["events"], stats["traces"]
                res.seconds = time.monotonic() - start
                if progress:
                    progress(res, "tick")
                continue
            except _OutOfTime:
                if not best:
                    break
                small = best[0]
            for d in run_trace(small, job.arch, job.old, job.new, known).divergences:
                if d.signature in seen:
                    continue
                seen.add(d.signature)
                # hypothesis shrank the generator's choices; now shrink the trace itself
                found(small, d, job, known, res,
                      max(2.0, min(job.minimize_seconds, job.max_time - (time.monotonic() - start))))
                if progress:
                    progress(res, "found")
            res.events, res.traces = stats["events"], stats["traces"]
            res.seconds = time.monotonic() - start
            if progress:
                progress(res, "tick")
            if job.stop_on_new and any(not d.known for d in res.divergences):
                break
    except KeyboardInterrupt:          # SIGINT or SIGTERM (fuzz.lifetime.Interrupted)
        res.interrupted = True
    res.interrupted |= lifetime.stop_signal() is not None
    res.events, res.traces = stats["events"], stats["traces"]
    res.seconds = time.monotonic() - start
    return res

"""Reports: the JSON report of a run (schema in docs/REPORT.md), the console summary, and
the timeline of one trace."""
from __future__ import annotations

from typing import TextIO

from oracles.compare import CLASSES, Divergence

from .trace import event_to_json, trace_to_json

REPORT_SCHEMA = "memslot-fuzz-report/1"


def divergence_json(d: Divergence, saved: str | None) -> dict:
    return {"class": d.cls, "arch": d.arch, "old": d.old, "new": d.new,
            "wrong_side": d.wrong_side, "known": d.known, "explanation": d.explanation,
            "signature": d.signature, "op": d.op, "shape": d.shape,
            "event_index": d.event_index, "detail": d.detail,
            "trace": trace_to_json(d.trace), "saved": saved}


def build(results, seed: int, seconds: float) -> dict:
    divs, runs = [], []
    for res in results:
        j = res.job
        runs.append({"arch": j.arch, "old": j.old.name, "new": j.new.name, "engine": "random",
                     "seed": j.seed, "events": res.events, "traces": res.traces,
                     "seconds": round(res.seconds, 3), "interrupted": res.interrupted})
        for d in res.divergences:
            divs.append(divergence_json(d, str(res.saved.get(d.signature)) if d.signature in res.saved else None))
    divs.sort(key=lambda x: (x["known"], CLASSES.index(x["class"]), x["arch"], x["signature"]))
    events = sum(r["events"] for r in runs)
    return {"schema": REPORT_SCHEMA, "seed": seed, "runs": runs, "divergences": divs,
            "totals": {"events": events, "traces": sum(r["traces"] for r in runs),
                       "seconds": round(seconds, 3),
                       "events_per_second": round(events / seconds, 1) if seconds else 0.0,
                       "divergences": len(divs),
                       "new_divergences": sum(not d["known"] for d in divs),
                       "interrupted": any(r["interrupted"] for r in runs)}}


def print_summary(doc: dict, out: TextIO) -> None:
    t = doc["totals"]
    divs = doc["divergences"]
    if divs:
        rows = [("class", "arch", "versions", "wrong", "status", "op", "shape", "events", "saved")]
        for d in divs:
            rows.append((d["class"], d["arch"], f"{d['old']}..{d['new']}", d["wrong_side"],
                         "known" if d["known"] else "NEW", d["op"], d["shape"][:40],
                         str(len(d["trace"]["events"])), d["saved"] or "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1], file=out)
        print(file=out)
    for r in doc["runs"]:
        print(f"{r['arch']:13s} {r['old']}..{r['new']}: {r['events']} events in {r['traces']} traces, "
              f"{r['seconds']:.1f}s" + (" (interrupted)" if r["interrupted"] else ""), file=out)
    print(f"total: {t['events']} events, {t['events_per_second']:.0f} events/s, {t['seconds']:.1f}s; "
          f"{t['divergences']} distinct divergences, {t['new_divergences']} new (seed {doc['seed']})", file=out)


def print_timeline(events, res, arch: str, old: str, new: str, out: TextIO) -> None:
    """Each event with both sides' observations; divergent events marked."""
    by_event: dict[int, list[Divergence]] = {}
    for d in res.divergences:
        by_event.setdefault(d.event_index, []).append(d)
    first = min(by_event) if by_event else None
    print(f"{arch}: {old} (old) vs {new} (new), {len(events)} events", file=out)
    for i, ev in enumerate(events):
        mark = ">>" if i == first else ("! " if i in by_event else "  ")
        args = {k: v for k, v in event_to_json(ev).items() if k != "op"}
        print(f"{mark}{i:3d} {ev.op} " + " ".join(f"{k}={v}" for k, v in args.items()), file=out)
        if i < len(res.observations):
            o, n = res.observations[i]
            oj, nj = o.to_json(), n.to_json()
            oj.pop("op"), nj.pop("op")
            if oj == nj:
                if len(oj) > 1 or oj.get("lock_taken"):
                    print(f"        both: {_brief(oj)}", file=out)
            else:
                print(f"        old:  {_brief(oj)}", file=out)
                print(f"        new:  {_brief(nj)}", file=out)
        for d in by_event.get(i, []):
            status = "known" if d.known else "NEW"
            print(f"        ** {d.cls} [{d.wrong_side} wrong, {status}] {d.shape}: {d.detail}", file=out)
            if d.known and d.explanation:
                print(f"           {d.explanation.splitlines()[0][:160]}", file=out)
    if not res.divergences:
        print("no divergence", file=out)


def _brief(obs: dict) -> str:
    parts = []
    for c in obs.get("calls", []):
        parts.append(f"{c['hook']}(as{c['as_id']}/slot{c['slot']} gfn [{c['gfns'][0]},{c['gfns'][1]}))")
    for name in ("zapped", "aged", "installed"):
        if name in obs:
            parts.append(name + " " + ",".join(f"as{x['as_id']}:{x['gfn']}" + (f"+{x['pages']}" if x["pages"] > 1 else "")
                                              for x in obs[name]))
    if "changed" in obs:
        parts.append("changed " + ",".join(f"as{c['after']['as_id']}:{c['after']['gfn']}->pfn {c['after']['pfn']}"
                                           for c in obs["changed"]))
    for f in obs.get("flushes", []):
        parts.append(f"flush {f['scope']}" + ("" if f["locked"] else " (unlocked)") + f" by {f['origin']}")
    if "young" in obs:
        parts.append(f"young={obs['young']}")
    parts.append("locked" if obs.get("lock_taken") else "no lock")
    for k in ("warnings", "error", "note", "crashed"):
        if k in obs:
            parts.append(f"{k}: {obs[k]}")
    return "; ".join(parts)

"""What the learning grid's rows say about the guarantee, beyond the sweep's table: per row, from its per-request
records, the worst window of `--window` requests, whether the live lower bound ever rose above the agreement
realised so far, and (learning rows in process) when the learner fell back and climbed again, in requests after
each phase of the stream began (a `drift` stream's phases: detection and recovery), and what each version served
in its stretch of the stream: its share answered by the neighbour tier and by caches, speed-up and agreement.

    python experiments/learning_summary.py docs/results/sweep/learning.jsonl > docs/results/learning/grid-summary.txt

It reads the latest result of every row (the sweep's own rule) and prints one block per model and target.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from experiments.sweep.results import UNKNOWN, Records, RowResult, finished_with_records  # noqa: E402
from gati.errors import GatiError  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    p.add_argument("results", type=Path, help="a latency-sweep results file (JSON lines)")
    p.add_argument("--window", type=int, default=1000, help="requests per window (default: 1000)")
    p.add_argument("--work", type=Path, default=REPO / "bundles" / "sweep",
                   help="the sweep's work folder, which holds the rows' per-request records (default: bundles/sweep)")
    a = p.parse_args()
    try:
        finished = finished_with_records(a.results, a.work)
    except GatiError as e:
        print(f"learning_summary: {e}", file=sys.stderr)
        return 1
    rows = sorted(finished,
                  key=lambda r: (r.row.model, r.row.target, r.row.deployment, r.row.workload_name, r.row.online))
    print(f"# {a.results}: {len(rows)} rows; windows of {a.window} requests")
    print(f"# {'model':17s} {'target':6s} {'workload':8s} {'deployment':11s} {'learning':8s} {'agreement':>9s} "
          f"{'worst window':>12s} {'live bound':>10s} {'bound above realised':>20s} {'hit rate':>8s} "
          f"{'speed-up':>8s} {'p50 base/GATI':>14s} {'p99 base/GATI':>14s}  learner")
    for r in rows:
        print(line(r, a.window))
    return 0


def line(r: RowResult, window: int) -> str:
    rec, s = r.records, r.summary
    agree = (rec.answer == rec.base_label).astype(float)
    w = min(window, len(agree))
    worst = float(np.convolve(agree, np.ones(w) / w, mode="valid").min())
    realised = np.cumsum(agree) / np.arange(1, len(agree) + 1)
    above = int((rec.live_lower_bound > realised + 1e-12).sum())
    row = r.row
    return (f"  {row.model:17s} {row.target:<6g} {row.workload_name:8s} {row.deployment:11s} "
            f"{'on' if row.online else 'off':8s} {s.agreement:9.4f} {worst:12.4f} {s.live_lower_bound:10.4f} "
            f"{above:20d} {s.hit_rate:8.3f} {s.speedup_mean:7.2f}x {s.p50_ms_base:6.2f}/{s.p50_ms_gati:<7.2f} "
            f"{s.p99_ms_base:6.2f}/{s.p99_ms_gati:<7.2f}  {learner(r, rec)}")


def learner(r: RowResult, rec: Records) -> str:
    """Versions and fall-backs: in process from the records (level per request), in the cluster from the
    retrainer's and the aggregator's counters."""
    if not r.row.online:
        return ""
    if r.row.deployment != "in-process":
        c = r.learned
        reviews = {k.split(".", 1)[1]: int(v) for k, v in c.items() if k.startswith("retrainer_reviews.")}
        tier = c.get("cache_version.tier")
        return (f"reviews {reviews}, tier version {int(tier) if tier is not None else '-'}, live fallbacks asked "
                f"{int(c.get('aggregator.live_fallbacks', 0))}, aggregator's bound "
                f"{c.get('aggregator.live_agreement_lower_bound_ratio', float('nan')):.4f}")
    versions = sorted(set(rec.version.tolist()))
    by_tier = np.char.startswith(rec.exit_name.astype(str), "tier:")
    parts = [f"versions {versions}", f"tier answers {int(by_tier.sum())}"]
    if versions[-1] > 0:
        parts.append(per_version(rec, by_tier))
    if r.learned.get("deployed_by"):  # recorded since the sweep kept the learner's counters
        parts.append(f"made by {r.learned['deployed_by']} in {r.learned['reviews']} reviews")
    level = rec.fallback_level
    if (level != UNKNOWN).all() and len(level):
        drops = np.flatnonzero(np.diff(level) < 0) + 1
        climbs = np.flatnonzero(np.diff(level) > 0) + 1
        parts.append(f"fell back at {drops.tolist()[:6]}{'...' if len(drops) > 6 else ''}, "
                     f"climbed at {climbs.tolist()[:6]}{'...' if len(climbs) > 6 else ''}")
        starts = np.flatnonzero(np.diff(rec.phase) != 0) + 1
        if len(starts):
            parts.append(f"phases began at {starts.tolist()}")
    return "; ".join(parts)


def per_version(rec: Records, by_tier: np.ndarray) -> str:
    """Each version's own stretch of the stream (versions serve one after another): its first request, requests,
    share answered by the tier, requests answered by a cache, speed-up and agreement. Stretches are different
    traffic, not a comparison; the last is what a longer run would settle at (a row's totals mix in the requests
    served while the first review was still collecting its samples)."""
    by_cache = ~by_tier & (rec.exit_name.astype(str) != "final")
    parts = []
    for version in sorted(set(rec.version.tolist())):
        rows = rec.version == version
        speedup = rec.ms_base[rows].mean() / rec.ms_gati[rows].mean()
        agree = float((rec.answer[rows] == rec.base_label[rows]).mean())
        parts.append(f"{version} from {int(np.flatnonzero(rows)[0])}: {int(rows.sum())} requests, "
                     f"{by_tier[rows].mean():.1%} by the tier, {int(by_cache[rows].sum())} by a cache, "
                     f"{speedup:.2f}x, {agree:.4f}")
    return "per version: " + " | ".join(parts)


if __name__ == "__main__":
    sys.exit(main())

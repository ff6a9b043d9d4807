"""Modelled against measured latency, per exit, for the in-process rows of a latency-sweep results file.

    python experiments/latency_model.py docs/results/sweep/quick.jsonl > docs/results/latency-model.txt
    python experiments/latency_model.py --eval BUNDLE RECORDS   # one `gati eval --records RECORDS` replay

For every finished in-process row (or the one replay): each exit's share of requests, the time the build's latency
model expects of it and the mean measured; the unsplit model's profiled and measured time; the speed-up the model
predicts at the row's own exit shares against the one measured (`gati.measure.latency_model`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from experiments.sweep.results import finished_with_records  # noqa: E402
from gati.bundle import read_bundle  # noqa: E402
from gati.bundle.manifest import Manifest  # noqa: E402
from gati.errors import GatiError  # noqa: E402
from gati.measure.environment import read_records  # noqa: E402
from gati.measure.latency_model import check_model  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, nargs="?", help="a latency-sweep results file (JSON lines)")
    p.add_argument("--work", type=Path, default=REPO / "bundles" / "sweep",
                   help="the sweep's work folder, which holds the rows' per-request records (default: bundles/sweep)")
    p.add_argument("--eval", nargs=2, metavar=("BUNDLE", "RECORDS"),
                   help="instead: one replay, `gati eval --bundle BUNDLE --records RECORDS`")
    a = p.parse_args()
    if (a.results is None) == (a.eval is None):
        p.error("give a results file or --eval BUNDLE RECORDS")
    if a.eval:
        _, requests = read_records(a.eval[1])
        manifest = read_bundle(a.eval[0]).manifest
        print(f"{a.eval[0]}: `gati eval` replay {a.eval[1]} ({manifest.plan.mode} plan)")
        report(manifest, np.array([q["exit"] for q in requests], dtype=object),
               np.array([q["ms_gati"] for q in requests]), np.array([q["ms_base"] for q in requests]))
        return 0
    try:
        rows = [r for r in finished_with_records(a.results, a.work) if r.row.deployment == "in-process"]
    except GatiError as e:
        print(f"latency_model: {e}", file=sys.stderr)
        return 1
    for row in rows:
        rec, r = row.records, row.row
        manifest = read_bundle(row.bundle.path).manifest
        print(f"{r.model} {r.target} {r.workload} online={r.online} ({manifest.plan.mode} plan)")
        report(manifest, rec.exit_name, rec.ms_gati, rec.ms_base)
    return 0


def report(manifest: Manifest, exit_name: np.ndarray, ms_gati: np.ndarray, ms_base: np.ndarray) -> None:
    """Per exit and in total: the model's expectation beside the replay's measurement."""
    check = check_model(manifest, exit_name, ms_gati, ms_base)
    print(f"  {'exit':10s} {'share':>6s} {'modelled':>9s} {'measured':>9s} {'model error':>11s}")
    for e in check.exits:
        print(f"  {e.exit_name:10s} {e.share:6.3f} {e.modelled_ms:9.3f} {e.measured_ms:9.3f} {e.error:+11.1%}")
    print(f"  unsplit model: profiled {check.modelled_base_ms:.3f} ms, measured {check.measured_base_ms:.3f} ms; "
          f"GATI: modelled {check.modelled_ms:.3f} ms, measured {check.measured_ms:.3f} ms "
          f"(of which {manifest.profile.request_ms:.3f} ms per request beyond stages and lookups)")
    without = check.modelled_base_ms / (check.modelled_ms - manifest.profile.request_ms)
    print(f"  speed-up: modelled {check.modelled_speedup:.2f}x, measured {check.measured_speedup:.2f}x "
          f"({check.modelled_speedup / check.measured_speedup - 1:+.1%}; without the request's own cost "
          f"{without:.2f}x, {without / check.measured_speedup - 1:+.1%})\n")

if __name__ == "__main__":
    sys.exit(main())

"""Modelled against measured latency, per exit, for the in-process rows of a latency-sweep results file.

    python experiments/latency_model.py docs/results/sweep/quick.jsonl > docs/results/latency-model.txt

For every finished in-process row: each exit's share of requests, the time the build's latency model expects of
it and the mean measured; the unsplit model's profiled and measured time; the speed-up the model predicts at the
row's own exit shares against the one measured (`gati.measure.latency_model`).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from gati.bundle import read_bundle
from gati.measure.latency_model import check_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="a latency-sweep results file (JSON lines)")
    a = p.parse_args()
    latest = {}
    for line in open(a.results, encoding="utf-8"):
        row = json.loads(line)
        latest[row["key"]] = row
    for row in latest.values():
        if row["status"] != "done" or row["row"]["deployment"] != "in-process":
            continue
        rec = row["records"]
        exits = np.array(rec["exit_names"], dtype=object)[np.asarray(rec["exit"], dtype=int)]
        manifest = read_bundle(row["bundle"]["path"]).manifest
        check = check_model(manifest, exits, np.asarray(rec["ms_gati"]), np.asarray(rec["ms_base"]))
        r = row["row"]
        print(f"{r['model']} {r['target']} {r['workload']} online={r['online']} ({manifest.plan.mode} plan)")
        print(f"  {'exit':10s} {'share':>6s} {'modelled':>9s} {'measured':>9s} {'model error':>11s}")
        for e in check.exits:
            print(f"  {e.exit_name:10s} {e.share:6.3f} {e.modelled_ms:9.3f} {e.measured_ms:9.3f} {e.error:+11.1%}")
        print(f"  unsplit model: profiled {check.modelled_base_ms:.3f} ms, measured {check.measured_base_ms:.3f} ms; "
              f"GATI: modelled {check.modelled_ms:.3f} ms, measured {check.measured_ms:.3f} ms")
        print(f"  speed-up: modelled {check.modelled_speedup:.2f}x, measured {check.measured_speedup:.2f}x "
              f"({check.modelled_speedup / check.measured_speedup - 1:+.1%})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

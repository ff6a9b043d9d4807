"""Does a bundle's certificate hold? Re-calibrate on many random re-splits of the whole test split and count
how often agreement on the unseen half falls below the target (it must stay below alpha).

    python experiments/certificate_validation.py --bundle bundles/r18 --data-dir ../shared/data \
        --splits 200 --out docs/results/certificate/r18-97.json

The bundle's stored scores cover `test:calib`; its plan's caches are scored here on `test:eval` (one pass of
the base model), then `gati.measure.resplit.resplit_validation` does the rest (see its docstring).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gati.bundle import load_bundle
from gati.data import load_split
from gati.measure.environment import environment
from gati.measure.resplit import resplit_inputs, resplit_validation


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--splits", type=int, default=200, help="random re-splits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", type=float, help="re-calibrate at this target instead of the bundle's")
    p.add_argument("--out", help="write the report (JSON) here")
    a = p.parse_args()

    bundle = load_bundle(a.bundle)
    m = bundle.info.manifest
    started = time.time()
    inputs = resplit_inputs(bundle, load_split(m.dataset, a.data_dir, "test:eval"))
    target = a.target or inputs.target
    report = resplit_validation(inputs.entries, inputs.labels, inputs.costs, inputs.mode, target, inputs.alpha,
                                a.splits, a.seed)
    summary = {k: v for k, v in report.to_json().items() if k != "outcomes"}
    print(json.dumps(summary, indent=2))
    if a.out:
        record = {"command": " ".join(["python", *sys.argv]), "bundle": str(a.bundle), "bundle_sha256": bundle.info.sha256,
                  "plan": m.plan.describe(), "mode": inputs.mode, "seconds": round(time.time() - started, 1),
                  "environment": environment(), **report.to_json()}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

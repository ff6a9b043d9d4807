"""Cache quality per cut: how often each stored cache's answer equals the base model's on the bundle's
calibration images (`test:calib`), every variant and the best one per cut. Read from calibration.npz,
so it needs neither data nor a model pass, and is deterministic.

    python experiments/cache_quality.py --bundle bundles/r18 > docs/results/r18-cache-quality.json
"""
from __future__ import annotations

import argparse
import json

from gati.bundle import read_bundle
from gati.measure.environment import environment
from gati.pipeline.score import scores_from


def cache_quality(bundle: str) -> dict:
    info = read_bundle(bundle)
    arrays, ids = info.calibration()
    cuts: dict[str, dict[str, float]] = {}
    for (cut, variant), scores in sorted(scores_from(arrays).items()):
        cuts.setdefault(info.manifest.cuts[cut], {})[variant] = round(float(scores.correct.mean()), 4)
    best = {name: max(variants.items(), key=lambda kv: kv[1]) for name, variants in cuts.items()}
    return {"bundle": str(bundle), "images": len(ids), "agreement_per_cut": cuts,
            "best_per_cut": {name: {"variant": v, "agreement": a} for name, (v, a) in best.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    a = p.parse_args()
    print(json.dumps({**cache_quality(a.bundle), "environment": environment()}))


if __name__ == "__main__":
    main()

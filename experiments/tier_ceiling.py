"""The ceiling of any near-duplicate tier on a stream, set by the base model's own answers (gati.measure.ceiling).

For each workload, the bundle's base model answers every request (batched); then two idealised tiers that
recognise each request's source image without fail are replayed on those answers: the causal "last k copies
agree" rule for several k, and the clairvoyant per-source bound at several wrong-answer budgets. Each answered
share is turned into a speed-up bound twice: with the profile's costs (the tier's answer costs the stem stage and
the request's own cost, a miss costs the unsplit model: optimistic on both sides, so a true ceiling), and, with
`--records`, with the costs a sweep row measured (the mean latency of its tier exits and of its requests that ran
to the end, over the row's mean unsplit latency).

    python experiments/tier_ceiling.py --bundle bundles/sweep/resnet50-cifar10-cpu --data-dir ../shared/data \\
        --workload repeat:n=12000,seed=0,working_set=32,churn=0.01,jitter=1.0,flip=0.05 \\
        --records bundles/sweep/records/learning-long/ROW.json.gz
"""
from __future__ import annotations

import argparse
import gzip
import json
from dataclasses import dataclass

import numpy as np
import torch

from gati.bundle import load_bundle
from gati.data import load_split
from gati.measure.ceiling import Reach, clairvoyant_reach, last_k_reach, speedup_bound
from gati.measure.workloads import parse_workload

KS = (1, 2, 4, 8)
BUDGETS = (0.0025, 0.005, 0.01)


@dataclass(frozen=True)
class TierCosts:
    tier: float  # a tier answer's latency over the unsplit model's mean
    miss: float  # a request that runs to the end, likewise
    source: str


def profile_costs(bundle) -> TierCosts:
    p = bundle.manifest.profile
    return TierCosts((p.stage_ms[0] + p.request_ms) / p.base_ms, 1.0, "profile: stem + request / unsplit, miss = 1")


def measured_costs(path: str) -> TierCosts:
    records = json.load(gzip.open(path, "rt"))
    exits = np.asarray(records["exit"])
    names = records["exit_names"]
    gati_ms, base_ms = np.asarray(records["ms_gati"]), np.asarray(records["ms_base"]).mean()
    tier = [i for i, name in enumerate(names) if name.startswith("tier:")]
    if not tier:
        raise SystemExit(f"{path}: no tier exit in {names}")
    return TierCosts(gati_ms[exits == tier[0]].mean() / base_ms, gati_ms[exits == names.index("final")].mean() / base_ms,
                 f"measured: {path.rsplit('/', 1)[-1]}")


def base_answers(bundle, images: np.ndarray, batch: int = 256) -> np.ndarray:
    answers = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            answers.append(bundle.model(bundle.preprocess(images[start:start + batch])).argmax(1).numpy())
    return np.concatenate(answers)


def show(reach: Reach, costs: list[TierCosts]) -> str:
    bounds = "  ".join(f"{speedup_bound(reach.answered, c.tier, c.miss):>6.2f}x" for c in costs)
    return f"  {reach.rule:<28} answered {reach.answered:>6.1%}  wrong {reach.wrong:>6.2%}  bound {bounds}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--workload", nargs="+", required=True, help="one or more workload specs")
    p.add_argument("--records", help="a sweep row's records (.json.gz) to take measured tier and miss costs from")
    a = p.parse_args()
    bundle = load_bundle(a.bundle)
    data = load_split(bundle.manifest.dataset, a.data_dir, "test:eval")
    costs = [profile_costs(bundle)] + ([measured_costs(a.records)] if a.records else [])
    for c in costs:
        print(f"costs ({c.source}): tier {c.tier:.4f}, miss {c.miss:.4f}")
    for spec in a.workload:
        stream = parse_workload(spec).generate(data)
        base = base_answers(bundle, stream.images)
        print(f"\n{stream.workload}: {len(stream)} requests from {len(set(stream.sources.tolist()))} images; "
              f"{stream.locality(base).describe()}", flush=True)
        for k in KS:
            print(show(last_k_reach(stream.sources, base, k), costs))
        for budget in BUDGETS:
            print(show(clairvoyant_reach(stream.sources, base, budget), costs), flush=True)


if __name__ == "__main__":
    main()

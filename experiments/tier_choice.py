"""Where the neighbour tier should sit and how many neighbours it should read: measured on a `repeat` stream.

For each candidate cut, reducer and k, a `gati.learning.neighbours.NeighbourTier` serves the stream as the online
engine would if every request ran to the end (judge, then store with the base model's answer): the best case for
the tier, the same for every candidate. Printed per candidate: the share of requests the tier answers at the best
threshold that keeps its wrong answers within 0.2%, 0.5% and 1% of all requests (the tier alone as the only
early exit, at agreement targets 0.998, 0.995 and 0.99), and the cost of the cut (its share of the model's stage
costs in the bundle's profile).

    python experiments/tier_choice.py --bundle bundles/r18 --data-dir ../shared/data \\
        --workload repeat:n=3000,seed=1 --cuts 0,1,2,3
"""
from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from gati.bundle import load_bundle
from gati.data import load_split
from gati.learning.neighbours import NeighbourTier
from gati.learning.tier_config import TierConfig
from gati.learning.tier_vector import tier_vector
from gati.measure.workloads import parse_workload

BUDGETS = (0.002, 0.005, 0.01)


def answered_within(conf: np.ndarray, correct: np.ndarray, budget: float) -> float:
    """The largest share of requests answered (confidence at or above a threshold) with at most budget * n wrong."""
    order = np.argsort(-conf, kind="stable")
    wrong = np.cumsum(~correct[order])
    ok = np.flatnonzero(wrong <= budget * len(conf))
    return (ok.max() + 1) / len(conf) if len(ok) else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--workload", default="repeat:n=3000,seed=1")
    p.add_argument("--cuts", default="0,1,2,3")
    p.add_argument("--reducers", default="gap,pool2,pool4")
    p.add_argument("--ks", default="1,4,8,16")
    p.add_argument("--capacity", type=int, default=2048)
    a = p.parse_args()
    torch.set_num_threads(1)
    bundle = load_bundle(a.bundle)
    m = bundle.manifest
    stream = parse_workload(a.workload).generate(load_split(m.dataset, a.data_dir, "test:eval"))
    cuts = [int(c) for c in a.cuts.split(",")]
    acts: dict[int, list[torch.Tensor]] = {c: [] for c in cuts}
    logits = []
    with torch.inference_mode():
        for start in range(0, len(stream), 64):
            x = bundle.preprocess(stream.images[start:start + 64])
            for i, stage in enumerate(bundle.staged.stages):
                x = stage(x)
                if i in acts:
                    acts[i].append(x)
            logits.append(x)
    base = torch.cat(logits).argmax(1).numpy()
    stage_ms = m.profile.stage_ms
    print(f"{a.workload}: {len(stream)} requests, {stream.repeats().mean():.1%} repeat an earlier image")
    print(f"{'cut':>4} {'name':<10} {'cost':>6} {'reducer':<7} {'dim':>5} {'k':>3}  "
          + "  ".join(f"{b:.1%} wrong" for b in BUDGETS))
    for cut in cuts:
        batch = torch.cat(acts[cut])
        cost = sum(stage_ms[:cut + 1]) / sum(stage_ms)
        for reducer in a.reducers.split(","):
            for k in (int(v) for v in a.ks.split(",")):
                tier = NeighbourTier(TierConfig(cut, reducer, a.capacity, k), tuple(m.cut_shapes[cut]), m.num_classes)
                conf, label = np.zeros(len(base)), np.full(len(base), -1)
                for t in range(len(base)):
                    v = tier_vector(tier, batch[t:t + 1])
                    verdict = tier.judge(v, math.inf)
                    conf[t], label[t] = verdict.confidence, verdict.label
                    tier.add(v, int(base[t]))
                shares = [answered_within(conf, label == base, b) for b in BUDGETS]
                print(f"{cut:>4} {m.cuts[cut]:<10} {cost:>6.1%} {reducer:<7} {tier.dim:>5} {k:>3}  "
                      + "  ".join(f"{s:>10.1%}" for s in shares), flush=True)


if __name__ == "__main__":
    main()

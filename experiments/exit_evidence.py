"""Would a cache that also reads the earlier exits' answers answer more? Measured on a bundle's stored scores.

A request that reaches the plan's exit j has already been answered, unsurely, by exits 0..j-1. This replaces each
exit's confidence by a logistic model of "this exit agrees with the base model" on its own confidence (as a
logit) and, per earlier exit, whether that exit gave the same label and how sure it was; the model is fitted on the
select half of the calibration images. Then the bundle's own procedure (`gati.pipeline.certify.calibrate`: a
greedy threshold path on select, fixed-sequence testing on certify at the first look's alpha) runs with the
original scores and with the combined ones, and both are replayed on the certify half with the profile's costs.
A third line is the oracle: every request leaves at the first exit whose label agrees with the base model (no
confidence rule can do better with these caches at these cuts).

    python experiments/exit_evidence.py bundles/sweep/resnet18-cifar10-cpu bundles/sweep/resnet18-cifar10-cpu-t0.99
"""
from __future__ import annotations

import argparse

import numpy as np

from gati.bundle import read_bundle
from gati.bundle.layout import CacheKey
from gati.pipeline.certify import Costs, Scores, calibrate, exit_costs, look_alpha, simulate, split_select_certify


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 50) -> np.ndarray:
    """Weights of an L2-regularised logistic regression, by Newton's method."""
    w = np.zeros(x.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-x @ w))
        hessian = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        w -= np.linalg.solve(hessian, x.T @ (p - y) + l2 * w)
    return w


def combined(preds: list[np.ndarray], entries: list[Scores], select: np.ndarray) -> list[Scores]:
    out = []
    for j, e in enumerate(entries):
        cols = [logit(e.conf)]
        for i in range(j):
            same = (preds[i] == preds[j]).astype(float)
            cols += [same, same * logit(entries[i].conf)]
        x = np.stack(cols + [np.ones(len(e.conf))], 1)
        w = fit_logistic(x[select], e.correct[select].astype(float))
        out.append(Scores(e.cut, e.variant, 1 / (1 + np.exp(-x @ w)), e.correct))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", nargs="+")
    a = p.parse_args()
    for path in a.bundles:
        info = read_bundle(path)
        m = info.manifest
        z, ids = info.calibration()
        select, cert = split_select_certify(z["labels"], ids)
        keys: list[CacheKey] = [(e.cut, e.variant) for e in m.plan.entries]
        costs = Costs.of(m.profile, keys)
        preds = [z[f"pred_{c}_{v}"] for c, v in keys]
        entries = [Scores(c, v, z[f"conf_{c}_{v}"].astype(np.float64), pred == z["base"])
                   for (c, v), pred in zip(keys, preds)]
        exit_cost = exit_costs(entries, costs, m.plan.mode)
        print(f"{path}: target {m.target}, plan {' '.join(f'{m.cuts[c]}:{v}' for c, v in keys)} ({m.plan.mode}), "
              f"certify half {len(cert)} images")
        for name, scores in (("own confidence", entries), ("with earlier exits", combined(preds, entries, select))):
            thresholds, result = calibrate(scores, costs, m.plan.mode, m.target, select, cert, look_alpha(1))
            sim = simulate([s.subset(cert) for s in scores], np.array(thresholds), exit_cost)
            print(f"  {name:<19} speed-up {m.profile.base_ms / sim['latency_ms']:.3f}x  agreement "
                  f"{sim['agreement']:.4f}  hits per exit {sim['hits']}  vectors tested {result.tested}")
        right = np.stack([e.correct[cert] for e in entries] + [np.ones(len(cert), dtype=bool)])
        first = right.argmax(0)
        print(f"  {'oracle':<19} speed-up {m.profile.base_ms / exit_cost[first].mean():.3f}x  agreement 1.0000  "
              f"hits per exit {np.bincount(first, minlength=len(entries) + 1)[:-1].tolist()}")


if __name__ == "__main__":
    main()
